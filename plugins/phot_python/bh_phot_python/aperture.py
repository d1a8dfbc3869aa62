"""Aperture photometry with local sky, on the image with every *other* star removed,
and the aperture correction between PSF and aperture fluxes.

The aperture flux of star i is the sum over the aperture of (data - sky - all stars)
plus star i's own model in the aperture, i.e. the measurement on a frame where its
neighbours have been subtracted. The local sky is the mean of that residual image in
an annulus (sep). Errors include the sky noise, the star's and the subtracted
neighbours' Poisson noise, and the noise of the annulus mean.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .detection import _native

SUBPIX = 5


@njit(cache=True, parallel=True)
def own_light(sel, xs, ys, bx, by, hr, roff, rvals, radii, out):
    """out[i, k] = sum of star i's unit-flux render box inside a circle of radii[k]
    around (x, y), boundary pixels subsampled SUBPIX x SUBPIX (as sep does)."""
    nr = radii.size
    step = 1.0 / SUBPIX
    for jj in prange(sel.size):
        i = sel[jj]
        ix = bx[i]
        iy = by[i]
        R = hr[i]
        S = 2 * R + 1
        for k in range(nr):
            out[i, k] = 0.0
        for a in range(-R, R + 1):
            dy = iy + a - ys[i]
            for b in range(-R, R + 1):
                dx = ix + b - xs[i]
                p = rvals[roff[i] + (a + R) * S + (b + R)]
                d = math.sqrt(dx * dx + dy * dy)
                for k in range(nr):
                    r = radii[k]
                    if d < r - 0.7072:
                        out[i, k] += p
                    elif d < r + 0.7072:
                        cnt = 0
                        for u in range(SUBPIX):
                            yy = dy - 0.5 + (u + 0.5) * step
                            for v in range(SUBPIX):
                                xx = dx - 0.5 + (v + 0.5) * step
                                if xx * xx + yy * yy < r * r:
                                    cnt += 1
                        out[i, k] += p * cnt / (SUBPIX * SUBPIX)


@njit(cache=True, inline="always")
def _overlap(dx, dy, d, r):
    """Fraction of the pixel centred at offset (dx, dy) inside a circle of radius r."""
    if d < r - 0.7072:
        return 1.0
    if d > r + 0.7072:
        return 0.0
    step = 1.0 / SUBPIX
    cnt = 0
    for u in range(SUBPIX):
        yy = dy - 0.5 + (u + 0.5) * step
        for v in range(SUBPIX):
            xx = dx - 0.5 + (v + 0.5) * step
            if xx * xx + yy * yy < r * r:
                cnt += 1
    return cnt / (SUBPIX * SUBPIX)


@njit(cache=True, parallel=True)
def _aperture_sums(resid, model, varsky, ginv, bad, xs, ys, radii, r_in, r_out,
                   sums, vsum, area, ann):
    """Per star: residual sum, variance sum and good area in each aperture, and the
    same three in the sky annulus (ann[:, 0..2]); masked pixels are left out."""
    ny, nx = resid.shape
    nr = radii.size
    for i in prange(xs.size):
        x0 = xs[i]
        y0 = ys[i]
        R = r_out + 1.0
        for Y in range(max(0, int(math.floor(y0 - R))),
                       min(ny, int(math.ceil(y0 + R)) + 1)):
            dy = Y - y0
            for X in range(max(0, int(math.floor(x0 - R))),
                           min(nx, int(math.ceil(x0 + R)) + 1)):
                if bad[Y, X]:
                    continue
                dx = X - x0
                d = math.sqrt(dx * dx + dy * dy)
                if d > r_out + 0.7072:
                    continue
                val = resid[Y, X]
                var = varsky[Y, X] + max(model[Y, X], 0.0) * ginv
                for k in range(nr):
                    frac = _overlap(dx, dy, d, radii[k])
                    if frac > 0.0:
                        sums[i, k] += frac * val
                        vsum[i, k] += frac * var
                        area[i, k] += frac
                frac = _overlap(dx, dy, d, r_out) - _overlap(dx, dy, d, r_in)
                if frac > 0.0:
                    ann[i, 0] += frac * val
                    ann[i, 1] += frac * var
                    ann[i, 2] += frac


def aperture_photometry(resid, model, varsky, gain_inv, bad, x, y, own, radii, annulus):
    """Fluxes, errors (n, nr) and the local sky offset (n,) from the residual image.

    ``own`` (n, nr): each star's model light inside each aperture (flux * own_light).
    The variance of a pixel is the sky's plus the Poisson noise of all star light.
    """
    n, nr = x.size, len(radii)
    sums = np.zeros((n, nr))
    vsum = np.zeros((n, nr))
    area = np.zeros((n, nr))
    ann = np.zeros((n, 3))
    if n == 0:
        return sums, vsum, np.zeros(0)
    _aperture_sums(_native(resid), _native(model), _native(varsky), float(gain_inv),
                   np.ascontiguousarray(bad, dtype=np.bool_), np.asarray(x, float),
                   np.asarray(y, float), np.asarray(radii, float), float(annulus[0]),
                   float(annulus[1]), sums, vsum, area, ann)
    ann_area = np.maximum(ann[:, 2], 1.0)
    local = ann[:, 0] / ann_area
    flux = sums - local[:, None] * area + own
    ferr = np.sqrt(np.maximum(vsum + area ** 2 * (ann[:, 1] / ann_area ** 2)[:, None], 0.0))
    return flux, ferr, local


def aperture_correction(psf_flux, psf_err, ap_flux, ap_err, good, radii):
    """Median PSF/aperture flux ratio per radius over clean bright stars."""
    out = {}
    for k, r in enumerate(radii):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = psf_flux / ap_flux[:, k]
            snr = ap_flux[:, k] / ap_err[:, k]
        ok = good & np.isfinite(ratio) & (snr > 50) & (ratio > 0)
        if ok.sum() < 3:
            ok = good & np.isfinite(ratio) & (snr > 10) & (ratio > 0)
        if ok.sum() < 3:
            continue
        vals = ratio[ok]
        med = float(np.median(vals))
        err = float(1.2533 * 1.4826 * np.median(np.abs(vals - med)) / np.sqrt(vals.size))
        out[f"{r:g}"] = {"flux_ratio": round(med, 6), "flux_ratio_err": round(err, 6),
                         "mag": round(-2.5 * np.log10(med), 5), "n_stars": int(vals.size)}
    return out
