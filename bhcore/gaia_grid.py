"""The Gaia grid (stage 4): refine a WCS against a reference catalogue at the frame epoch.

Why: engine solutions (SCAMP, astrometry.net) are tied to whatever catalogue they
had; the astrometric time series needs every frame tied to the same grid (Gaia DR3
propagated to the frame epoch) with a distortion model that suits the field, and a
per-source error that combines the centroid error with the fit's own uncertainty.

The fit is our own weighted least squares in the tangent plane: standard
coordinates (xi, eta) as full polynomials of the pixel offsets from the frame
centre; the linear part becomes CD, the higher orders become SIP A/B (inverse
AP/BP fitted on a grid), and the constant part moves CRVAL. The polynomial order is
the one with the lowest BIC among those the field size and the star count allow.
Where the reference stars cover only part of the frame (a deep catalogue on the
central third of a wide frame), the fit is extrapolated over the rest: the notes
say by how much (``extrapolation_ratio``). No order cap by coverage: measured, the
BIC already keeps such fits linear when the stars cannot fix more (EY UMa), and a
cap would throw away a distortion that precise stars do fix (a cubic measured on
the central 40% of a frame at 0.03 px noise extrapolates to 0.04-0.16"; capped at
a quadratic, 0.31").
Any catalogue table with ``ra, dec`` (and optionally ``ra_err, dec_err`` in mas)
works; the catalogue backends deliver them already at the frame epoch.
``refine_frame`` is the stage entry: it fetches the reference through the catalogue
hooks (``load_reference``: Gaia, then the offline Tycho-2) and refines. With
``merge`` (the astrometry backends' ``catalog_merge`` setting) every catalogue of the
chain that answers is used at once (``refcat.merge_catalogs``): offline, a deep catalogue
on the centre of a frame plus a shallow one over all of it. The
astrometry backends share ``match_catalog`` and ``check_solution`` from here, and
``write_products`` writes the frame copy, the matched stars and the QA cards.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.wcs import WCS, Sip
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.spatial import cKDTree

from .errors import AstrometryNotSolved
from .refcat import DEFAULT_CHAIN, frame_epoch, load_reference, unit_vectors as _unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridSolution:
    """A refined WCS, its quality, the matched stars and every source's sky position."""

    wcs: WCS
    order: int
    n_stars: int
    rms_arcsec: float
    matches: Table
    sources: Table
    notes: dict[str, Any] = field(default_factory=dict)


# --- small geometry helpers ------------------------------------------------------------
def pixel_scale_arcsec(wcs: WCS) -> float:
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def _tangent(crval) -> WCS:
    """A TAN WCS whose 'pixels' are standard coordinates in degrees (origin 1 = centre)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cd = np.eye(2)
    return w


def match_catalog(x, y, wcs: WCS, ra, dec, radius_arcsec: float):
    """One-to-one nearest matches of pixel sources to catalogue stars within a radius.

    Returns (source index, catalogue index, separation arcsec); a catalogue star
    claimed by several sources goes to the nearest.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0 or len(ra) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    sra, sdec = wcs.all_pix2world(x, y, 0)
    tree = cKDTree(_unit(np.asarray(ra, float), np.asarray(dec, float)))
    chord = 2 * math.sin(math.radians(radius_arcsec / 3600.0) / 2)
    dist, idx = tree.query(_unit(sra, sdec), k=1, distance_upper_bound=chord)
    ok = np.isfinite(dist)
    src, ref, d = np.flatnonzero(ok), idx[ok], dist[ok]
    order = np.argsort(d)
    _, first = np.unique(ref[order], return_index=True)
    keep = np.sort(order[first])
    sep = np.degrees(2 * np.arcsin(d[keep] / 2)) * 3600.0
    return src[keep], ref[keep], sep


