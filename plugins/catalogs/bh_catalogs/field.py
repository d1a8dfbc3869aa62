"""Helpers for stages that need a reference catalogue for a frame (astrometry, calibration).

``pointing`` reads where a raw header says the telescope pointed, ``field_cone``
gives the cone that covers a frame, ``main_magnitude`` a catalogue's main band.
``load_reference`` (a chain of catalogue backends through the plugin hooks, so the
offline Tycho-2 default takes over when the archive cannot be reached) and
``frame_epoch`` live in ``bhcore.refcat`` and are re-exported here.
"""
from __future__ import annotations

import math

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from bhcore.refcat import DEFAULT_CHAIN, frame_epoch, load_reference  # noqa: F401 (re-export)

from .common import CatalogUnavailable

RA_KEYS = ("RA", "OBJCTRA", "RA_OBJ", "TELRA", "CRVAL1")
DEC_KEYS = ("DEC", "OBJCTDEC", "DEC_OBJ", "TELDEC", "CRVAL2")


def _angle(value, hours: bool) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float, np.floating)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        from astropy.coordinates import Angle
        return Angle(text, unit=u.hourangle if hours else u.deg).deg
    except Exception:
        return None


def pointing(frame) -> SkyCoord | None:
    """Telescope pointing from the header (RA/DEC, OBJCTRA/OBJCTDEC, ...), or None.

    Sexagesimal RA is read in hours, a plain number in degrees.
    """
    for ra_key, dec_key in zip(RA_KEYS, DEC_KEYS):
        ra = _angle(frame.lookup(ra_key), hours=True)
        dec = _angle(frame.lookup(dec_key), hours=False)
        if ra is not None and dec is not None and -90 <= dec <= 90:
            return SkyCoord(ra % 360.0 * u.deg, dec * u.deg)
    return None


def field_cone(shape, wcs=None, center: SkyCoord | None = None,
               pixel_scale_arcsec: float | None = None, margin_deg: float = 0.0):
    """(centre, radius) of a cone that covers the frame plus ``margin_deg``."""
    ny, nx = shape
    if wcs is not None:
        corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], float)
        mid = wcs.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0)
        edge = wcs.pixel_to_world(corners[:, 0], corners[:, 1])
        radius = float(np.max(mid.separation(edge).deg))
        return SkyCoord(mid.ra, mid.dec), radius + margin_deg
    if center is None or not pixel_scale_arcsec:
        raise CatalogUnavailable("cannot place the frame on the sky: no WCS, and no pointing "
                                 "or pixel scale")
    radius = 0.5 * math.hypot(nx, ny) * pixel_scale_arcsec / 3600.0
    return center, radius + margin_deg


def main_magnitude(table) -> np.ndarray:
    """The magnitude column a catalogue names as its main band (NaN if none)."""
    band = table.meta.get("mag_band")
    if band and band in table.colnames:
        return np.asarray(table[band], dtype=float)
    for name in ("G", "V", "VT", "R", "r", "mag"):
        if name in table.colnames:
            return np.asarray(table[name], dtype=float)
    return np.full(len(table), np.nan)
