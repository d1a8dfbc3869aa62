"""Bad input through the real command line: one clear line, non-zero exit, no traceback."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits


def bhcore(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bhcore", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)


def _good_frame(path, **cards):
    header = fits.Header({"DATE-OBS": "2017-12-20T01:33:43.317", "EXPTIME": 60.0,
                          "FILTER": "Clear", "RA": 31.312, "DEC": 46.769, **cards})
    rng = np.random.default_rng(0)
    fits.PrimaryHDU(rng.normal(500, 10, (64, 64)).astype(np.float32), header).writeto(path)
    return path


def _one_error_line(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors, result.stderr
    assert any(all(n in line for n in needles) for line in errors), result.stderr
    return errors


def test_batch_goes_on_past_broken_frames(tmp_path):
    good = _good_frame(tmp_path / "good.fits")
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:4000])
    text = tmp_path / "notes.fits"
    text.write_text("not a FITS file at all\n")
    no_date = tmp_path / "no date.fits"
    _good_frame(no_date)
    with fits.open(no_date, mode="update") as hdul:
        del hdul[0].header["DATE-OBS"]
    inputs = [truncated, text, no_date, good]
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
    out = tmp_path / "out"
    result = bhcore("headers", *inputs, "--observatory", "MicroObservatory_Cecilia",
                    "--out", out)
    errors = _one_error_line(result, str(truncated))
    per_file = [e for e in errors if any(str(p) in e for p in inputs)]
    assert len(per_file) == 3, errors
    assert any(str(text) in e and "FITS" in e for e in errors)
    assert any(str(no_date) in e and "DATE-OBS" in e for e in errors)
    assert (out / "good.fits").exists()
    assert sorted(p.name for p in out.iterdir()) == ["good.fits"]  # nothing partial
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == d for p, d in digests.items())


def test_unknown_observatory(tmp_path):
    good = _good_frame(tmp_path / "good.fits")
    result = bhcore("headers", good, "--observatory", "NoSuch_Camera", "--out", tmp_path / "o")
    _one_error_line(result, "NoSuch_Camera")


def test_obsinfo_line_with_six_fields_names_file_and_line(tmp_path):
    bad = tmp_path / "Bad_Cam_obs.info"
    bad.write_text("# OBSERVATORY\n"
                   "  Observatory : - : OBSERVAT : str : BadObs : observatory ID : F\n"
                   "  Observatory longitude [deg] : - : LONGITUD : float : 10.0 : deg\n")
    result = bhcore("registry", "validate", bad)
    _one_error_line(result, str(bad), ":3")
    result = bhcore("registry", "add", bad)
    _one_error_line(result, str(bad), ":3")


@pytest.mark.parametrize("command", [["plugins", "list"], ["doctor"], ["registry", "list"]])
def test_informational_commands_succeed(command):
    result = bhcore(*command)
    assert result.returncode == 0, result.stderr
