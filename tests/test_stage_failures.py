"""Every stage's products of a frame survive when a later stage of that frame fails.

The failing stages are real failures, not patched functions: a third-party
photometry plugin (installed for the test as a distribution on ``sys.path``, the
way ``pip install`` would) whose engine process dies of SIGSEGV. (A failed
calibration keeping the photometry is in test_results.py, an unsolvable frame
keeping its header in test_bad_input_corpus.py.)
"""
from __future__ import annotations

import json
import textwrap
from importlib import metadata

import pytest

from bhcore.batch import run_batch
from bhcore.registry import Registry
from bhcore.runner import DEMO_ONAME, demo_overrides
from bhcore.testing import make_night

pytestmark = pytest.mark.slow

CRASHING_PLUGIN = '''
"""A photometry engine that crashes the way a C program does."""
import sys
from bhcore.external import run
from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo

@hookimpl
def bh_plugin_info():
    return PluginInfo(name="phot_crashing", stage="photometry", version="0.1",
                      description="engine that dies of SIGSEGV")

@hookimpl
def bh_measure_photometry(frame, settings):
    if settings.get("backend") != "phot_crashing":
        return None
    run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
'''


@pytest.fixture
def crashing_plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "bh_phot_crashing.dist-info").mkdir(parents=True)
    (site / "bh_phot_crashing.py").write_text(textwrap.dedent(CRASHING_PLUGIN))
    info = site / "bh_phot_crashing.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bh-phot-crashing\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[bhcore]\nphot_crashing = bh_phot_crashing\n")
    monkeypatch.syspath_prepend(str(site))
    assert "phot_crashing" in {ep.name for ep in metadata.entry_points(group="bhcore")}
    return "phot_crashing"


@pytest.fixture
def frames(tmp_path):
    night = make_night(out_dir=tmp_path / "raw", n_frames=2, shape=(256, 256), n_stars=60,
                       seed=9)
    return night


def demo_obs():
    registry = Registry()
    registry.ensure_builtin()
    return registry.get(DEMO_ONAME)


def manifest(out, path):
    stem = path.name.split(".")[0]
    data = json.loads((out / stem / f"{stem}.manifest.json").read_text())
    missing = [k for k, v in data["products"].items() if not (out / stem / v).exists()]
    assert not missing, f"manifest lists products that are not there: {missing}"
    return data


def test_a_crashing_photometry_engine_keeps_header_and_astrometry(frames, crashing_plugin,
                                                                  tmp_path):
    out = tmp_path / "out"
    summary = run_batch(frames.paths, demo_obs(), out, photometry_backend=crashing_plugin,
                        overrides=demo_overrides(frames.out_dir / "catalog.ecsv"), workers=0)
    assert summary.done == 0 and len(summary.failed) == len(frames.paths)
    reasons = dict((str(p), why) for p, why in summary.failed)
    for path in frames.paths:
        reason = reasons[str(path)]
        print(reason)
        assert str(path) in reason and "SIGSEGV" in reason
        data = manifest(out, path)
        assert data["status"] == "failed"
        assert {"header", "astrometry"} <= set(data["products"])
        assert "photometry" not in data["products"]
