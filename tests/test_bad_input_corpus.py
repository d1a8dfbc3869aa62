"""A corpus of bad inputs through the batch runner and the command line.

Each case ends in one clear line naming the file and the problem, the rest of
the batch goes on, the inputs are byte-identical afterwards and no partial
output is left behind. Cases that must work end like the good frame of the same
night, whichever backends are installed.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bhcore.batch import audit_products, read_manifest, run_batch
from bhcore.registry import Registry
from bhcore.registry.db import builtin_dir
from bhcore.runner import DEMO_ONAME
from bhcore.testing import make_night

OFFLINE = {"offline": True}          # no catalogue or solver goes online

# case -> file name, and what its one-line error says (None: it must work)
EXPECTED = {
    "good": ("good.fits", None),
    "empty": ("empty.fits", "file is empty"),
    "truncated": ("truncated.fits", "truncated"),
    "not_fits": ("notes.fits", "not a readable FITS file"),
    "no_image": ("no_image.fits", "no image data"),
    "extension_1": ("extension_1.fits", None),
    "cube": ("cube.fits", "3-D array"),
    "all_nan": ("all_nan.fits", "no finite pixel values"),
    "all_zero": ("all_zero.fits", "all pixels are zero"),
    "saturated": ("saturated.fits", "heavily saturated"),
    "no_date": ("no_date.fits", "DATE-OBS is missing"),
    "bad_date": ("bad_date.fits", "DATE-OBS cannot be read"),
    "unknown_filter": ("unknown_filter.fits", None),
    "exptime_zero": ("exptime_zero.fits", "EXPTIME is 0"),
    "exptime_negative": ("exptime_negative.fits", "EXPTIME is -5"),
    "corrupt_gz": ("corrupt.fits.gz", r"corrupt|CRC|truncated"),
    "truncated_gz": ("truncated.fits.gz", r"corrupt|CRC|truncated|FITS"),
}


def make_corpus(folder: Path) -> dict[str, Path]:
    night = make_night(out_dir=folder / "night", n_frames=2, shape=(64, 64), n_stars=30,
                       seed=41)
    good = night.paths[0]
    header, data = fits.getheader(good), fits.getdata(good)
    raw = good.read_bytes()
    paths = {}

    def image(case, pixels=data, **cards):
        h = header.copy()
        for key, value in cards.items():
            if value is None:
                del h[key]
            else:
                h[key] = value
        fits.PrimaryHDU(pixels, h).writeto(folder / EXPECTED[case][0])

    shutil.copy(good, folder / "good.fits")
    (folder / "empty.fits").write_bytes(b"")
    (folder / "truncated.fits").write_bytes(raw[:len(raw) // 2])
    (folder / "notes.fits").write_text("observing log, not an image\n" * 20)
    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])
    fits.HDUList([fits.PrimaryHDU(header=header), table]).writeto(folder / "no_image.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header)]).writeto(
        folder / "extension_1.fits")
    image("cube", np.stack([data] * 3))
    image("all_nan", np.full(data.shape, np.nan, np.float32))
    image("all_zero", np.zeros(data.shape, np.float32))
    image("saturated", np.full(data.shape, 65535.0, np.float32))
    image("no_date", **{"DATE-OBS": None})
    image("bad_date", **{"DATE-OBS": "the night before"})
    image("unknown_filter", FILTER="Zq")
    image("exptime_zero", EXPTIME=0)
    image("exptime_negative", EXPTIME=-5)
    packed = bytearray(gzip.compress(raw))
    packed[len(packed) // 2:len(packed) // 2 + 64] = b"\x00" * 64
    (folder / "corrupt.fits.gz").write_bytes(bytes(packed))
    (folder / "truncated.fits.gz").write_bytes(gzip.compress(raw)[:3000])
    for case, (name, _) in EXPECTED.items():
        paths[case] = folder / name
    no_stars = np.random.default_rng(1).normal(1000, 10, data.shape).astype(np.float32)
    fits.PrimaryHDU(no_stars, header).writeto(folder / "no_stars.fits")
    paths["no_stars"] = folder / "no_stars.fits"
    paths["unicode"] = folder / "night 2 Żółć é.fits"
    shutil.copy(night.paths[1], paths["unicode"])
    return paths


def digests(paths) -> dict:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def demo_obs():
    registry = Registry()
    registry.ensure_builtin()
    return registry.get(DEMO_ONAME)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    paths = make_corpus(folder / "in")
    before = digests(paths.values())
    with pytest.MonkeyPatch.context() as mp:            # never the user's own home
        mp.setenv("BHCORE_HOME", str(folder / "home"))
        summary = run_batch(list(paths.values()), demo_obs(), folder / "out", workers=2,
                            overrides=OFFLINE)
    return paths, before, summary, folder / "out"


def outcome(summary, path):
    reasons = {p: r for p, r in summary.failed}
    return reasons.get(str(Path(path).absolute()))


@pytest.mark.parametrize("case", [c for c, (_, error) in EXPECTED.items() if error])
def test_each_bad_input_is_one_line_naming_the_file_and_the_problem(corpus, case):
    paths, _, summary, out = corpus
    reason = outcome(summary, paths[case])
    assert reason is not None, f"{case} did not fail"
    assert "\n" not in reason and reason.startswith(f"{paths[case]}: "), reason
    assert re.search(EXPECTED[case][1], reason), reason
    assert not (out / paths[case].name.split(".")[0]).exists()   # nothing left behind


@pytest.mark.parametrize("case", ["extension_1", "unknown_filter"])
def test_cases_that_must_work_end_like_the_good_frame(corpus, case):
    paths, _, summary, out = corpus
    good, this = read_manifest(out, paths["good"]), read_manifest(out, paths[case])
    assert this is not None and this["status"] == good["status"]
    assert set(this["products"]) == set(good["products"]) and "header" in this["products"]
    if case == "unknown_filter":        # a warning naming the file and the filter
        assert any("unknown_filter.fits" in w and "'Zq'" in w for w in summary.warnings)


def test_unsolvable_astrometry_keeps_earlier_products(corpus):
    paths, _, summary, out = corpus
    for case in ("good", "no_stars"):
        manifest = read_manifest(out, paths[case])
        if any(n.startswith("astrometry failed") for n in manifest["notes"]):
            reason = outcome(summary, paths[case])
            assert manifest["status"] == "failed" and set(manifest["products"]) == {"header"}
            assert reason.startswith(f"{paths[case]}: no astrometric solution")
        else:                            # solved or no backend: the frame went on
            assert manifest["status"] == "done"


def test_the_batch_went_on_and_inputs_are_untouched(corpus):
    paths, before, summary, out = corpus
    assert summary.done + len(summary.failed) == len(paths)
    assert digests(paths.values()) == before
    assert audit_products(out) == []
    assert not summary.bugs


def test_a_path_with_spaces_and_non_ascii_characters_works(corpus):
    paths, _, summary, out = corpus
    good, this = read_manifest(out, paths["good"]), read_manifest(out, paths["unicode"])
    assert this is not None and this["status"] == good["status"]
    assert set(this["products"]) == set(good["products"])
    assert str(paths["unicode"]) not in dict(summary.failed) or good["status"] == "failed"


def test_a_bad_path_is_still_one_line_naming_it(corpus):
    paths, _, summary, out = corpus
    reason = outcome(summary, paths["unicode"])
    if reason is not None:
        assert "\n" not in reason and str(paths["unicode"]) in reason


# --- through the command line ---------------------------------------------------------------
def bhcore(*args):
    return subprocess.run([sys.executable, "-m", "bhcore", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def test_cli_prints_each_failure_on_one_line_at_the_end(corpus, tmp_path):
    paths = corpus[0]
    chosen = [paths[c] for c in ("empty", "cube", "all_nan", "no_date", "good")]
    result = bhcore("run", *chosen, "--observatory", DEMO_ONAME, "--out", tmp_path / "out",
                    "-j", "2", "--set", "offline=true")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for case in ("empty", "cube", "all_nan", "no_date"):
        assert sum(line.startswith(f"error: {paths[case]}: ") for line in errors) == 1, errors


def test_unknown_observatory_is_one_line_and_writes_nothing(corpus, tmp_path):
    result = bhcore("run", corpus[0]["good"], "--observatory", "NOWHERE_NoCam",
                    "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and "NOWHERE_NoCam" in line
    assert not (tmp_path / "out").exists()


def test_obsinfo_with_a_malformed_line_is_one_line_naming_file_and_line(tmp_path):
    text = (builtin_dir() / f"{DEMO_ONAME}_obs.info").read_text().splitlines(keepends=True)
    bad_line = next(i for i, line in enumerate(text) if "EXPTIME" in line)
    text[bad_line] = "  Exposition time : EXPTIME : EXPTIME float seconds F\n"
    path = tmp_path / "BROKEN_Cam_obs.info"
    path.write_text("".join(text))
    before = digests([path])
    for command in ("validate", "add"):
        result = bhcore("registry", command, path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        lines = [x for x in result.stderr.splitlines() if x.startswith("error")]
        assert lines and all(str(path) in x for x in lines), result.stderr
        assert any(f":{bad_line + 1}" in x for x in lines), result.stderr
    assert digests([path]) == before
