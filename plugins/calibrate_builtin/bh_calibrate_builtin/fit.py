"""Weighted robust zero-point (and colour-term) fit with an intrinsic scatter term.

Why: catalogue and instrumental errors alone rarely explain the residuals of a
calibration (flat-field errors, colour mismatch, catalogue systematics), so the
weights ``1/(sigma_i^2 + s^2)`` carry an extra scatter ``s`` chosen so that the
reduced chi-square of the kept stars is 1 (zero when the errors already explain
them). Without it bright stars get absurd weight and the quoted errors are too
small. Outliers (variables, blends, bad matches) are rejected iteratively at
``clip`` standard deviations of the full error, starting from a median/MAD
solution so a few wild points cannot steer the first pass.

Model: ``y = m_cat - m_inst = zp + c * (colour - pivot)``. The pivot (median
colour of the stars) makes ``zp`` and ``c`` nearly uncorrelated; the zero point
at colour 0 is derived with its full covariance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAD_TO_SIGMA = 1.4826


@dataclass
class FitResult:
    zp: float                      # at the pivot colour
    zp_err: float
    c: float                       # colour term (fixed value when not fitted)
    c_err: float | None            # None when the colour term was fixed
    cov: float                     # cov(zp, c) at the pivot (0 when fixed)
    pivot: float
    intrinsic: float               # s, mag
    chi2_red: float
    scatter: float                 # rms of the kept residuals, mag
    used: np.ndarray               # bool mask over the input stars
    residuals: np.ndarray          # y - model, every input star
    iterations: int
    notes: dict = field(default_factory=dict)

    @property
    def zp0(self) -> float:
        """Zero point at colour 0."""
        return self.zp - self.c * self.pivot

    @property
    def zp0_err(self) -> float:
        if self.c_err is None:
            return self.zp_err
        var = self.zp_err**2 + (self.pivot * self.c_err) ** 2 - 2 * self.pivot * self.cov
        return float(np.sqrt(max(var, 0.0)))


def intrinsic_scatter(resid, sigma, n_par: int) -> float:
    """The ``s >= 0`` that makes ``sum(r^2/(sigma^2+s^2)) = n - n_par``."""
    dof = resid.size - n_par
    if dof <= 0:
        return 0.0
    r2, v = resid**2, sigma**2

    def excess(s):
        return float(np.sum(r2 / (v + s * s)) - dof)

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, max(float(np.sqrt(np.max(r2))), 1e-6)
    while excess(hi) > 0:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _wls(y, x, w, fit_colour: bool, c_fixed: float):
    """Weighted least squares; returns (zp, c, cov matrix or None-equivalent)."""
    if fit_colour:
        design = np.column_stack([np.ones_like(y), x])
        normal = design.T @ (design * w[:, None])
        try:
            cov = np.linalg.inv(normal)
        except np.linalg.LinAlgError:
            return None
        beta = cov @ (design.T @ (w * y))
        return beta[0], beta[1], cov
    yy = y - c_fixed * x
    zp = np.sum(w * yy) / np.sum(w)
    return zp, c_fixed, np.array([[1.0 / np.sum(w), 0.0], [0.0, 0.0]])


def robust_fit(y, sigma, colour=None, *, fit_colour: bool = True, c_fixed: float = 0.0,
               clip: float = 3.0, max_iter: int = 20, pivot: float | None = None
               ) -> FitResult:
    """Fit ``y = zp + c*(colour - pivot)`` with weights and iterative rejection.

    ``colour`` NaN is allowed when the colour term is fixed (the star sits at the
    pivot); rows with a NaN colour are dropped when fitting it.
    """
    y = np.asarray(y, float)
    sigma = np.asarray(sigma, float)
    colour = np.full(y.size, np.nan) if colour is None else np.asarray(colour, float)
    finite = np.isfinite(y) & np.isfinite(sigma) & (sigma > 0)
    if fit_colour:
        finite &= np.isfinite(colour)
    if pivot is None:
        good = finite & np.isfinite(colour)
        pivot = float(np.median(colour[good])) if good.any() else 0.0
    x = np.where(np.isfinite(colour), colour - pivot, 0.0)
    n_par = 2 if fit_colour else 1

    # robust start: median zero point, MAD scale, generous 5-sigma cut
    base = y - (0.0 if fit_colour else c_fixed * x)
    med = np.median(base[finite]) if finite.any() else 0.0
    mad = MAD_TO_SIGMA * np.median(np.abs(base[finite] - med)) if finite.any() else 0.0
    spread = np.sqrt(mad**2 + np.median(sigma[finite]) ** 2) if finite.any() else 1.0
    keep = finite & (np.abs(base - med) <= max(5.0 * spread, 1e-3))
    if fit_colour and keep.sum() > 2:
        # slope from the robust set before weighting, so a colour term does not
        # look like outliers in the first pass
        slope = np.polyfit(x[keep], y[keep], 1)
        resid0 = y - np.polyval(slope, x)
        med0 = np.median(resid0[keep])
        mad0 = MAD_TO_SIGMA * np.median(np.abs(resid0[keep] - med0))
        keep = finite & (np.abs(resid0 - med0) <= max(5.0 * np.hypot(mad0, np.median(
            sigma[finite])), 1e-3))

    s = 0.0
    it = 0
    zp, c, cov = med, c_fixed, np.zeros((2, 2))
    for it in range(1, max_iter + 1):
        if keep.sum() < n_par:
            break
        for _ in range(3):          # alternate weights and solution a few times
            w = 1.0 / (sigma[keep] ** 2 + s * s)
            sol = _wls(y[keep], x[keep], w, fit_colour, c_fixed)
            if sol is None:
                break
            zp, c, cov = sol
            resid_k = y[keep] - zp - c * x[keep]
            s = intrinsic_scatter(resid_k, sigma[keep], n_par)
        resid = y - zp - c * x
        z = resid / np.sqrt(sigma**2 + s * s)
        new_keep = finite & (np.abs(z) <= clip)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    w = 1.0 / (sigma[keep] ** 2 + s * s) if keep.any() else np.ones(0)
    sol = _wls(y[keep], x[keep], w, fit_colour, c_fixed) if keep.sum() >= n_par else None
    if sol is not None:
        zp, c, cov = sol
    resid = y - zp - c * x
    kept = resid[keep]
    dof = max(int(keep.sum()) - n_par, 1)
    chi2 = float(np.sum(kept**2 * w) / dof) if kept.size else float("nan")
    scatter = float(np.sqrt(np.sum(kept**2) / dof)) if kept.size else float("nan")
    return FitResult(zp=float(zp), zp_err=float(np.sqrt(cov[0, 0])), c=float(c),
                     c_err=float(np.sqrt(cov[1, 1])) if fit_colour else None,
                     cov=float(cov[0, 1]) if fit_colour else 0.0, pivot=float(pivot),
                     intrinsic=float(s), chi2_red=chi2, scatter=scatter, used=keep,
                     residuals=resid, iterations=it,
                     notes={"n_input": int(finite.sum())})


def limiting_magnitude(mag, snr, level: float = 5.0) -> tuple[float, str]:
    """Magnitude at S/N ``level`` from the faint end of the sources' mag-S/N relation.

    Fits ``log10(snr) = a + b*mag`` robustly to sources with 2 < S/N < 50 (the
    background-limited regime); falls back to the faintest source at or above
    ``level`` when too few faint sources exist.
    """
    mag, snr = np.asarray(mag, float), np.asarray(snr, float)
    ok = np.isfinite(mag) & np.isfinite(snr) & (snr > 0)
    sel = ok & (snr > 2.0) & (snr < 50.0)
    if sel.sum() >= 6:
        m, ls = mag[sel], np.log10(snr[sel])
        keep = np.ones(m.size, bool)
        for _ in range(5):
            b, a = np.polyfit(m[keep], ls[keep], 1)
            r = ls - (a + b * m)
            mad = MAD_TO_SIGMA * np.median(np.abs(r[keep])) + 1e-6
            new = np.abs(r) < 3.0 * mad
            if new.sum() < 6 or np.array_equal(new, keep):
                break
            keep = new
        if b < 0:
            return float((np.log10(level) - a) / b), "fit of log S/N vs mag (2 < S/N < 50)"
    bright = ok & (snr >= level)
    if bright.any():
        return float(np.max(mag[bright])), f"faintest source with S/N >= {level:g}"
    return float("nan"), "no source reaches the S/N level"
