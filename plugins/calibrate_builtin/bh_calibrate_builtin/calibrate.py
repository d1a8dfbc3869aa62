"""Match a frame's sources to a reference catalogue and fit the calibration.

Why separate from the hook: the same function serves a live frame, a stored
catalogue re-calibrated months later (``reference`` read from the stored file)
and the tests, and it returns every matched star so plots and the results
database can show what the fit saw.

Instrumental magnitudes are ``-2.5 log10(flux)`` with the flux in ADU per exposure,
so the zero point is the magnitude of 1 ADU (the exposure time is inside it).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from bhcore import calibration_bands as cb
from bhcore.errors import CalibrationError
from bhcore.tables import CalibrationResult

from .fit import limiting_magnitude, robust_fit

MAG_PER_FLUX = 2.5 / math.log(10.0)


def instrumental(sources: Table) -> tuple[np.ndarray, np.ndarray]:
    """(m_inst, m_inst_err) from flux and flux_err; NaN for non-positive flux."""
    flux = np.asarray(sources["flux"], float)
    err = np.asarray(sources["flux_err"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        merr = np.where(flux > 0, MAG_PER_FLUX * err / flux, np.nan)
    return mag, merr


def auto_radius(settings: Mapping[str, Any]) -> float:
    """Match radius in arcsec: the setting, else 2 px (1.5"-10")."""
    given = settings.get("match_radius_arcsec")
    if given:
        return float(given)
    scale = settings.get("pixel_scale_arcsec") or 0.75
    return float(min(max(2.0 * float(scale), 1.5), 10.0))


def match(sources: Table, reference: Table, radius_arcsec: float):
    """One-to-one nearest matches within the radius: (source rows, ref rows, sep")."""
    ok = np.isfinite(np.asarray(sources["ra"], float)) & np.isfinite(
        np.asarray(sources["dec"], float))
    src_idx = np.flatnonzero(ok)
    if src_idx.size == 0 or len(reference) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    src = SkyCoord(np.asarray(sources["ra"], float)[ok] * u.deg,
                   np.asarray(sources["dec"], float)[ok] * u.deg)
    ref = SkyCoord(np.asarray(reference["ra"], float) * u.deg,
                   np.asarray(reference["dec"], float) * u.deg)
    j, sep, _ = src.match_to_catalog_sky(ref)
    sep = sep.arcsec
    close = sep <= radius_arcsec
    i, j, sep = src_idx[close], j[close], sep[close]
    order = np.argsort(sep)                  # nearest claim on a reference star wins
    _, first = np.unique(j[order], return_index=True)
    pick = order[first]
    return i[pick], j[pick], sep[pick]


def _column(table: Table, name: str) -> np.ndarray:
    if name not in table.colnames:
        return np.full(len(table), np.nan)
    return np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan)


def crowded(reference: Table, column: str, radius_arcsec: float) -> np.ndarray:
    """Reference stars with a neighbour within 2 match radii that is < 2.5 mag fainter."""
    n = len(reference)
    out = np.zeros(n, bool)
    if n < 2:
        return out
    coords = SkyCoord(_column(reference, "ra") * u.deg, _column(reference, "dec") * u.deg)
    i, j, _, _ = coords.search_around_sky(coords, 2.0 * radius_arcsec * u.arcsec)
    mags = _column(reference, column)
    pair = (i != j) & ~(mags[j] > mags[i] + 2.5)
    out[i[pair]] = True
    return out


def calibrate(sources: Table, reference: Table, settings: Mapping[str, Any], *,
              filter_name: str | None = None, backend: str = "", version: str = ""
              ) -> CalibrationResult:
    """Fit the calibration of ``sources`` against ``reference``; CalibrationError if unfit."""
    for name in ("ra", "dec", "flux", "flux_err"):
        if name not in sources.colnames:
            raise CalibrationError(f"the source table has no '{name}' column "
                                   "(calibration needs sky positions and fluxes)",
                                   backend=backend)
    radius = auto_radius(settings)
    try:
        choices = ([cb.BandChoice(settings["band"], "catalog", settings["band"],
                                  "band set in settings")] if settings.get("band") else
                   cb.candidates(filter_name, settings.get("bhtom_filter"),
                                 settings.get("band_map"), reference.colnames))
    except ValueError as exc:
        raise CalibrationError(str(exc), backend=backend) from None
    choices = [c for c in choices if c.column in reference.colnames]
    if not choices:
        raise CalibrationError(
            f"the reference catalogue has no band for filter '{filter_name}' "
            f"(BHTOM filter {settings.get('bhtom_filter')}); it has "
            f"{', '.join(b for b in reference.colnames if b in cb.COLOURS) or 'no magnitudes'}",
            backend=backend)
    m_inst, m_err = instrumental(sources)
    si, rj, sep = match(sources, reference, radius)
    flags = (np.asarray(sources["flags"], int) if "flags" in sources.colnames
             else np.zeros(len(sources), int))
    tried, errors = [], []
    for choice in choices:
        try:
            tried.append(_one_band(choice, sources, reference, settings, si, rj, sep,
                                   m_inst, m_err, flags, radius, backend, version))
        except CalibrationError as exc:
            errors.append(f"{choice.bhtom}: {exc.message}")
    if not tried:
        raise CalibrationError("; ".join(errors), backend=backend)
    best = min(tried, key=lambda r: r.scatter)
    if len(choices) > 1:
        best.notes["candidates"] = {r.notes["bhtom_band"]: round(r.scatter, 5) for r in tried}
        best.notes["candidates_failed"] = errors
    _finish(best, sources, m_inst, m_err, settings, radius)
    return best


