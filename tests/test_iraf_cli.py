"""``bhcore iraf``: a command contributed by the DAOPHOT plugin through an entry point."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

pytestmark = pytest.mark.skipif(shutil.which("irafcl") is None,
                                reason="IRAF is not installed (apt-get install iraf iraf-noao)")


def bhcore(*args):
    return subprocess.run([sys.executable, "-m", "bhcore", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def test_imstatistics_agrees_with_numpy_and_input_is_untouched(shared_data):
    frame = shared_data / "iraf_m51_kpno" / "iraf_devpix_m51_wcs.fits"
    before = frame.read_bytes()
    result = bhcore("iraf", frame, "--task", 'imstatistics ("image.fits", fields="npix,mean")')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["#", "NPIX", "MEAN"])
    npix, mean = int(lines[header + 1].split()[0]), float(lines[header + 1].split()[1])
    data = fits.getdata(frame).astype(float)
    assert npix == data.size and mean == pytest.approx(data.mean(), abs=0.1)
    assert frame.read_bytes() == before


def test_shell_escapes_are_refused_with_one_line(shared_data, tmp_path):
    frame = tmp_path / "f.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(frame)
    result = bhcore("iraf", frame, "--task", "!touch /tmp/should-not-exist")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not allowed" in result.stderr
