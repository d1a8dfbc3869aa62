"""Reading frames from any HDU and writing products atomically."""
from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np
import pytest
from astropy.io import fits

from bhcore.errors import InputError
from bhcore.frame import read_frame, write_frame


def _image(tmp_path, name="f.fits", **kw):
    data = np.arange(30 * 20, dtype=np.int16).reshape(20, 30)
    path = tmp_path / name
    fits.PrimaryHDU(data, header=fits.Header(kw)).writeto(path)
    return path, data


def test_primary_image_is_read_as_native_float(tmp_path):
    path, data = _image(tmp_path, OBJECT="X")
    frame = read_frame(path)
    assert frame.data.dtype == np.float64 and frame.data.dtype.isnative
    np.testing.assert_array_equal(frame.data, data)
    assert frame.lookup("object") == "X" and frame.hdu_index == 0


def test_image_in_extension_and_keywords_from_any_hdu(tmp_path):
    path = tmp_path / "ext.fits"
    primary = fits.PrimaryHDU(header=fits.Header({"DATE-OBS": "2020-01-01T00:00:00"}))
    ext = fits.ImageHDU(np.ones((8, 9)), header=fits.Header({"EXPTIME": 5.0}))
    fits.HDUList([primary, ext]).writeto(path)
    frame = read_frame(path)
    assert frame.hdu_index == 1 and frame.shape == (8, 9)
    assert frame.lookup("DATE-OBS") == "2020-01-01T00:00:00"
    assert frame.lookup("EXPTIME") == 5.0


def test_tile_compressed_fz_and_gzip(tmp_path):
    data = np.random.default_rng(1).integers(0, 4000, (32, 32)).astype(np.int16)  # lossless
    fz = tmp_path / "c.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="GZIP_2")]).writeto(fz)
    np.testing.assert_allclose(read_frame(fz).data, data)
    plain = tmp_path / "p.fits"
    fits.PrimaryHDU(data).writeto(plain)
    gz = tmp_path / "p.fits.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_allclose(read_frame(gz).data, data)


@pytest.mark.parametrize("case, message", [
    ("empty", "file is empty"),
    ("text", "not a readable FITS file"),
    ("truncated", "truncated"),
    ("table_only", "no image data"),
    ("cube", "3-D array"),
    ("corrupt_gz", "FITS"),
])
def test_bad_input_is_one_clear_error_naming_the_file(tmp_path, case, message):
    path = tmp_path / f"bad {case} é.fits"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("SIMPLE? no, this is a shopping list\n" * 10)
    elif case == "truncated":
        good, _ = _image(tmp_path, "good.fits")
        path.write_bytes(good.read_bytes()[:2880 + 500])
    elif case == "table_only":
        table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    elif case == "cube":
        fits.PrimaryHDU(np.zeros((3, 4, 5))).writeto(path)
    elif case == "corrupt_gz":
        path = tmp_path / "bad.fits.gz"
        good, _ = _image(tmp_path, "good2.fits")
        path.write_bytes(gzip.compress(good.read_bytes())[:300])
    before = path.read_bytes()
    with pytest.raises(InputError) as err:
        read_frame(path)
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text
    assert path.read_bytes() == before


def test_nan_pixels_become_the_mask(tmp_path):
    data = np.ones((5, 5))
    data[2, 3] = np.nan
    path = tmp_path / "nan.fits"
    fits.PrimaryHDU(data).writeto(path)
    frame = read_frame(path)
    assert frame.mask is not None and frame.mask[2, 3] and frame.mask.sum() == 1


def test_write_is_atomic_and_never_touches_the_input(tmp_path):
    path, _ = _image(tmp_path, OBJECT="Y")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    frame = read_frame(path)
    header = frame.header.copy()
    header["OBJECT"] = "Z"
    out = write_frame(frame.replace(header=header), tmp_path / "out" / "o.fits")
    assert fits.getheader(out)["OBJECT"] == "Z"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not [p for p in os.listdir(out.parent) if p.endswith(".part")]
    assert frame.header["OBJECT"] == "Y"