def _one_band(choice, sources, reference, settings, si, rj, sep, m_inst, m_err, flags,
              radius, backend, version) -> CalibrationResult:
    col = choice.column
    pair = cb.colour_pair(col, reference.colnames, settings.get("color"))
    cat = _column(reference, col)[rj]
    cat_err = _column(reference, f"{col}_err")[rj]
    cat_err = np.where(np.isfinite(cat_err), cat_err,
                       float(settings.get("catalog_err_default", 0.03)))
    colour = (_column(reference, pair[0]) - _column(reference, pair[1]))[rj] if pair \
        else np.full(rj.size, np.nan)
    bad_flags = int(settings.get("exclude_flags", 31))
    usable = (np.isfinite(cat) & (cat_err <= float(settings.get("max_catalog_err", 0.3)))
              & np.isfinite(m_inst[si]) & ((flags[si] & bad_flags) == 0)
              & (m_err[si] <= float(settings.get("max_inst_err", 0.1))))
    lo, hi = settings.get("bright_limit"), settings.get("faint_limit")
    if lo is not None:
        usable &= cat >= float(lo)
    if hi is not None:
        usable &= cat <= float(hi)
    if settings.get("reject_crowded", True):
        usable &= ~crowded(reference, col, radius)[rj]
    n_min = int(settings.get("min_stars", 3))
    if usable.sum() < n_min:
        raise CalibrationError(
            f"only {int(usable.sum())} usable calibration star(s) matched within "
            f"{radius:.2f}\" (need at least {n_min}; {si.size} matched before quality cuts)",
            backend=backend)
    y = cat - m_inst[si]
    sig = np.hypot(cat_err, m_err[si])
    mode = settings.get("fit_color_term", "auto")
    have_colour = usable & np.isfinite(colour)
    span = (np.subtract(*np.percentile(colour[have_colour], [90, 10]))
            if have_colour.sum() >= 2 else 0.0)
    need = max(n_min + 2, 5)
    if mode == "never" or pair is None:
        fit_colour, status = False, ("fixed: no colour index in the catalogue" if pair is None
                                     else "fixed by settings")
    elif mode == "always" or (span >= float(settings.get("min_color_range", 0.3))
                              and have_colour.sum() >= need):
        fit_colour, status = True, "fitted"
        if have_colour.sum() < 3:
            fit_colour, status = False, "fixed: fewer than 3 stars with colours"
    else:
        fit_colour = False
        status = (f"fixed: colour range {span:.2f} mag < {settings.get('min_color_range', 0.3)}"
                  if have_colour.sum() >= need else
                  f"fixed: {int(have_colour.sum())} stars with colours (< {need})")
    sel = (have_colour if fit_colour else usable)
    fit = robust_fit(y[sel], sig[sel], colour[sel], fit_colour=fit_colour,
                     c_fixed=float(settings.get("color_term", 0.0)),
                     clip=float(settings.get("clip_sigma", 3.0)),
                     max_iter=int(settings.get("max_iter", 20)))
    n_cand = int(sel.sum())
    n_used = int(fit.used.sum())
    outlier_fraction = 1.0 - n_used / n_cand if n_cand else 1.0
    if n_used < n_min:
        raise CalibrationError(f"only {n_used} star(s) left after outlier rejection "
                               f"(need at least {n_min})", backend=backend)
    max_out = float(settings.get("max_outlier_fraction", 0.3))
    if outlier_fraction > max_out:
        raise CalibrationError(f"outlier fraction {outlier_fraction:.2f} exceeds "
                               f"{max_out:.2f} ({n_cand - n_used} of {n_cand} stars rejected)",
                               backend=backend)
    used_all = np.zeros(si.size, bool)
    used_all[np.flatnonzero(sel)[fit.used]] = True
    resid_all = y - (fit.zp + fit.c * (np.where(np.isfinite(colour), colour, fit.pivot)
                                       - fit.pivot))
    ids = np.asarray(sources["id"]) if "id" in sources.colnames else si + 1
    ref_ra, ref_dec = _column(reference, "ra")[rj], _column(reference, "dec")[rj]
    src_ra = np.asarray(sources["ra"], float)[si]
    src_dec = np.asarray(sources["dec"], float)[si]
    dra = ((src_ra - ref_ra + 180.0) % 360.0 - 180.0) * np.cos(np.radians(ref_dec)) * 3600.0
    ddec = (src_dec - ref_dec) * 3600.0
    stars = {"source_id": [int(v) for v in ids[si]], "row": [int(v) for v in si],
             "ra": _round(ref_ra, 7), "dec": _round(ref_dec, 7),
             "dra_arcsec": _round(dra, 3), "ddec_arcsec": _round(ddec, 3),
             "sep_arcsec": _round(sep, 3), "m_inst": _round(m_inst[si], 5),
             "m_inst_err": _round(m_err[si], 5), "m_cat": _round(cat, 5),
             "m_cat_err": _round(cat_err, 5), "colour": _round(colour, 5),
             "residual": _round(resid_all, 5), "candidate": [bool(v) for v in sel],
             "used": [bool(v) for v in used_all]}
    notes = {"bhtom_band": choice.bhtom, "survey": choice.survey, "band_reason": choice.reason,
             "color_index": f"{pair[0]}-{pair[1]}" if pair else None,
             "color_pivot": fit.pivot, "color_term_status": status,
             "color_range": float(span), "zero_point_at_pivot": fit.zp,
             "zero_point_at_pivot_err": fit.zp_err, "intrinsic_scatter": fit.intrinsic,
             "chi2_red": fit.chi2_red, "n_matched": int(si.size), "n_candidates": n_cand,
             "n_rejected": n_cand - n_used, "iterations": fit.iterations,
             "instrumental": "-2.5 log10(flux [ADU per exposure])",
             "model": "m_cat = m_inst + zero_point + color_term * colour", "stars": stars}
    return CalibrationResult(
        zero_point=fit.zp0, zero_point_err=fit.zp0_err, color_term=fit.c,
        color_term_err=fit.c_err, n_stars=n_used, outlier_fraction=float(outlier_fraction),
        scatter=fit.scatter, catalog=str(reference.meta.get("catalog", "reference")),
        band=col, backend=backend, match_radius_arcsec=float(radius),
        method_version=version, notes=notes)