def wcs_error_rms(wcs_true: WCS, wcs_test: WCS, shape, step: int = 32) -> float:
    """RMS (arcsec) over a pixel grid of the sky separation between two WCS."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny:step, 0:nx:step]
    xx, yy = xx.ravel().astype(float), yy.ravel().astype(float)
    a = np.column_stack(wcs_true.all_pix2world(xx, yy, 0))
    b = np.column_stack(wcs_test.all_pix2world(xx, yy, 0))
    chord = np.linalg.norm(_unit(a[:, 0], a[:, 1]) - _unit(b[:, 0], b[:, 1]), axis=1)
    sep = np.degrees(2 * np.arcsin(np.clip(chord / 2, 0, 1))) * 3600.0   # exact for tiny angles
    return float(np.sqrt(np.mean(sep**2)))


# --- the polynomial fit ----------------------------------------------------------------
def _terms(order: int):
    return [(p, q) for total in range(order + 1) for p in range(total, -1, -1)
            for q in [total - p]]


def _design(u, v, order):
    return np.column_stack([u**p * v**q for p, q in _terms(order)])


def choose_max_order(field_deg: float, n_stars: int) -> int:
    """Highest polynomial order allowed by the field size and the number of stars."""
    by_field = 3 if field_deg < 0.25 else 4 if field_deg < 1.0 else 5
    by_stars = 0
    for order in range(1, 6):
        need = 4 if order == 1 else math.ceil(2.5 * len(_terms(order)))
        if n_stars >= need:
            by_stars = order
    return min(by_field, by_stars)


def extrapolation_ratio(x, y, shape, order: int, weights=None) -> float:
    """How much less well a polynomial fit of ``order`` to stars at (x, y) is known over
    the whole frame than at the stars themselves (a QA number of the refinement).

    The RMS over a 16x16 grid spanning the frame of the fit's standard error, divided
    by its RMS at the stars (both from the normal matrix with these ``weights``, so the
    noise level cancels). Stars spread over the frame give about 1 at every order;
    stars on part of it give a ratio that grows quickly with the order (EY UMa,
    RefCat2 on the central third: 1.9 for a linear fit, 6.7 for a quadratic, 23 for a
    cubic). Infinite when the stars cannot fix the order.
    """
    ny, nx = shape
    half = 0.5 * max(nx, ny)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    u, v = (np.asarray(x, float) - cx) / half, (np.asarray(y, float) - cy) / half
    w = np.ones(len(u)) if weights is None else np.asarray(weights, float)
    A = _design(u, v, order)
    if len(u) < A.shape[1]:
        return math.inf
    normal = (A * w[:, None]).T @ A
    if not np.all(np.isfinite(normal)) or np.linalg.cond(normal) > 1e12:
        return math.inf
    cov = np.linalg.inv(normal)
    gy, gx = np.meshgrid(np.linspace(0, ny - 1, 16), np.linspace(0, nx - 1, 16), indexing="ij")
    G = _design((gx.ravel() - cx) / half, (gy.ravel() - cy) / half, order)
    frame_var = float(np.mean(np.einsum("ij,jk,ik->i", G, cov, G)))
    star_var = float(np.mean(np.einsum("ij,jk,ik->i", A, cov, A)))
    return math.sqrt(frame_var / max(star_var, 1e-300))


@dataclass
class _Fit:
    order: int
    crval: tuple
    coef_xi: np.ndarray
    coef_eta: np.ndarray
    cov_xi: np.ndarray
    cov_eta: np.ndarray
    resid: np.ndarray          # (n, 2) arcsec
    bic: float


def _fit_poly(u, v, ra, dec, sigma_deg, order, crval, iterations=3) -> _Fit:
    """Weighted LSQ of standard coordinates on pixel offsets; CRVAL absorbs the constant."""
    crval = tuple(crval)
    weights = 1.0 / np.maximum(sigma_deg, 1e-9)
    A = _design(u, v, order)
    for _ in range(iterations):
        xi, eta = _tangent(crval).all_world2pix(ra, dec, 1)
        Aw = A * weights[:, None]
        cx = np.linalg.lstsq(Aw, xi * weights, rcond=None)[0]
        ce = np.linalg.lstsq(Aw, eta * weights, rcond=None)[0]
        new = _tangent(crval).all_pix2world([[cx[0], ce[0]]], 1)[0]
        crval = (float(new[0]), float(new[1]))
        if math.hypot(cx[0], ce[0]) * 3600.0 < 1e-7:
            break
    xi, eta = _tangent(crval).all_world2pix(ra, dec, 1)
    Aw = A * weights[:, None]
    cx = np.linalg.lstsq(Aw, xi * weights, rcond=None)[0]
    ce = np.linalg.lstsq(Aw, eta * weights, rcond=None)[0]
    cx[0] = ce[0] = 0.0                                  # absorbed in CRVAL
    resid = np.column_stack([xi - A @ cx, eta - A @ ce]) * 3600.0
    n, k = len(u), A.shape[1]
    dof = max(2 * n - 2 * k, 1)
    chi2 = float(np.sum((resid / 3600.0 * weights[:, None]) ** 2))
    normal = np.linalg.pinv(Aw.T @ Aw)
    scale = max(chi2 / dof, 1.0)                          # errors never below the scatter
    rss = float(np.sum(resid**2))
    bic = 2 * n * math.log(max(rss, 1e-30) / (2 * n)) + 2 * k * math.log(2 * n)
    return _Fit(order, crval, cx, ce, normal * scale, normal * scale, resid, bic)


def _fit_to_wcs(fit: _Fit, centre0, shape) -> WCS:
    """The TAN(-SIP) WCS of a fit: CD from the linear terms, SIP from the higher ones."""
    terms = _terms(fit.order)
    lin = {t: i for i, t in enumerate(terms)}
    cd = np.array([[fit.coef_xi[lin[(1, 0)]], fit.coef_xi[lin[(0, 1)]]],
                   [fit.coef_eta[lin[(1, 0)]], fit.coef_eta[lin[(0, 1)]]]])
    w = WCS(naxis=2)
    w.wcs.crpix = [centre0[0] + 1.0, centre0[1] + 1.0]
    w.wcs.crval = list(fit.crval)
    w.wcs.cd = cd
    w.wcs.radesys = "ICRS"
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.pixel_shape = (shape[1], shape[0])
    if fit.order < 2:
        return w
    inv = np.linalg.inv(cd)
    a = np.zeros((fit.order + 1, fit.order + 1))
    b = np.zeros_like(a)
    for i, (p, q) in enumerate(terms):
        if p + q >= 2:
            a[p, q], b[p, q] = inv @ np.array([fit.coef_xi[i], fit.coef_eta[i]])
    ny, nx = shape
    uu, vv = np.meshgrid(np.linspace(-0.55 * nx, 0.55 * nx, 31),
                         np.linspace(-0.55 * ny, 0.55 * ny, 31))
    uu, vv = uu.ravel(), vv.ravel()
    fu = sum(a[p, q] * uu**p * vv**q for p, q in terms if p + q >= 2)
    fv = sum(b[p, q] * uu**p * vv**q for p, q in terms if p + q >= 2)
    U, V = uu + fu, vv + fv
    inv_order = fit.order + 1
    inv_terms = [t for t in _terms(inv_order) if sum(t) >= 1]
    design = np.column_stack([U**p * V**q for p, q in inv_terms])
    ca = np.linalg.lstsq(design, uu - U, rcond=None)[0]
    cb = np.linalg.lstsq(design, vv - V, rcond=None)[0]
    ap = np.zeros((inv_order + 1, inv_order + 1))
    bp = np.zeros_like(ap)
    for (p, q), va, vb in zip(inv_terms, ca, cb):
        ap[p, q], bp[p, q] = va, vb
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
    return w


# --- the refinement --------------------------------------------------------------------
def centroid_sigma_px(sources: Table) -> np.ndarray:
    """Per-source centroid error (px): x_err/y_err when given, else FWHM/(2.3548 SNR)*sqrt(2)."""
    n = len(sources)
    if {"x_err", "y_err"} <= set(sources.colnames):
        sig = np.hypot(np.asarray(sources["x_err"], float),
                       np.asarray(sources["y_err"], float)) / math.sqrt(2)
    else:
        flux = np.asarray(sources["flux"], float)
        ferr = np.asarray(sources["flux_err"], float)
        fwhm = (np.asarray(sources["fwhm"], float) if "fwhm" in sources.colnames
                else np.full(n, 3.0))
        fwhm = np.where(np.isfinite(fwhm) & (fwhm > 0), fwhm, 3.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(ferr > 0, flux / ferr, np.nan)
            sig = fwhm / 2.3548 * math.sqrt(2.0) / snr
    return np.clip(np.nan_to_num(sig, nan=0.5, posinf=0.5), 0.002, 2.0)


def refine_wcs(wcs: WCS, sources: Table, reference: Table, shape, *, order: int | None = None,
               max_order: int | None = None, match_radius_arcsec: float | None = None,
               clip: float = 4.0, iterations: int = 4, min_stars: int = 6,
               catalog: str = "") -> GridSolution:
    """Refine ``wcs`` by matching ``sources`` (0-based x, y) to ``reference`` (ra, dec).

    ``wcs`` should be a solution good to a few pixels (an engine's). Each round
    matches within a radius (the first one generous, then cut at 4x the median
    separation against chance pairs), fits every allowed order (lowest BIC wins; the
    first round is linear), rejects stars whose residual exceeds ``clip`` times its
    error (centroid, catalogue, and a systematic floor shared by all stars, see
    ``_floor``: blends, PSF asymmetries, saturation, seeing) and refits; the next round
    matches with the new WCS in a radius that only shrinks. Raises AstrometryNotSolved
    when fewer than ``min_stars`` stars remain.
    """
    ny, nx = shape
    centre0 = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    scale = pixel_scale_arcsec(wcs)
    field_deg = math.hypot(nx, ny) * scale / 3600.0
    radius = match_radius_arcsec or max(5.0 * scale, 3.0)
    x, y = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
    ref_ra, ref_dec = np.asarray(reference["ra"], float), np.asarray(reference["dec"], float)
    ref_sig = np.zeros(len(reference))        # mas; unknown errors go into the fitted floor
    if "ra_err" in reference.colnames and "dec_err" in reference.colnames:
        ref_sig = np.hypot(np.nan_to_num(np.asarray(reference["ra_err"], float), nan=0.0),
                           np.nan_to_num(np.asarray(reference["dec_err"], float), nan=0.0))
        ref_sig = ref_sig / math.sqrt(2)
    cen_sig = centroid_sigma_px(sources)
    current, fit, floor = wcs, None, 0.0
    for round_ in range(iterations):
        si, ri, sep = match_catalog(x, y, current, ref_ra, ref_dec, radius)
        keep = np.ones(len(si), bool)
        if round_ == 0 and len(sep) >= min_stars:    # a generous first radius catches
            keep = sep <= max(4.0 * float(np.median(sep)), 0.5 * scale, 1.0)  # chance pairs
        for _inner in range(4):
            if keep.sum() < min_stars:
                raise AstrometryNotSolved(f"Gaia grid: only {int(keep.sum())} stars match "
                                          f"within {radius:.2f}\" (need {min_stars})")
            s_i, r_i = si[keep], ri[keep]
            sig_arcsec = np.hypot(cen_sig[s_i] * scale, ref_sig[r_i] / 1000.0)
            top = order or min(max_order or 99, choose_max_order(field_deg, len(s_i)))
            candidates = [order] if order else [1] if round_ == 0 else range(1, max(top, 1) + 1)
            start = _centre_sky(current, centre0)
            fit = min((_fit_poly(x[s_i] - centre0[0], y[s_i] - centre0[1], ref_ra[r_i],
                                 ref_dec[r_i], np.hypot(sig_arcsec, floor) / 3600.0, k, start)
                       for k in candidates), key=lambda f: f.bic)
            r2 = np.sum(fit.resid**2, axis=1)
            floor = _floor(r2, sig_arcsec, 2 * len(s_i) - 2 * len(_terms(fit.order)))
            bad = r2 > clip**2 * 2 * (sig_arcsec**2 + floor**2)
            if not bad.any():
                break
            keep[np.flatnonzero(keep)[bad]] = False
        current = _fit_to_wcs(fit, centre0, shape)
        radius = min(radius, max(clip * math.sqrt(2) * float(np.median(np.hypot(sig_arcsec,
                                                                                 floor))),
                                 0.5 * scale, 0.2))
    si, ri, sep = match_catalog(x, y, current, ref_ra, ref_dec, radius)
    sig_all = np.hypot(np.hypot(cen_sig[si] * scale, ref_sig[ri] / 1000.0), floor)
    used = sep**2 <= clip**2 * 2 * sig_all**2
    matches = Table({"source_index": si, "x": x[si], "y": y[si], "ref_index": ri,
                     "ref_ra": ref_ra[ri], "ref_dec": ref_dec[ri], "sep_arcsec": sep,
                     "used": used})
    out = _sources_with_sky(sources, current, fit, centre0, np.hypot(cen_sig * scale, floor))
    notes = {"order": fit.order, "bic": fit.bic, "n_matched": int(len(si)),
             "field_deg": field_deg, "match_radius_arcsec": radius,
             "systematic_floor_arcsec": floor, "catalog": catalog,
             "extrapolation_ratio": extrapolation_ratio(
                 x[si[used]], y[si[used]], shape, fit.order, 1.0 / sig_all[used]**2)}
    return GridSolution(current, fit.order, int(used.sum()), _rms(sep[used]), matches, out,
                        notes)


def check_solution(wcs: WCS, x, y, reference: Table, *, min_matches: int, max_rms_arcsec: float,
                   backend: str, path=None, mags=None) -> tuple[Table, float]:
    """Cross-match sources (0-based x, y) with a solved WCS; refuse a bad solution.

    Engines can exit cleanly with a wrong cross-identification, so every backend
    checks here: fewer than ``min_matches`` stars or an RMS above ``max_rms_arcsec``
    raises AstrometryNotSolved. Blends and chance pairs (beyond 3.6 x the median
    separation) are left out of the RMS. Returns (matched-star table, RMS arcsec).
    """
    scale = pixel_scale_arcsec(wcs)
    x, y = np.asarray(x, float), np.asarray(y, float)
    si, ri, sep = match_catalog(x, y, wcs, reference["ra"], reference["dec"],
                                max(3.0 * scale, 2.0))
    if len(sep) >= 5:
        keep = sep <= max(3.0 * 1.2 * float(np.median(sep)), 0.5 * scale)
        si, ri, sep = si[keep], ri[keep], sep[keep]
    rms = _rms(sep)
    if len(sep) < min_matches:
        raise AstrometryNotSolved(f"only {len(sep)} stars match the reference "
                                  f"(need {min_matches})", path=path, backend=backend)
    if not rms <= max_rms_arcsec:
        raise AstrometryNotSolved(f"RMS {rms:.3f}\" over {len(sep)} stars exceeds "
                                  f"{max_rms_arcsec:.3f}\"", path=path, backend=backend)
    ra, dec = wcs.all_pix2world(x[si], y[si], 0)
    mags = np.full(len(reference), np.nan) if mags is None else np.asarray(mags, float)
    matches = Table({"source_index": si, "x": x[si], "y": y[si], "ra": ra, "dec": dec,
                     "ref_ra": np.asarray(reference["ra"], float)[ri],
                     "ref_dec": np.asarray(reference["dec"], float)[ri],
                     "ref_mag": mags[ri], "sep_arcsec": sep})
    return matches, rms


FLOOR_CAP = 9.0        # normalised residuals count up to this (chi-square, 2 axes)


def _floor(r2, sigma, dof) -> float:
    """Extra per-axis error (arcsec) shared by every star, so that the normalised
    residuals ``r2 / (sigma**2 + floor**2)`` (chi-square with 2 degrees of freedom)
    have their expected mean, each star weighted by ``1 / (sigma**2 + floor**2)``.

    The weighting matters: quoted centroid errors are often far too small for bright
    (or saturated) stars and too large for faint ones; an unweighted median then sits
    among the faint stars, finds no floor, and the bright stars, the ones that would
    dominate the fit, are rejected or given absurd weights. Weighted, the stars that
    carry the fit set the floor. Each normalised residual counts up to ``FLOOR_CAP``
    (its expected mean is lowered to match), so false matches and blends cannot
    inflate the floor that decides which stars are rejected.
    """
    if len(r2) == 0:
        return 0.0
    shrink = max(dof, 1) / max(2 * len(r2), 1)                     # the fit shrinks residuals
    expected = 2.0 * (1.0 - math.exp(-FLOOR_CAP / 2.0)) * shrink    # E[min(chi2_2, cap)]

    def excess(extra):
        var = sigma**2 + extra**2
        return float(np.sum((np.minimum(r2 / np.maximum(var, 1e-30), FLOOR_CAP * shrink)
                             - expected) / np.maximum(var, 1e-30)))

    if excess(0.0) <= 0.0:
        return 0.0
    lo, hi = 0.0, float(np.sqrt(np.max(r2))) + 1e-6
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0.0 else (lo, mid)
    return hi


def _rms(values) -> float:
    values = np.asarray(values, float)
    return float(np.sqrt(np.mean(values**2))) if len(values) else float("nan")


def _centre_sky(wcs: WCS, centre0):
    ra, dec = wcs.all_pix2world([[centre0[0], centre0[1]]], 0)[0]
    return float(ra), float(dec)


def _sources_with_sky(sources: Table, wcs: WCS, fit: _Fit, centre0, pos_sig) -> Table:
    """Sources plus ra, dec and their 1-sigma errors (arcsec): position (+) fit."""
    out = Table(sources, copy=True)
    x, y = np.asarray(out["x"], float), np.asarray(out["y"], float)
    ra, dec = wcs.all_pix2world(x, y, 0)
    A = _design(x - centre0[0], y - centre0[1], fit.order)
    var_xi = np.einsum("ij,jk,ik->i", A, fit.cov_xi, A) * 3600.0**2
    var_eta = np.einsum("ij,jk,ik->i", A, fit.cov_eta, A) * 3600.0**2
    out["ra"], out["dec"] = ra, dec
    out["ra_err_arcsec"] = np.sqrt(pos_sig**2 + var_xi)
    out["dec_err_arcsec"] = np.sqrt(pos_sig**2 + var_eta)
    return out


def refine_frame(frame, wcs: WCS, sources: Table, *, reference: Table | None = None,
                 catalogs=DEFAULT_CHAIN, settings=None, per_catalog=None, merge: bool = False,
                 margin_deg: float = 0.02, **options) -> GridSolution:
    """Stage 4 for one frame: the first catalogue of ``catalogs`` that answers (Gaia DR3,
    then the offline Tycho-2), or with ``merge`` all that answer, at the frame epoch,
    then ``refine_wcs``."""
    name = "given"
    if reference is None:
        ny, nx = frame.shape
        mid = wcs.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0)
        corners = wcs.pixel_to_world([0, nx - 1, 0, nx - 1], [0, 0, ny - 1, ny - 1])
        radius = float(np.max(mid.separation(corners).deg)) + margin_deg
        reference, name, _attempts = load_reference(
            SkyCoord(mid.ra, mid.dec), radius, frame_epoch(frame), catalogs, settings,
            obs=frame.obs, per_catalog=per_catalog, merge=merge)
    return refine_wcs(wcs, sources, reference, frame.shape,
                      catalog=str(reference.meta.get("catalog", name)), **options)


# --- products --------------------------------------------------------------------------
def qa_cards(result, attempts=None) -> dict[str, Any]:
    """Header cards of a solved WCS and its QA (RMS, matches, backend, catalogue, attempts)."""
    cards: dict[str, Any] = {}
    if result.wcs is not None:
        cards.update(result.wcs.to_header(relax=True))
    rms = float(result.rms_arcsec) if math.isfinite(result.rms_arcsec) else -1.0
    cards["ASTRBACK"] = (result.backend, "astrometry backend that solved the frame")
    cards["ASTRCAT"] = (str(result.catalog)[:68], "astrometric reference catalogue")
    cards["ASTRNMAT"] = (int(result.n_matched), "stars matched to the reference")
    cards["ASTRRMS"] = (round(rms, 5), "[arcsec] astrometric RMS vs the reference")
    for i, (backend, said) in enumerate(attempts or (), start=1):
        cards[f"ASTRTR{i:02d}"] = (f"{backend}: {said}"[:68], "astrometry attempt")
    return cards


def write_products(frame, result, folder, stem: str, attempts=None) -> dict[str, Path]:
    """The frame with its final WCS (a copy), the matched-star table, both atomically."""
    from .frame import write_frame
    from .pipeline import write_table
    folder = Path(folder)
    header = frame.header.copy()
    for key in list(header):
        if key.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "PC1_", "PC2_", "CDELT",
                           "PV1_", "PV2_", "A_", "B_", "AP_", "BP_", "CUNIT", "WCSAXES",
                           "LONPOLE", "LATPOLE")):
            header.remove(key, ignore_missing=True, remove_all=True)
    header.update(qa_cards(result, attempts))
    products = {"frame": write_frame(frame.replace(header=header, wcs=result.wcs),
                                     folder / f"{stem}_wcs.fits")}
    if result.matches is not None:
        products["matches"] = write_table(result.matches, folder / f"{stem}_astrom_matches.ecsv")
    return products
