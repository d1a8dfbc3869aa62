"""The Frame passed between stages, and safe reading/writing of FITS files.

Frames are immutable in spirit: stages return ``frame.replace(...)`` instead of
mutating. Reading finds the image in whichever HDU holds it (primary, extension,
tile-compressed ``.fz``) and keeps the other HDUs' headers so that keywords can be
looked up anywhere. Writing is atomic: a temporary file in the target folder is
renamed into place, so a crash never leaves a partial product.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from .errors import InputError


@dataclass(frozen=True)
class Frame:
    """Pixel data (native float), its header, WCS, bad-pixel mask and provenance."""

    data: np.ndarray
    header: fits.Header
    path: Path | None = None
    wcs: WCS | None = None
    mask: np.ndarray | None = None          # True = bad pixel
    error: np.ndarray | None = None         # 1-sigma per pixel, same units as data
    obs: Any = None                         # resolved ObservatorySettings, read-only
    hdu_index: int = 0
    other_headers: tuple = field(default_factory=tuple)

    def replace(self, **changes) -> "Frame":
        """Return a copy with some fields changed (the original is untouched)."""
        return dataclasses.replace(self, **changes)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def name(self) -> str:
        return self.path.name if self.path else "<memory>"

    def lookup(self, keyword: str, default=None):
        """Value of ``keyword`` from the image header, else from any other HDU."""
        keyword = keyword.upper()
        if keyword in self.header:
            return self.header[keyword]
        for hdr in self.other_headers:
            if keyword in hdr:
                return hdr[keyword]
        return default


def _wcs_or_none(header: fits.Header) -> WCS | None:
    if "CTYPE1" not in header or "CTYPE2" not in header:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(header, naxis=2)
    except Exception:  # a broken WCS is treated as none; astrometry will solve it
        return None
    return wcs if wcs.has_celestial else None


def read_frame(path: str | Path, obs=None) -> Frame:
    """Read the first 2-D image in ``path`` (any HDU; .gz/.fz/.bz2 accepted).

    Raises InputError naming the file and the problem for anything that is not a
    readable 2-D image: empty, truncated, not FITS, no image, a cube.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file does not exist", path=path)
    if path.is_dir():
        raise InputError("is a folder, not a FITS file", path=path)
    if path.stat().st_size == 0:
        raise InputError("file is empty", path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                headers = [h.header.copy() for h in hdul]
                index, data = _find_image(hdul, path)
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"not a readable FITS file ({_short(exc)})", path=path) from None
    except (ValueError, TypeError, EOFError, IndexError) as exc:
        raise InputError(f"corrupt or truncated FITS file ({_short(exc)})", path=path) from None
    header = headers[index]
    others = tuple(h for i, h in enumerate(headers) if i != index)
    data = np.asarray(data, dtype=np.float64)   # native byte order, float
    mask = ~np.isfinite(data)
    return Frame(data=data, header=header, path=path, wcs=_wcs_or_none(header),
                 mask=mask if mask.any() else None, obs=obs, hdu_index=index,
                 other_headers=others)


def _find_image(hdul, path):
    cubes = []
    for index, hdu in enumerate(hdul):
        if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            continue
        data = hdu.data
        if data is None:
            continue
        squeezed = np.squeeze(data)
        if squeezed.ndim == 2:
            return index, squeezed
        cubes.append((index, data.shape))
    if cubes:
        index, shape = cubes[0]
        raise InputError(f"HDU {index} holds a {len(shape)}-D array {shape}, "
                         "not a 2-D image", path=path)
    raise InputError("no image data in any HDU", path=path)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else exc.__class__.__name__


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_frame(frame: Frame, path: str | Path, dtype=np.float32) -> Path:
    """Write ``frame`` as a single-HDU FITS file atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = frame.header.copy()
    for key in ("BZERO", "BSCALE", "BLANK"):
        header.remove(key, ignore_missing=True, remove_all=True)
    hdu = fits.PrimaryHDU(data=np.asarray(frame.data, dtype=dtype), header=header)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            hdu.writeto(tmp, overwrite=True, output_verify="silentfix")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
