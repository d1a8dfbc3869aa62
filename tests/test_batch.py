"""The parallel batch runner: same products as a sequential run, resume, SIGKILL safety.

Frames come from the simulated demo camera (and a variant of it whose astrometry
backend is never installed, so frames get through every stage that exists); the
checks read manifests, so they hold whichever backends are implemented.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from astropy.io import fits

from bhcore.batch import audit_products, frame_is_complete, run_batch
from bhcore.registry import Registry
from bhcore.registry.db import builtin_dir
from bhcore.runner import DEMO_ONAME, manifest_path
from bhcore.testing import make_night

OFFLINE = {"offline": True}          # no catalogue or solver goes online
OFFLINE_ARGS = ["--set", "offline=true"]
NOSOLVE = "BHCORE-SIM_NoSolve"


def demo_obs():
    registry = Registry()
    registry.ensure_builtin()
    return registry.get(DEMO_ONAME)


def register_nosolve(home: Path) -> str:
    """The demo camera with an astrometry backend that is never installed."""
    text = (builtin_dir() / f"{DEMO_ONAME}_obs.info").read_text().replace(DEMO_ONAME, NOSOLVE)
    text = text.replace("# PIPELINE (bhcore)\n", "# PIPELINE (bhcore)\n  Astrometry backends : - "
                        ": BH_ASTROM : str : astrometry_absent : test camera : F\n")
    path = home / f"{NOSOLVE}_obs.info"
    path.write_text(text)
    registry = Registry()
    registry.ensure_builtin()
    registry.add_obsinfo(path)
    return NOSOLVE


def nosolve_obs():
    obs = demo_obs()
    return dataclasses.replace(obs, backends=MappingProxyType(
        {**obs.backends, "astrometry": ("astrometry_absent",)}))


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("night")
    return make_night(out_dir=folder, n_frames=4, shape=(64, 64), n_stars=30, seed=5).paths


def manifests(out_dir) -> dict:
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted(Path(out_dir).glob("*/*.manifest.json"))}


def results_db_stems(out_dir) -> list | None:
    """Stems recorded in the results database of ``out_dir`` (None: no database)."""
    if not (Path(out_dir) / "results.db").exists():
        return None
    from bhcore.results.db import ResultsDB
    return [row.stem for row in ResultsDB(out_dir).frames()]


def outcome(out_dir) -> dict:
    """Status and products of every frame (notes name each process's home folder)."""
    return {k: (v["status"], v["products"]) for k, v in manifests(out_dir).items()}


def bhcore(*args, **kw):
    return subprocess.run([sys.executable, "-m", "bhcore", *map(str, args)], text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, **kw)


def test_parallel_run_gives_the_products_of_a_sequential_run(night, tmp_path):
    obs = demo_obs()
    one = run_batch(night[:3], obs, tmp_path / "a", workers=0, overrides=OFFLINE)
    two = run_batch(night[:3], obs, tmp_path / "b", workers=2, overrides=OFFLINE)
    assert one.done + len(one.failed) == two.done + len(two.failed) == 3
    assert (two.executor, two.workers) == ("local", 2)
    assert outcome(tmp_path / "a") == outcome(tmp_path / "b")
    assert one.stage_counts == two.stage_counts and two.stage_counts["header"] == 3
    assert audit_products(tmp_path / "a") == audit_products(tmp_path / "b") == []
    for path, reason in two.failed:      # failures are one line naming their file
        assert "\n" not in reason and path in reason


def test_resume_skips_complete_frames_and_redoes_the_rest(night, tmp_path):
    obs, out = nosolve_obs(), tmp_path / "out"
    first = run_batch(night, obs, out, workers=0, overrides=OFFLINE)
    assert first.done == len(night) and not first.failed
    stamp = {p: manifest_path(out, p).stat().st_mtime_ns for p in night}
    manifest_path(out, night[1]).unlink()                   # killed before its manifest
    for product in manifest_path(out, night[3]).parent.iterdir():
        product.unlink()                                    # killed right at the start
    (manifest_path(out, night[3]).parent / ".frame_0004_std.fits.x.part").write_bytes(b"1")
    again = run_batch(night, obs, out, workers=0, resume=True, overrides=OFFLINE)
    assert sorted(again.skipped) == sorted(str(p) for p in (night[0], night[2]))
    assert again.done == 2 and not again.failed
    for p in (night[0], night[2]):                          # complete frames untouched
        assert manifest_path(out, p).stat().st_mtime_ns == stamp[p]
    assert all(frame_is_complete(out, p) for p in night)
    assert audit_products(out) == []


def test_two_inputs_for_one_output_folder_fail_clearly(night, tmp_path):
    twin = tmp_path / "other" / night[0].name
    twin.parent.mkdir()
    twin.write_bytes(night[0].read_bytes())
    summary = run_batch([night[0], night[0], twin], nosolve_obs(), tmp_path / "out", workers=0,
                        overrides=OFFLINE)
    assert summary.done == 1                                # the same path twice: once
    [(path, reason)] = summary.failed
    assert path == str(twin) and "already used by" in reason and str(night[0]) in reason
    later = run_batch([twin], nosolve_obs(), tmp_path / "out", workers=0, overrides=OFFLINE)
    assert "already holds the products of" in later.failed[0][1]   # across runs too


def test_cli_run_in_parallel_lists_failures_at_the_end(night, tmp_path):
    register_nosolve(Path(os.environ["BHCORE_HOME"]))
    junk = tmp_path / "junk.fits"
    junk.write_text("not a FITS file\n")
    result = bhcore("run", *night, junk, "--observatory", NOSOLVE, "--out", tmp_path / "out",
                    "--workers", "2", *OFFLINE_ARGS)
    assert result.returncode == 1, result.stderr
    assert f"{len(night)} frame(s) done, 1 failed" in result.stdout
    assert "2 local worker(s)" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {junk}: not a readable FITS")
    assert "Traceback" not in result.stderr


# --- SIGKILL at random moments ----------------------------------------------------------
def group_pids(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process it started, then make sure none is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
    deadline = time.monotonic() + 10
    while group_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_pids(proc.pid), "processes left after the kill"


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def killable(tmp_path_factory):
    """Six frames and their products from an uninterrupted in-process run."""
    folder = tmp_path_factory.mktemp("killable")
    files = make_night(out_dir=folder / "raw", n_frames=6, shape=(64, 64), n_stars=30,
                       seed=9).paths
    with pytest.MonkeyPatch.context() as mp:            # never the user's own home
        mp.setenv("BHCORE_HOME", str(folder / "home"))
        summary = run_batch(files, nosolve_obs(), folder / "ref", workers=0,
                            overrides=OFFLINE)
    assert summary.done == len(files)
    return files, folder / "ref"


@pytest.mark.parametrize("seed, kills", [(11, 1), (12, 1), (13, 2)])
def test_a_run_killed_at_random_moments_finishes_with_every_frame_once(killable, tmp_path,
                                                                      seed, kills):
    files, ref = killable
    oname = register_nosolve(Path(os.environ["BHCORE_HOME"]))
    args = ["run", *files, "--observatory", oname, "--workers", "2", "--resume", *OFFLINE_ARGS]
    rng = random.Random(seed)
    out = tmp_path / "out"
    for _ in range(kills):                           # SIGKILL at random moments
        done_before = {p: manifest_path(out, p).stat() for p in files
                       if frame_is_complete(out, p)}
        target = rng.randint(len(done_before), len(files) - 1)
        proc = subprocess.Popen([sys.executable, "-m", "bhcore", *map(str, args), "--out",
                                 str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: len(list(out.glob("*/*.manifest.json"))) >= target
                 or proc.poll() is not None)
        time.sleep(rng.uniform(0.0, 0.3))            # anywhere inside the next frames
        kill_group(proc)
        for p, st in done_before.items():            # complete frames are never redone
            now = manifest_path(out, p).stat()
            assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    final = bhcore(*args, "--out", out)
    assert final.returncode == 0, final.stderr
    assert audit_products(out) == []
    assert outcome(out) == outcome(ref)
    recorded = results_db_stems(out)                 # the results database: once each
    calibrated = [m.parent.name for m in out.glob("*/*_quality.json")]
    assert recorded is None or sorted(recorded) == sorted(calibrated)
    for name, manifest in manifests(out).items():
        assert manifest["status"] == "done"
        for stage, product in manifest["products"].items():
            assert (out / name / product).stat().st_size > 0
            if stage in ("header", "astrometry"):     # pure functions of the input
                np.testing.assert_array_equal(fits.getdata(out / name / product),
                                              fits.getdata(ref / name / product))


def test_summary_groups_notes_that_differ_only_in_numbers():
    from io import StringIO

    from rich.console import Console

    from bhcore.batch import print_summary
    from bhcore.runner import RunSummary
    summary = RunSummary(done=3, stage_notes=[
        "a.fits: calibration: ZP 24.99 ± 0.003, 157 stars",
        "b.fits: calibration: ZP 24.97 ± 0.003, 150 stars",
        "a.fits: astrometry: solved", "b.fits: astrometry: solved",
        "c.fits: calibration failed: need at least 3 stars"])
    out = StringIO()
    print_summary(summary, Console(file=out, width=200), Console(file=StringIO()))
    lines = out.getvalue().splitlines()
    assert "  2 frames: calibration: ZP 24.99 ± 0.003, 157 stars (the numbers of a.fits; " \
           "they differ per frame)" in lines
    assert "  2 frames: astrometry: solved" in lines
    assert "  c.fits: calibration failed: need at least 3 stars" in lines