def _round(values, digits):
    return [None if not np.isfinite(v) else round(float(v), digits)
            for v in np.asarray(values, float)]


def _finish(result: CalibrationResult, sources, m_inst, m_err, settings, radius) -> None:
    """Add the 5-sigma limiting magnitude and the target's magnitude or upper limit."""
    notes = result.notes
    zp_pivot = notes["zero_point_at_pivot"]
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.asarray(sources["flux"], float) / np.asarray(sources["flux_err"], float)
    mag = m_inst + zp_pivot
    level = float(settings.get("limit_snr", 5.0))
    notes["limiting_mag"], notes["limiting_mag_method"] = limiting_magnitude(mag, snr, level)
    notes["limiting_snr"] = level
    ra, dec = settings.get("target_ra"), settings.get("target_dec")
    if ra is None or dec is None:
        return
    target = {"ra": float(ra), "dec": float(dec)}
    ok = np.isfinite(np.asarray(sources["ra"], float)) & np.isfinite(mag)
    if ok.any():
        coords = SkyCoord(np.asarray(sources["ra"], float)[ok] * u.deg,
                          np.asarray(sources["dec"], float)[ok] * u.deg)
        seps = coords.separation(SkyCoord(float(ra) * u.deg, float(dec) * u.deg)).arcsec
        k = int(np.argmin(seps))
        if seps[k] <= radius:
            row = np.flatnonzero(ok)[k]
            colour = _target_colour(notes, row)
            value = mag[row] + result.color_term * (colour - notes["color_pivot"])
            target.update(detected=True, upper_limit=False, mag=float(value),
                          mag_err=float(np.hypot(m_err[row], notes["zero_point_at_pivot_err"])),
                          sep_arcsec=float(seps[k]), source_row=int(row))
            notes["target"] = target
            return
    faint = float(np.nanmax(mag[ok & (snr >= 3)])) if np.any(ok & (snr >= 3)) else float("nan")
    target.update(detected=False, upper_limit=True, mag=faint, mag_err=-1.0,
                  limit_rule="faintest detected object (BHTOM)",
                  limit_5sigma=notes["limiting_mag"])
    notes["target"] = target


def _target_colour(notes, row) -> float:
    stars = notes["stars"]
    if row in stars["row"]:
        value = stars["colour"][stars["row"].index(row)]
        if value is not None:
            return float(value)
    return float(notes["color_pivot"])
