"""Ensemble differential photometry and variability statistics.

Why an ensemble: transparency, extinction and exposure changes dim every star of a
frame by the same factor; dividing by a weighted mean of many comparison stars
removes that factor with far less noise than one comparison star. Comparison stars
are chosen automatically (well measured in nearly every frame, unflagged, not
excluded) and weighted by their own stability: the inverse variance from each
star's errors, inflated by how much more its light curve scatters against the
ensemble of the others (leave-one-out) than the errors of both predict, so a
quietly variable comparison star loses its weight and is dropped once it stands
out, while the brightest star, whose scatter is mostly the others' noise, is kept.

Statistics per source, on the relative light curve in magnitudes: weighted mean,
rms against the expected rms (from the errors), reduced chi-square, and Stetson's
J index from consecutive pairs (Stetson 1996), which responds to variability
correlated in time and not to single outliers. A source is flagged variable when
both J and chi-square exceed thresholds set robustly from the population (median
+ k MAD) and never below their white-noise expectation (z sigma), so systematics
common to all stars raise the bar instead of flagging everything.
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
from astropy.table import Table

MAD = 1.4826
MAG_PER_FLUX = 2.5 / math.log(10.0)


def quiet(func):
    """Silence numpy's warnings about empty or all-NaN slices: NaN is the answer."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            return func(*args, **kwargs)
    return wrapper


def _mad(values) -> float:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(MAD * np.median(np.abs(v - np.median(v)))) if v.size else float("nan")


@quiet
def choose_comparisons(flux, flux_err, flags=None, exclude=None, *, min_coverage=0.9,
                       min_snr=10.0, max_flagged=0.1, max_comp=50) -> np.ndarray:
    """Indices of candidate comparison stars, best measured first."""
    det = np.isfinite(flux) & np.isfinite(flux_err) & (flux > 0) & (flux_err > 0)
    coverage = det.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.nanmedian(np.where(det, flux / flux_err, np.nan), axis=0)
    ok = (coverage >= min_coverage) & (np.nan_to_num(snr) >= min_snr)
    if flags is not None:
        bad = np.where(det, np.asarray(flags) != 0, False).sum(axis=0)
        ok &= bad <= max_flagged * det.sum(axis=0)
    if exclude is not None:
        ok &= ~np.asarray(exclude, bool)
    idx = np.flatnonzero(ok)
    return idx[np.argsort(-snr[idx])][:max_comp]


