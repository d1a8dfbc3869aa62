"""Photometric errors of frames whose camera gain is unknown, measured from the night.

Why: many obs.info entries cannot give a gain (MicroObservatory's headers and
operators do not), so the photometry engines assume one (1 e/ADU, or none at all for
SExtractor's GAIN 0) and every star's photon noise is wrong by that factor: light
curves get error bars several times too large or too small. A night of frames
measures the gain itself: the comparison stars are constant, so the scatter of each
one's relative light curve is its true noise. Each measurement's variance splits
into the part the engine did not tie to the gain (sky, read noise: ``err^2 - flux /
g_assumed``) and the star's photon noise ``flux / g``; over the comparison stars

    var(rel_j) = A_j + B_j / g + c,   A_j = <rest / flux^2>,  B_j = <1 / flux>,

is linear in ``1/g`` and a floor ``c`` of noise proportional to the flux that the
ensemble does not divide out (scintillation, flat-field residue, the ensemble's own
noise). A non-negative fit of the two gives the gain; the errors of the unknown-gain
frames are then rebuilt with both (the two trade off a little against each other,
the variance they predict does not). Frames whose gain is known keep their errors.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

MAD = 1.4826
MIN_STARS = 5


def gain_from_scatter(flux, flux_err, rel, comps, assumed_gain, unknown):
    """Fit ``1/g`` and the floor on the comparison stars; None when it cannot be done.

    ``flux``, ``flux_err``, ``rel``: frames x sources; ``comps``: comparison indices;
    ``assumed_gain``: per frame, the gain the engine used (0: no photon term);
    ``unknown``: per frame, True where the camera's gain is not known.
    """
    g_all = np.asarray(assumed_gain, float)
    rows = np.asarray(unknown, bool) & np.isfinite(g_all)
    inv_all = np.where(g_all > 0, 1.0 / np.where(g_all > 0, g_all, 1.0), 0.0)
    comps = np.asarray(comps, int)
    if rows.sum() < 10 or comps.size < MIN_STARS:
        return None
    inv0 = inv_all[rows][:, None]
    f, e, r = flux[rows][:, comps], flux_err[rows][:, comps], rel[rows][:, comps]
    ok = np.isfinite(f) & np.isfinite(e) & np.isfinite(r) & (f > 0)
    rest = np.clip(e**2 - f * inv0, 0.0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = r / np.nanmedian(np.where(ok, r, np.nan), axis=0)
        a_j = np.nanmedian(np.where(ok, rest / f**2, np.nan), axis=0)
        b_j = np.nanmedian(np.where(ok, 1.0 / f, np.nan), axis=0)
    v_j = np.array([(MAD * np.nanmedian(np.abs(c[k] - np.nanmedian(c[k])))) ** 2
                    for c, k in zip(norm.T, ok.T)])
    good = np.isfinite(v_j) & np.isfinite(a_j) & np.isfinite(b_j) & (ok.sum(axis=0) >= 10)
    if good.sum() < MIN_STARS:
        return None
    w = 1.0 / v_j[good]                    # relative errors of variances are alike
    design = np.column_stack([b_j[good], np.ones(good.sum())]) * w[:, None]
    (inv_gain, floor), _ = nnls(design, (v_j[good] - a_j[good]) * w)
    predicted = a_j[good] + b_j[good] * inv_gain + floor
    return {"gain": float(1.0 / inv_gain) if inv_gain > 0 else float("inf"),
            "inv_gain": float(inv_gain), "floor": float(np.sqrt(floor)),
            "n_stars": int(good.sum()), "n_frames": int(rows.sum()),
            "scatter_vs_model": float(np.median(np.sqrt(v_j[good] / predicted))),
            "rows": rows, "assumed_inv": inv_all}


def rebuilt_errors(flux, flux_err, fit) -> np.ndarray:
    """Flux errors of the unknown-gain frames with the measured gain and floor; others
    as given."""
    rows, inv0 = fit["rows"], fit["assumed_inv"][:, None]
    rest = np.clip(flux_err**2 - flux * inv0, 0.0, None)
    positive = np.clip(flux, 0.0, None)
    new = np.sqrt(rest + positive * fit["inv_gain"] + (fit["floor"] * positive) ** 2)
    return np.where(rows[:, None], new, flux_err)
