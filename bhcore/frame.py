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
import re
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


def read_frame(path: str | Path, obs=None, *, check: bool = False) -> Frame:
    """Read the first 2-D image in ``path`` (any HDU; .gz/.fz/.bz2 accepted).

    Raises InputError naming the file and the problem for anything that is not a
    readable 2-D image: empty, truncated, not FITS, no image, a cube. With
    ``check`` the pixels must also be usable science data (:func:`check_pixels`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file does not exist", path=path)
    if path.is_dir():
        raise InputError("is a folder, not a FITS file", path=path)
    if path.stat().st_size == 0:
        raise InputError("file is empty", path=path)
    _check_compressed(path)
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
    frame = Frame(data=data, header=header, path=path, wcs=_wcs_or_none(header),
                  mask=mask if mask.any() else None, obs=obs, hdu_index=index,
                  other_headers=others)
    if check:
        check_pixels(frame)
    return frame


HEAVY_SATURATION = 0.5
"""Fraction of saturated pixels above which a frame holds no usable photometry."""


def check_pixels(frame: Frame) -> None:
    """Refuse pixel data no stage can use, with one line naming the file.

    Why opt-in (``read_frame(check=True)``): bias frames and unit-test images are
    legitimately flat; only the science pipeline must refuse an all-NaN, all-zero,
    constant or mostly saturated frame before spending minutes on astrometry.
    """
    data = frame.data
    finite = np.isfinite(data) if frame.mask is None else ~frame.mask
    n_finite = int(finite.sum())
    if n_finite == 0:
        raise InputError("no finite pixel values (all NaN or Inf)", path=frame.path)
    values = data[finite] if n_finite < data.size else data.ravel()
    saturation = _saturation_level(frame)
    if saturation is not None:
        fraction = float(np.count_nonzero(values >= saturation)) / values.size
        if fraction > HEAVY_SATURATION:
            raise InputError(f"heavily saturated: {fraction:.0%} of pixels at or above "
                             f"the saturation level {saturation:g} ADU", path=frame.path)
    low, high = float(values.min()), float(values.max())
    if low == high == 0.0:
        raise InputError("all pixels are zero (an empty read-out)", path=frame.path)
    if low == high:
        raise InputError(f"all pixels have the same value {low:g} (no image)",
                         path=frame.path)


def _saturation_level(frame: Frame) -> float | None:
    """The camera's saturation (registry entry first, else the SATURATE card)."""
    level = getattr(frame.obs, "saturation", None) if frame.obs is not None else None
    if level is None:
        level = frame.lookup("SATURATE")
    try:
        level = float(level)
    except (TypeError, ValueError):
        return None
    return level if np.isfinite(level) and level > 0 else None


def _check_compressed(path: Path) -> None:
    """Read a .gz/.bz2 stream to its end so its checksum is verified.

    Why: astropy stops reading once it has the pixels, so a corrupted stream
    would otherwise give garbage pixels without any error.
    """
    import bz2
    import gzip
    import zlib
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else bz2.open if name.endswith(".bz2") else None
    if opener is None:
        return
    try:
        with opener(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise InputError(f"corrupt or truncated compressed FITS file ({_short(exc)})",
                         path=path) from None


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


def file_stem(path) -> str:
    """``a/b/night 01.fits.fz`` -> ``night_01``: the one stem rule of every product.

    Compression and FITS suffixes are dropped; characters outside ``A-Za-z0-9._+-``
    become ``_`` and leading dots/dashes go, so a stem never hides a file or leaves
    the output folder, and every stage names a frame's products alike.
    """
    name = Path(str(path or "").replace("\\", "/")).name
    for suffixes in ((".gz", ".fz", ".bz2", ".zip"), (".fits", ".fit", ".fts")):
        for suffix in suffixes:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".-")
    return stem[:200] or "frame"


def write_residual(frame: Frame, data: np.ndarray, products_dir, note: str = "") -> Path:
    """Write a stars-subtracted image as ``<stem>_residual.fits`` (every engine alike)."""
    header = frame.header.copy()
    if note:
        header["HISTORY"] = note
    target = Path(products_dir) / f"{file_stem(frame.path)}_residual.fits"
    return write_frame(frame.replace(data=data, header=header, mask=None), target)
