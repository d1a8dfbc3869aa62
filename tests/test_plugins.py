"""Plugin discovery, selection and the third-party plugin path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bhcore.errors import BackendNotFound, NotImplementedYet, PluginError
from bhcore.plugins import (all_plugin_infos, call_backend, installed_entry_points,
                            load_plugins, plugin_info, single_backend)

BUILTIN = {"fits_manager", "astrometry_scamp", "astrometry_nova", "phot_sex",
           "phot_daophot", "phot_python"}


def test_every_builtin_backend_is_discoverable_by_entry_point():
    assert BUILTIN <= set(installed_entry_points())
    infos = {name: info for name, info, _err in all_plugin_infos()}
    for name in BUILTIN:
        assert infos[name] is not None, f"{name} failed to load"
        assert infos[name].name == name


def test_load_only_the_selected_backend():
    pm = load_plugins(["phot_sex"])
    assert pm.get_plugin("phot_sex") is not None
    assert pm.get_plugin("phot_python") is None
    assert single_backend(pm, "photometry") == "phot_sex"


def test_unknown_backend_lists_what_is_installed():
    with pytest.raises(BackendNotFound) as err:
        load_plugins(["phot_nonexistent"])
    text = str(err.value)
    assert "phot_nonexistent" in text and "phot_sex" in text and "phot_python" in text


def test_backend_that_does_not_implement_the_stage_is_refused():
    pm = load_plugins(["astrometry_nova"])
    with pytest.raises(BackendNotFound, match="does not implement the photometry stage"):
        call_backend(pm, "photometry", "astrometry_nova", frame=None,
                     settings={"backend": "astrometry_nova"})


def test_only_the_chosen_backend_answers_when_several_are_loaded():
    pm = load_plugins(["phot_sex", "phot_daophot"])
    with pytest.raises(PluginError):
        single_backend(pm, "photometry")
    # astrometry_nova is still a skeleton in this tree: it must refuse honestly
    pm = load_plugins(["astrometry_nova", "astrometry_scamp"])
    info = plugin_info(pm, "astrometry_nova")
    if not info.implemented:
        with pytest.raises(NotImplementedYet, match="not implemented yet"):
            call_backend(pm, "astrometry", "astrometry_nova", frame=None, sources=None,
                         settings={"backend": "astrometry_nova"})


TOY_MODULE = '''
"""A third-party photometry backend: the brightest pixel is the only source."""
import numpy as np
from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo
from bhcore.tables import SourceTable


@hookimpl
def bh_plugin_info():
    return PluginInfo(name="phot_toy", stage="photometry", version="9.9.9",
                      description="brightest pixel")


@hookimpl
def bh_measure_photometry(frame, settings):
    if settings.get("backend") != "phot_toy":
        return None
    y, x = np.unravel_index(np.nanargmax(frame.data), frame.data.shape)
    return SourceTable.build([x], [y], [frame.data[y, x]], [1.0],
                             meta={"backend": "phot_toy"})
'''


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    """Build and install a tiny plugin from its own folder into a private site dir."""
    src = tmp_path_factory.mktemp("toy-src")
    (src / "bh_phot_toy").mkdir()
    (src / "bh_phot_toy" / "__init__.py").write_text(TOY_MODULE)
    (src / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68", "wheel"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "bhcore-phot-toy"
        version = "9.9.9"
        dependencies = []
        [project.entry-points.bhcore]
        phot_toy = "bh_phot_toy"
        [tool.setuptools]
        packages = ["bh_phot_toy"]
    """))
    site = tmp_path_factory.mktemp("toy-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(src)],
                   check=True, capture_output=True, text=True)
    return site


def _bhcore(args, site: Path, **kw):
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "bhcore", *args], env=env,
                          capture_output=True, text=True, **kw)


def test_third_party_plugin_is_found_and_used_without_changing_bhcore(toy_site, tmp_path):
    listed = _bhcore(["plugins", "list", "--json"], toy_site)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["phot_toy"]["version"] == "9.9.9"
    assert rows["phot_toy"]["stage"] == "photometry"

    image = np.zeros((40, 60))
    image[23, 37] = 500.0
    frame_path = tmp_path / "one star.fits"
    fits.PrimaryHDU(image).writeto(frame_path)
    out = tmp_path / "cat.ecsv"
    done = _bhcore(["photometry", str(frame_path), "--backend", "phot_toy",
                    "--out", str(out)], toy_site)
    assert done.returncode == 0, done.stderr
    from astropy.table import Table
    table = Table.read(out, format="ascii.ecsv")
    assert list(table.colnames[:6]) == ["id", "x", "y", "flux", "flux_err", "flags"]
    assert (table["x"][0], table["y"][0], table["flux"][0]) == (37, 23, 500.0)

    # without the site dir the same backend is unknown, with a clear one-line error
    missing = subprocess.run([sys.executable, "-m", "bhcore", "photometry", str(frame_path),
                              "--backend", "phot_toy", "--out", str(out)],
                             capture_output=True, text=True)
    assert missing.returncode == 1
    assert "backend 'phot_toy' is not installed" in missing.stderr
    assert "Traceback" not in missing.stderr
