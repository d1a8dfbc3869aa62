"""phot_python on real frames: SExtractor's own answer for the NTT cutout, and every frame."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import ascii as ascii_io
from astropy.io import fits
from astropy.table import Table

from bhcore.frame import read_frame
from bhcore.pipeline import run_photometry

FRAMES = ("ntt_emmi_sep/image.fits", "iraf_m51_kpno/iraf_devpix_m51_wcs.fits",
          "saao_ccdproc/a8280271.fits", "sa110_feder_cutout/sip-wcs.fit",
          "wasp10_feder/center_cutout_1.fits", "wasp10_feder/cutout_for_fwhm_test.fits",
          "eyuma_feder/thumbnail-image.fit.gz",
          "hatp32_microobservatory/HATP-32171220013343.fits.gz")


def sextractor_catalog(path) -> Table:
    names = ["NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "X2_IMAGE", "Y2_IMAGE",
             "XY_IMAGE", "ERRX2_IMAGE", "ERRY2_IMAGE", "ERRXY_IMAGE", "A_IMAGE", "FLUX_APER",
             "FLUXERR_APER", "KRON_RADIUS", "FLUX_AUTO", "FLUXERR_AUTO", "FLUX_RADIUS1",
             "FLUX_RADIUS2", "FLUX_RADIUS3", "FLAGS"]
    return ascii_io.read(path, format="no_header", comment="#", names=names)


def test_ntt_detections_recover_sextractors_clean_sources(shared_data):
    folder = shared_data / "ntt_emmi_sep"
    cat = sextractor_catalog(folder / "image.cat")
    clean = cat[(cat["FLAGS"] == 0) & (cat["FLUX_AUTO"] > 10 * cat["FLUXERR_AUTO"])]
    assert len(clean) >= 10
    table = run_photometry(read_frame(folder / "image.fits"), "phot_python")
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    found = [np.min(np.hypot(x - (s["X_IMAGE"] - 1), y - (s["Y_IMAGE"] - 1))) < 1.5
             for s in clean]
    assert np.mean(found) >= 0.95, f"{sum(found)} of {len(clean)}"


def test_ntt_background_agrees_with_sextractors_map(shared_data):
    from bh_phot_python.detection import estimate_background
    folder = shared_data / "ntt_emmi_sep"
    image = fits.getdata(folder / "image.fits").astype(np.float64)
    reference = fits.getdata(folder / "back.fits").astype(np.float64)
    ours = estimate_background(image, np.zeros(image.shape, bool), box=64, filt=3)
    assert np.median(np.abs(ours.sky / reference - 1)) < 0.01
    assert np.max(np.abs(ours.sky / reference - 1)) < 0.03


@pytest.mark.parametrize("relative", FRAMES)
def test_photometry_command_works_on_every_real_frame(shared_data, tmp_path, relative):
    out = tmp_path / "cat.ecsv"
    result = subprocess.run([sys.executable, "-m", "bhcore", "photometry",
                             str(shared_data / relative), "--backend", "phot_python",
                             "--out", str(out)], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stderr
    table = Table.read(out, format="ascii.ecsv")
    assert len(table) > 0
    ny, nx = read_frame(shared_data / relative).shape
    assert np.all((table["x"] > -1) & (table["x"] < nx) & (table["y"] > -1) & (table["y"] < ny))
