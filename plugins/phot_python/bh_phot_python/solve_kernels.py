"""Compiled loops of the simultaneous fit: normal equations, group solves, sky.

Weights are the inverse model variance of each pixel (sky and read noise plus the
Poisson noise of all the star light there); residuals are data minus sky minus
every star. Pair blocks couple stars whose fit boxes overlap; each group (a
connected set of overlapping stars) is solved as one small dense system.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _weight(model, varsky, bad, gain_inv, Y, X):
    if bad[Y, X]:
        return 0.0
    m = model[Y, X]
    if m < 0.0:
        m = 0.0
    return 1.0 / (varsky[Y, X] + m * gain_inv)


@njit(cache=True)
def normal_diag(sel, bx, by, fs, hf, foff, fP, fPx, fPy, dsub, model, varsky, bad,
                gain_inv, D, g, chi2, npix, skyc):
    """Per-star 3x3 normal blocks, gradient, chi^2, pixel count and sky cross terms.

    Residuals are ``dsub - model`` (data minus sky minus every star); weights are the
    inverse of the model variance (sky and read noise plus the stars' Poisson noise).
    """
    H, W = dsub.shape
    for jj in prange(sel.size):
        i = sel[jj]
        ix = bx[i]
        iy = by[i]
        F = hf[i]
        SF = 2 * F + 1
        f = fs[i]
        d00 = d01 = d02 = d11 = d12 = d22 = 0.0
        g0 = g1 = g2 = 0.0
        s0 = s1 = s2 = 0.0
        c2 = 0.0
        n = 0
        for a in range(-F, F + 1):
            Y = iy + a
            if Y < 0 or Y >= H:
                continue
            for b in range(-F, F + 1):
                X = ix + b
                if X < 0 or X >= W:
                    continue
                w = _weight(model, varsky, bad, gain_inv, Y, X)
                if w == 0.0:
                    continue
                k = foff[i] + (a + F) * SF + (b + F)
                j0 = fP[k]
                j1 = f * fPx[k]
                j2 = f * fPy[k]
                r = dsub[Y, X] - model[Y, X]
                d00 += w * j0 * j0
                d01 += w * j0 * j1
                d02 += w * j0 * j2
                d11 += w * j1 * j1
                d12 += w * j1 * j2
                d22 += w * j2 * j2
                g0 += w * j0 * r
                g1 += w * j1 * r
                g2 += w * j2 * r
                s0 += w * j0
                s1 += w * j1
                s2 += w * j2
                c2 += w * r * r
                n += 1
        D[i, 0, 0] = d00
        D[i, 0, 1] = d01
        D[i, 1, 0] = d01
        D[i, 0, 2] = d02
        D[i, 2, 0] = d02
        D[i, 1, 1] = d11
        D[i, 1, 2] = d12
        D[i, 2, 1] = d12
        D[i, 2, 2] = d22
        g[i, 0] = g0
        g[i, 1] = g1
        g[i, 2] = g2
        skyc[i, 0] = s0
        skyc[i, 1] = s1
        skyc[i, 2] = s2
        chi2[i] = c2
        npix[i] = n


@njit(cache=True)
def normal_pairs(pi, pj, bx, by, fs, hf, foff, fP, fPx, fPy, model, varsky, bad,
                 gain_inv, Bk):
    """3x3 coupling blocks sum(w J_i J_j^T) over the overlap of two fit boxes."""
    H, W = model.shape
    for q in prange(pi.size):
        i = pi[q]
        j = pj[q]
        ixi = bx[i]
        iyi = by[i]
        ixj = bx[j]
        iyj = by[j]
        Fi = hf[i]
        Fj = hf[j]
        x0 = max(ixi - Fi, ixj - Fj, 0)
        x1 = min(ixi + Fi, ixj + Fj, W - 1)
        y0 = max(iyi - Fi, iyj - Fj, 0)
        y1 = min(iyi + Fi, iyj + Fj, H - 1)
        acc = np.zeros((3, 3))
        fi = fs[i]
        fj = fs[j]
        for Y in range(y0, y1 + 1):
            for X in range(x0, x1 + 1):
                w = _weight(model, varsky, bad, gain_inv, Y, X)
                if w == 0.0:
                    continue
                ki = foff[i] + (Y - iyi + Fi) * (2 * Fi + 1) + (X - ixi + Fi)
                kj = foff[j] + (Y - iyj + Fj) * (2 * Fj + 1) + (X - ixj + Fj)
                a0 = fP[ki]
                a1 = fi * fPx[ki]
                a2 = fi * fPy[ki]
                b0 = fP[kj]
                b1 = fj * fPx[kj]
                b2 = fj * fPy[kj]
                acc[0, 0] += w * a0 * b0
                acc[0, 1] += w * a0 * b1
                acc[0, 2] += w * a0 * b2
                acc[1, 0] += w * a1 * b0
                acc[1, 1] += w * a1 * b1
                acc[1, 2] += w * a1 * b2
                acc[2, 0] += w * a2 * b0
                acc[2, 1] += w * a2 * b1
                acc[2, 2] += w * a2 * b2
        for a in range(3):
            for b in range(3):
                Bk[q, a, b] = acc[a, b]


@njit(cache=True)
def group_sky_terms(order, gstart, bx, by, hf, model, dsub, varsky, bad, gain_inv,
                    claim, out):
    """Per group: sum of weights, of weighted residuals and pixel count over the
    union of its members' fit boxes (each pixel once). ``claim`` is scratch (-1)."""
    H, W = model.shape
    for G in range(gstart.size - 1):
        sw = 0.0
        sr = 0.0
        n = 0
        for m in range(gstart[G], gstart[G + 1]):
            i = order[m]
            ix = bx[i]
            iy = by[i]
            F = hf[i]
            for Y in range(max(iy - F, 0), min(iy + F, H - 1) + 1):
                for X in range(max(ix - F, 0), min(ix + F, W - 1) + 1):
                    if claim[Y, X] == G:
                        continue
                    claim[Y, X] = G
                    w = _weight(model, varsky, bad, gain_inv, Y, X)
                    sw += w
                    sr += w * (dsub[Y, X] - model[Y, X])
                    n += 1
        out[G, 0] = sw
        out[G, 1] = sr
        out[G, 2] = n
    # release the claims for the next call
    for G in range(gstart.size - 1):
        for m in range(gstart[G], gstart[G + 1]):
            i = order[m]
            ix = bx[i]
            iy = by[i]
            F = hf[i]
            for Y in range(max(iy - F, 0), min(iy + F, H - 1) + 1):
                for X in range(max(ix - F, 0), min(ix + F, W - 1) + 1):
                    claim[Y, X] = -1


@njit(cache=True)
def solve_groups(order, gstart, D, g, pstart, pi, pj, Bk, npar, lam, want_cov,
                 sky_on, skyc, gsky, delta, cov, gdelta):
    """Solve each group's damped normal equations (dense; groups are small).

    ``npar`` is 3 (flux, x, y) or 1 (flux only: forced photometry). With ``sky_on``
    a constant sky offset per group is a free parameter (last unknown). Writes the
    step per star into ``delta`` (n, 3), the group sky step into ``gdelta`` and,
    with ``want_cov``, each star's marginal covariance block into ``cov`` (n, 3, 3).
    """
    n = D.shape[0]
    loc = np.full(n, -1, np.int64)
    for G in range(gstart.size - 1):
        k = gstart[G + 1] - gstart[G]
        ns = 1 if sky_on else 0
        N = npar * k + ns
        M = np.zeros((N, N))
        rhs = np.zeros(N)
        for m in range(k):
            i = order[gstart[G] + m]
            loc[i] = m
            for a in range(npar):
                rhs[npar * m + a] = g[i, a]
                for b in range(npar):
                    M[npar * m + a, npar * m + b] = D[i, a, b]
                if sky_on:
                    M[npar * m + a, N - 1] = skyc[i, a]
                    M[N - 1, npar * m + a] = skyc[i, a]
        if sky_on:
            M[N - 1, N - 1] = gsky[G, 0]
            rhs[N - 1] = gsky[G, 1]
        for q in range(pstart[G], pstart[G + 1]):
            li = loc[pi[q]]
            lj = loc[pj[q]]
            for a in range(npar):
                for b in range(npar):
                    M[npar * li + a, npar * lj + b] = Bk[q, a, b]
                    M[npar * lj + b, npar * li + a] = Bk[q, a, b]
        # Jacobi scaling keeps the solve well conditioned; dead rows become identity
        scale = np.zeros(N)
        for d in range(N):
            if M[d, d] > 0.0:
                scale[d] = 1.0 / math.sqrt(M[d, d])
        Ms = np.empty((N, N))
        for a in range(N):
            for b in range(N):
                Ms[a, b] = M[a, b] * scale[a] * scale[b]
            if scale[a] == 0.0:
                Ms[a, a] = 1.0
        Md = Ms.copy()
        for d in range(N):
            Md[d, d] += lam
        rs = rhs * scale
        sol = np.linalg.solve(Md, rs)
        for m in range(k):
            i = order[gstart[G] + m]
            for a in range(npar):
                delta[i, a] = sol[npar * m + a] * scale[npar * m + a]
        if sky_on:
            gdelta[G] = sol[N - 1] * scale[N - 1]
        if want_cov:
            inv = np.linalg.inv(Ms)
            for m in range(k):
                i = order[gstart[G] + m]
                for a in range(npar):
                    for b in range(npar):
                        da = npar * m + a
                        db = npar * m + b
                        cov[i, a, b] = inv[da, db] * scale[da] * scale[db]
        for m in range(k):
            loc[order[gstart[G] + m]] = -1


@njit(cache=True)
def paint_group_sky(order, gstart, bx, by, hf, gsky, img):
    """img[union of each group's fit boxes] = that group's sky offset."""
    H, W = img.shape
    for G in range(gstart.size - 1):
        s = gsky[G]
        for m in range(gstart[G], gstart[G + 1]):
            i = order[m]
            ix = bx[i]
            iy = by[i]
            F = hf[i]
            for Y in range(max(iy - F, 0), min(iy + F, H - 1) + 1):
                for X in range(max(ix - F, 0), min(ix + F, W - 1) + 1):
                    img[Y, X] = s


@njit(cache=True)
def box_stats(sel, xs, ys, bx, by, fs, hf, foff, fP, fPx, fPy, dsub, model, varsky, bad,
              flagimg, gain_inv, rmax, out):
    """Per star: width-excess projection and pixel flags within ``rmax``.

    The template T = -2 P + dx dP/dx0 + dy dP/dy0 is the derivative of the profile
    with respect to the log of its width, so sum(w T r) / (f sum(w T^2)) is the
    fractional width excess the residuals ask for (positive: broader than the PSF,
    a galaxy or a blend; negative: sharper, a cosmic ray or hot pixel).
    out[i] = (numerator, denominator, flag bits OR-ed over ``flagimg`` within rmax).
    """
    H, W = dsub.shape
    for jj in prange(sel.size):
        i = sel[jj]
        ix = bx[i]
        iy = by[i]
        F = hf[i]
        SF = 2 * F + 1
        num = 0.0
        den = 0.0
        bits = 0
        for a in range(-F, F + 1):
            Y = iy + a
            if Y < 0 or Y >= H:
                continue
            for b in range(-F, F + 1):
                X = ix + b
                if X < 0 or X >= W:
                    continue
                dx = X - xs[i]
                dy = Y - ys[i]
                if dx * dx + dy * dy <= rmax[i] * rmax[i]:
                    bits |= flagimg[Y, X]
                w = _weight(model, varsky, bad, gain_inv, Y, X)
                if w == 0.0:
                    continue
                k = foff[i] + (a + F) * SF + (b + F)
                t = -2.0 * fP[k] + dx * fPx[k] + dy * fPy[k]
                num += w * t * (dsub[Y, X] - model[Y, X])
                den += w * t * t * fs[i]
        out[i, 0] = num
        out[i, 1] = den
        out[i, 2] = bits