@quiet
def ensemble(flux, flux_err, comps, *, n_iter: int = 6, reject: float = 5.0):
    """Relative fluxes of every star against a stability-weighted ensemble.

    Returns ``(rel, rel_err, info)``; ``info`` has the comparison indices kept, their
    weights and the ensemble per frame. ``rel`` of each star is normalised to its
    median; a comparison star is divided by the ensemble without itself.
    """
    flux = np.asarray(flux, float)
    err = np.asarray(flux_err, float)
    n_frames, n_src = flux.shape
    comps = np.asarray(comps, int)
    det = np.isfinite(flux) & np.isfinite(err) & (flux > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(det, flux / np.nanmedian(np.where(det, flux, np.nan), axis=0), np.nan)
        rerr = np.where(det, err / flux, np.nan)
    n_c = norm[:, comps]
    present = np.isfinite(n_c)
    own = np.nanmedian(rerr[:, comps], axis=0) ** 2
    inside = np.ones(comps.size, bool)
    weights = 1.0 / own
    for _ in range(n_iter):
        if inside.sum() < 2:
            break
        # every candidate against the ensemble of the others in it; those left out
        # are judged again each round, so a good star dropped while a variable one
        # (the target, say) still distorted the ensemble comes back once it is out
        w_in = np.where(inside, weights, 0.0)
        s = np.where(present, n_c, 0.0) @ w_in
        wsum = present.astype(float) @ w_in
        e_w = np.where(present, n_c * rerr[:, comps], 0.0) * w_in     # weighted abs errors
        loo_w = wsum[:, None] - w_in * present
        loo = (s[:, None] - np.where(present, n_c * w_in, 0.0)) / loo_w
        # the scatter against the others holds their noise too: judged by its own
        # error alone, the brightest star (whose scatter is mostly the others')
        # looked unstable and the best comparison star was dropped
        loo_var = ((e_w**2).sum(axis=1)[:, None] - e_w**2) / loo_w**2 / loo**2
        ratio = n_c / loo
        ratio /= np.nanmedian(ratio, axis=0)
        var = np.array([_mad(ratio[:, k]) ** 2 for k in range(comps.size)])
        expected = own + np.nanmedian(np.where(present, loo_var, np.nan), axis=0)
        excess = np.nan_to_num(var / expected, nan=np.inf)
        cut = max(np.median(excess[inside]) + reject * _mad(excess[inside]), 2.0)
        keep = excess <= cut
        new_w = 1.0 / (own * np.maximum(excess, 1.0))    # own error, inflated by any excess
        done = np.array_equal(keep, inside) and np.allclose(new_w[keep], weights[keep],
                                                            rtol=0.02)
        inside, weights = keep, new_w
        if done:
            break
    active, weights = comps[inside], weights[inside]
    info = {"comparisons": active, "weights": weights}
    if active.size == 0:
        nan = np.full_like(flux, np.nan)
        info["ensemble"] = np.full(n_frames, np.nan)
        return nan, nan, info
    n_c = norm[:, active]
    present = np.isfinite(n_c)
    s = np.where(present, n_c, 0.0) @ weights
    wsum = present.astype(float) @ weights
    with np.errstate(invalid="ignore", divide="ignore"):
        ens = s / wsum
        ens_var = (np.where(present, (n_c * rerr[:, active]) ** 2, 0.0) @ weights**2) / wsum**2
        ens_rel_var = ens_var / ens**2
        rel = norm / ens[:, None]
        rel_err2 = rerr**2 + ens_rel_var[:, None]
        # comparison stars against the ensemble without themselves
        for k, j in enumerate(active):
            pres = present[:, k]
            loo = (s - np.where(pres, n_c[:, k] * weights[k], 0.0)) / (wsum - weights[k] * pres)
            loo_var = (ens_var * wsum**2 - np.where(pres, (n_c[:, k] * rerr[:, j] * weights[k])
                                                    ** 2, 0.0)) / (wsum - weights[k] * pres) ** 2
            rel[:, j] = norm[:, j] / loo
            rel_err2[:, j] = rerr[:, j] ** 2 + loo_var / loo**2
        scale = np.nanmedian(rel, axis=0)
        rel = rel / scale
        rel_err = rel * np.sqrt(rel_err2)
    info["ensemble"] = ens
    return rel, rel_err, info


@quiet
def variability(rel, rel_err, times) -> Table:
    """Per-source statistics of relative light curves (columns of a Table)."""
    rel = np.asarray(rel, float)
    order = np.argsort(np.asarray(times, float), kind="stable")
    rel, rel_err = rel[order], np.asarray(rel_err, float)[order]
    n_src = rel.shape[1]
    out = {k: np.full(n_src, np.nan) for k in ("rms", "expected_rms", "chi2_red",
                                              "stetson_j", "j_noise", "amplitude")}
    out["n_obs"] = np.zeros(n_src, int)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = -2.5 * np.log10(rel)
        err = MAG_PER_FLUX * rel_err / rel
    for j in range(n_src):
        ok = np.isfinite(mag[:, j]) & np.isfinite(err[:, j]) & (err[:, j] > 0)
        n = int(ok.sum())
        out["n_obs"][j] = n
        if n < 3:
            continue
        m, e = mag[ok, j], err[ok, j]
        w = 1.0 / e**2
        mean = np.sum(w * m) / np.sum(w)
        out["rms"][j] = np.std(m, ddof=1)
        out["expected_rms"][j] = np.sqrt(np.mean(e**2))
        out["chi2_red"][j] = np.sum(((m - mean) / e) ** 2) / (n - 1)
        delta = math.sqrt(n / (n - 1)) * (m - mean) / e
        p = delta[:-1] * delta[1:]
        out["stetson_j"][j] = np.mean(np.sign(p) * np.sqrt(np.abs(p)))
        out["j_noise"][j] = math.sqrt(2.0 / (math.pi * (n - 1)))
        lo, hi = np.percentile(m, [5, 95])
        out["amplitude"][j] = hi - lo
    return Table(out)


@quiet
def flag_variables(stats: Table, *, k: float = 5.0, z: float = 4.0, min_obs: int = 5,
                   candidates=None) -> tuple[np.ndarray, dict]:
    """Variable flags and the thresholds used (see the module docstring).

    ``candidates`` (bool mask) limits the population the thresholds are set from
    (e.g. the well-measured stars); every source is then judged against them.
    """
    n = np.asarray(stats["n_obs"])
    j = np.asarray(stats["stetson_j"], float)
    chi = np.asarray(stats["chi2_red"], float)
    ok = (n >= min_obs) & np.isfinite(j) & np.isfinite(chi)
    pop = ok & (np.asarray(candidates, bool) if candidates is not None else True)
    if pop.sum() < 5:
        pop = ok
    if not pop.any():
        return np.zeros(len(stats), bool), {}
    j_pop = np.median(j[pop]) + k * _mad(j[pop])
    chi_pop = np.median(chi[pop]) + k * _mad(chi[pop])
    with np.errstate(divide="ignore", invalid="ignore"):
        j_white = z * np.sqrt(2.0 / (math.pi * np.maximum(n - 1, 1)))
        chi_white = 1.0 + z * np.sqrt(2.0 / np.maximum(n - 1, 1))
    j_crit = np.maximum(j_pop, j_white)
    chi_crit = np.maximum(chi_pop, chi_white)
    flags = ok & (j > j_crit) & (chi > chi_crit)
    return flags, {"j_population": float(j_pop), "chi2_population": float(chi_pop),
                   "k": k, "z": z}
