"""Forced photometry: PSF fluxes at given positions (pixel or sky), positions held.

Typical use: measure a target list (variables, a reference catalogue) on every
frame of a night at the same sky positions, including where a star is too faint to
be detected (a flux consistent with zero, or negative, is a valid answer). In a
crowded field the detected neighbours are fitted at the same time, so their light
does not leak into the targets.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from astropy.table import Table

from bhcore.errors import PhotometryError
from bhcore.tables import SourceTable

from .engine import Config, prepare, run
from .fitting import FitOptions, Fitter, Stars


def _pixel_positions(frame, positions):
    """(x, y) 0-based pixels from an (n, 2) array, a SkyCoord or a Table."""
    try:
        from astropy.coordinates import SkyCoord
    except ImportError:  # pragma: no cover - astropy is a core dependency
        SkyCoord = ()
    if isinstance(positions, Table):
        cols = set(positions.colnames)
        if {"x", "y"} <= cols:
            return np.asarray(positions["x"], float), np.asarray(positions["y"], float)
        if {"ra", "dec"} <= cols:
            positions = SkyCoord(np.asarray(positions["ra"], float),
                                 np.asarray(positions["dec"], float), unit="deg")
        else:
            raise PhotometryError("forced positions need columns x, y or ra, dec")
    if SkyCoord and isinstance(positions, SkyCoord):
        if frame.wcs is None:
            raise PhotometryError("sky positions need a frame with a WCS",
                                  path=getattr(frame, "path", None))
        x, y = frame.wcs.world_to_pixel(positions)
        return np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    arr = np.atleast_2d(np.asarray(positions, float))
    if arr.shape[-1] != 2:
        raise PhotometryError("forced positions must be (n, 2) pixel x, y pairs")
    return arr[:, 0].copy(), arr[:, 1].copy()


def _first_guess(ctx, x, y, fwhm, psf):
    """Flux in a 1.5 FWHM aperture over the PSF's share of light there (>= 0)."""
    import sep
    from .detection import _native
    if x.size == 0:
        return np.zeros(0)
    r = 1.5 * float(np.median(fwhm))
    flux, _, _ = sep.sum_circle(_native(ctx.dsub), x, y, r,
                                mask=_native(ctx.bad, np.uint8), subpix=5)
    s, _, _, beta = psf.shape_at(x, y)
    if psf.kind == "moffat":
        ee = 1.0 - (1.0 + (r / s) ** 2) ** (1.0 - beta)
    else:
        ee = 1.0 - np.exp(-0.5 * (r / s) ** 2)
    return np.clip(np.asarray(flux, float) / np.clip(ee, 0.2, 1.0), 0.0, None)


def forced_photometry(frame, positions, settings: Mapping[str, Any] | None = None, *,
                      neighbours="detect", psf=None) -> SourceTable:
    """PSF photometry with positions held at ``positions``.

    ``positions``: (n, 2) 0-based pixel (x, y), an astropy SkyCoord (needs
    ``frame.wcs``) or a Table with x, y or ra, dec. ``settings``: as for the plugin
    (``gain``, ``saturation`` ... and the Settings fields); GAIN and SATURATE are
    taken from the header when absent. ``neighbours``: "detect" (run the full
    measurement first and fit every detected star together with the targets), None
    (targets only), or a SourceTable with x, y, flux of other stars. ``psf``: a
    :class:`~bh_phot_python.psf.PSFModel` to use instead of building one.
    Returns a SourceTable in the order of ``positions`` (``id`` 1..n); stars off the
    detector get NaN fluxes and the NEAR_EDGE flag. Fluxes may be negative.
    """
    from . import Settings
    from .catalog import build_table
    merged = Settings().model_dump()
    merged.update(dict(settings or {}))
    header = getattr(frame, "header", {}) or {}
    for key, card in (("gain", "GAIN"), ("saturation", "SATURATE")):
        if merged.get(key) is None and card in header:
            merged[key] = float(header[card])
    cfg = Config.from_settings(merged)
    x, y = _pixel_positions(frame, positions)
    n = x.size
    ny, nx = np.shape(frame.data)
    inside = (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    report = {"mode": "forced", "n_targets": int(n)}
    if neighbours == "detect" or psf is None:
        stars, fitter, ctx, found_psf, run_report = run(frame, cfg)
        report["detection"] = run_report
        psf = psf or found_psf
        if psf is None:
            raise PhotometryError("no star found to model the PSF from",
                                  path=getattr(frame, "path", None))
        if neighbours == "detect":
            live = stars.alive
            neighbours = Table({"x": stars.x[live], "y": stars.y[live],
                                "flux": stars.f[live]})
        else:
            neighbours = None
    else:
        ctx = prepare(frame, cfg)
    fwhm = psf.fwhm_at(x, y)
    nbx = nby = nbf = np.zeros(0)
    if neighbours is not None and len(neighbours):
        nbx = np.asarray(neighbours["x"], float)
        nby = np.asarray(neighbours["y"], float)
        nbf = np.asarray(neighbours["flux"], float)
        if n:
            from scipy.spatial import cKDTree
            d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([nbx, nby]))
            keep = d > np.median(fwhm)
            nbx, nby, nbf = nbx[keep], nby[keep], nbf[keep]
    ti = np.flatnonzero(inside)
    start = _first_guess(ctx, x[ti], y[ti], fwhm[ti], psf)
    stars = Stars.new(np.concatenate([x[ti], nbx]), np.concatenate([y[ti], nby]),
                      np.concatenate([start, np.maximum(nbf, 1.0)]))
    opts = FitOptions(fit_positions=False, fit_sky=cfg.fit_sky, drop_snr=-np.inf,
                      merge_fwhm=0.0, allow_negative=True,
                      fit_radius=(1.5, cfg.fit_radius_fwhm))
    fitter = Fitter(ctx.scene(psf), stars, opts)
    fitter.run()
    fitter.finish()
    keep = np.zeros(len(stars.x), bool)
    keep[:ti.size] = True
    inner = build_table(frame, fitter.stars, fitter, ctx, psf, cfg, report, keep)
    table = SourceTable.build(x, y, np.full(n, np.nan), np.full(n, np.nan),
                              np.full(n, 2, np.int32), meta=inner.meta)
    for name in inner.colnames:
        if name in ("id", "x", "y"):
            continue
        col = np.asarray(inner[name])
        full = np.full((n,) + col.shape[1:], np.nan if col.dtype.kind == "f" else 0,
                       dtype=col.dtype if col.dtype.kind in "fi" else float)
        full[ti] = col
        if name == "flags":
            full[~inside] = 2     # SourceFlag.NEAR_EDGE: off the detector
        table[name] = full
    table.meta["forced"] = True
    return table
