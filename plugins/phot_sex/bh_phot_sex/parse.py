"""Turn a SExtractor FITS_LDAC catalogue into a bhcore ``SourceTable``.

SExtractor positions are 1-based: 1 is subtracted here, once. SExtractor's FLAGS
are kept in ``flags_raw`` and mapped onto ``SourceFlag``:

====  ===========================================  ==================
bit   SExtractor meaning                           SourceFlag
====  ===========================================  ==================
1     bright neighbours bias the photometry        BLENDED
2     deblended from another object                BLENDED
4     at least one pixel saturated                 SATURATED
8     isophote truncated by the image border       NEAR_EDGE
16    aperture data incomplete (border)            NEAR_EDGE
32+   memory overflow during deblending/extract.   EXTERNAL
====  ===========================================  ==================

plus MASKED_PIXELS when a bad pixel (mask or NaN) touches the source, and
NOT_CONVERGED when the PSF fit gave no flux.
"""
from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.table import Table

from bhcore.tables import SourceFlag, SourceTable, pixels_near

from .config import aperture_label, param_base

BAD_MAG = 99.0


def _col(cat: Table, name: str, n: int, dtype=float) -> np.ndarray:
    if name in cat.colnames:
        return np.asarray(cat[name], dtype=dtype)
    return np.full(n, np.nan) if dtype is float else np.zeros(n, dtype=dtype)


def _aper(cat: Table, name: str, n: int, k: int) -> np.ndarray:
    """The k-th aperture of a FLUX_APER-like column (a scalar column when k == 0 only)."""
    if name not in cat.colnames:
        return np.full(n, np.nan)
    values = np.asarray(cat[name], dtype=float).reshape(n, -1)
    return values[:, k] if k < values.shape[1] else np.full(n, np.nan)


def _mag(values: np.ndarray) -> np.ndarray:
    out = np.array(values, dtype=float)
    out[(out >= BAD_MAG) | ~np.isfinite(out)] = np.nan
    return out


def map_flags(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.int64)
    flags = np.zeros(raw.shape, dtype=np.int32)
    flags[(raw & 3) != 0] |= SourceFlag.BLENDED
    flags[(raw & 4) != 0] |= SourceFlag.SATURATED
    flags[(raw & 24) != 0] |= SourceFlag.NEAR_EDGE
    flags[(raw & ~31) != 0] |= SourceFlag.EXTERNAL
    return flags


def build_table(cat: Table, *, radii: list[float], psf: bool,
                extra_params: list[str], bad: np.ndarray | None, mask_radius: float,
                wcs=None, meta: dict | None = None) -> SourceTable:
    """The SourceTable of one SExtractor catalogue (pass 2 when ``psf``)."""
    n = len(cat)
    raw = _col(cat, "FLAGS", n, dtype=np.int64)
    flags = map_flags(raw)
    xwin = _col(cat, "XWIN_IMAGE", n) - 1.0
    ywin = _col(cat, "YWIN_IMAGE", n) - 1.0
    flux_auto = _col(cat, "FLUX_AUTO", n)
    fluxerr_auto = _col(cat, "FLUXERR_AUTO", n)
    if psf:
        xpsf = _col(cat, "XPSF_IMAGE", n) - 1.0
        ypsf = _col(cat, "YPSF_IMAGE", n) - 1.0
        flux = _col(cat, "FLUX_PSF", n)
        flux_err = _col(cat, "FLUXERR_PSF", n)
        failed = ~np.isfinite(flux) | (flux == 0) | ~np.isfinite(xpsf) | ~np.isfinite(ypsf)
        flags[failed] |= SourceFlag.NOT_CONVERGED
        flux = np.where(failed, np.nan, flux)
        flux_err = np.where(failed, np.nan, flux_err)
        x = np.where(failed, xwin, xpsf)
        y = np.where(failed, ywin, ypsf)
        mag = _mag(_col(cat, "MAG_PSF", n))
        mag_err = np.where(np.isfinite(mag), _col(cat, "MAGERR_PSF", n), np.nan)
    else:
        x, y, flux, flux_err = xwin, ywin, flux_auto, fluxerr_auto
        mag = _mag(_col(cat, "MAG_AUTO", n))
        mag_err = np.where(np.isfinite(mag), _col(cat, "MAGERR_AUTO", n), np.nan)
    if "IMAFLAGS_ISO" in cat.colnames:
        flags[np.asarray(cat["IMAFLAGS_ISO"]) != 0] |= SourceFlag.MASKED_PIXELS
    flags[pixels_near(bad, x, y, mask_radius)] |= SourceFlag.MASKED_PIXELS

    columns: dict[str, object] = {"mag": mag, "mag_err": mag_err}
    if wcs is not None and n:
        ra, dec = wcs.celestial.pixel_to_world_values(x, y)
        columns["ra"] = np.asarray(ra, dtype=float) * u.deg
        columns["dec"] = np.asarray(dec, dtype=float) * u.deg
    mag_auto = _mag(_col(cat, "MAG_AUTO", n))
    columns.update({
        "flux_auto": flux_auto, "fluxerr_auto": fluxerr_auto,
        "mag_auto": mag_auto,
        "magerr_auto": np.where(np.isfinite(mag_auto), _col(cat, "MAGERR_AUTO", n), np.nan),
    })
    for k, radius in enumerate(radii):
        label = aperture_label(radius)
        mag_k = _mag(_aper(cat, "MAG_APER", n, k))
        columns[f"flux_aper_{label}"] = _aper(cat, "FLUX_APER", n, k)
        columns[f"fluxerr_aper_{label}"] = _aper(cat, "FLUXERR_APER", n, k)
        columns[f"mag_aper_{label}"] = mag_k
        columns[f"magerr_aper_{label}"] = np.where(
            np.isfinite(mag_k), _aper(cat, "MAGERR_APER", n, k), np.nan)
    if psf:
        mag_psf = _mag(_col(cat, "MAG_PSF", n))
        columns.update({
            "flux_psf": flux, "fluxerr_psf": flux_err, "mag_psf": mag_psf,
            "magerr_psf": np.where(np.isfinite(mag_psf), _col(cat, "MAGERR_PSF", n), np.nan),
            "chi2_psf": _col(cat, "CHI2_PSF", n),
            "niter_psf": _col(cat, "NITER_PSF", n, dtype=np.int32),
        })
    columns.update({
        "x_win": xwin, "y_win": ywin,
        "fwhm": _col(cat, "FWHM_IMAGE", n),
        "ellipticity": _col(cat, "ELLIPTICITY", n),
        "class_star": _col(cat, "CLASS_STAR", n),
        "snr_win": _col(cat, "SNR_WIN", n),
        "background": _col(cat, "BACKGROUND", n),
        "flags_raw": raw.astype(np.int32),
        "flags_win": _col(cat, "FLAGS_WIN", n, dtype=np.int32),
    })
    for name in extra_params:
        base = param_base(name)
        if base in cat.colnames:
            columns[f"sex_{base}"] = np.asarray(cat[base])
    ids = _col(cat, "NUMBER", n, dtype=np.int64) if n else None
    table = SourceTable.build(x, y, flux, flux_err, flags, ids=ids, meta=meta or {},
                              **columns)
    _units(table)
    return table


def _units(table: Table) -> None:
    for name in table.colnames:
        if name in ("x", "y", "x_win", "y_win", "fwhm"):
            table[name].unit = u.pix
        elif name.startswith(("mag", "magerr")):
            table[name].unit = u.mag
        elif name.startswith(("flux", "fluxerr")) or name == "background":
            table[name].unit = u.adu
