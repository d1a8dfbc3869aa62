"""Compiled loops of the PSF model fit: per-star normal equations with shape terms.

Each PSF star is a square stamp. Its model is f * (P + T) + b, with P the analytic
pixel-integrated profile (quadratic form A, B, C and Moffat beta), T the optional
empirical residual table (held fixed here) and b a local sky offset. The kernel
returns, per star, J^T W J and J^T W r for the parameters
(f, x0, y0, b, A, B, C, beta), so the caller can chain them to the spatial
polynomial coefficients of the shape and solve the arrow-shaped system.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels import table_value

NPAR = 8


@njit(cache=True, inline="always")
def _pixel_full(kind, A, B, C, beta, norm, det, dx0, dy0, nodes, wts, out):
    """Pixel-integrated P, dP/dx0, dP/dy0, dP/dA, dP/dB, dP/dC, dP/dbeta into out."""
    for t in range(7):
        out[t] = 0.0
    m = nodes.shape[0]
    cA = C / (2.0 * det)
    cB = -B / (4.0 * det)
    cC = A / (2.0 * det)
    for a in range(m):
        dy = dy0 + nodes[a]
        for b in range(m):
            dx = dx0 + nodes[b]
            q = A * dx * dx + B * dx * dy + C * dy * dy
            lb = 0.0
            if kind == 0:
                base = 1.0 + q
                lb = math.log(base)
                f = math.exp(-beta * lb)
                g = beta * f / base
            else:
                f = math.exp(-0.5 * q)
                g = 0.5 * f
            w = wts[a] * wts[b]
            out[0] += w * f
            out[1] += w * g * (2.0 * A * dx + B * dy)
            out[2] += w * g * (B * dx + 2.0 * C * dy)
            out[3] += w * (cA * f - g * dx * dx)
            out[4] += w * (cB * f - g * dx * dy)
            out[5] += w * (cC * f - g * dy * dy)
            if kind == 0:
                out[6] += w * (f / (beta - 1.0) - lb * f)
    for t in range(7):
        out[t] *= norm


@njit(cache=True)
def psf_star_normals(ds, vs, bad, ox, oy, fl, xs, ys, bs, kind, A, B, C, beta,
                     n_in, w_in, n_out, w_out, r2_in, tab, tos, th, cw, gain_inv,
                     JTJ, JTr, chi2, npix, with_jac):
    """Normal equations of every PSF-star stamp (stamp origin at column ox, row oy)."""
    n, S, _ = ds.shape
    for i in prange(n):
        det = A[i] * C[i] - 0.25 * B[i] * B[i]
        if kind == 0:
            norm = (beta[i] - 1.0) / math.pi * math.sqrt(det)
        else:
            norm = math.sqrt(det) / (2.0 * math.pi)
        vals = np.zeros(7)
        jac = np.zeros(NPAR)
        acc = np.zeros((NPAR, NPAR))
        rhs = np.zeros(NPAR)
        c2 = 0.0
        cnt = 0
        for a in range(S):
            dy0 = oy[i] + a - ys[i]
            for b in range(S):
                if bad[i, a, b]:
                    continue
                dx0 = ox[i] + b - xs[i]
                if dx0 * dx0 + dy0 * dy0 < r2_in[i]:
                    _pixel_full(kind, A[i], B[i], C[i], beta[i], norm, det, dx0, dy0,
                                n_in, w_in, vals)
                else:
                    _pixel_full(kind, A[i], B[i], C[i], beta[i], norm, det, dx0, dy0,
                                n_out, w_out, vals)
                p = vals[0]
                px = vals[1]
                py = vals[2]
                if tab.shape[0] > 0:
                    tv, tx, ty = table_value(tab, tos, th, cw, i, dx0, dy0)
                    p += tv
                    px += tx
                    py += ty
                model = fl[i] * p + bs[i]
                mpos = fl[i] * p
                if mpos < 0.0:
                    mpos = 0.0
                w = 1.0 / (vs[i, a, b] + mpos * gain_inv)
                r = ds[i, a, b] - model
                c2 += w * r * r
                cnt += 1
                if not with_jac:
                    continue
                jac[0] = p
                jac[1] = fl[i] * px
                jac[2] = fl[i] * py
                jac[3] = 1.0
                jac[4] = fl[i] * vals[3]
                jac[5] = fl[i] * vals[4]
                jac[6] = fl[i] * vals[5]
                jac[7] = fl[i] * vals[6]
                for u in range(NPAR):
                    wu = w * jac[u]
                    rhs[u] += wu * r
                    for v in range(u, NPAR):
                        acc[u, v] += wu * jac[v]
        for u in range(NPAR):
            JTr[i, u] = rhs[u]
            for v in range(u, NPAR):
                JTJ[i, u, v] = acc[u, v]
                JTJ[i, v, u] = acc[u, v]
        chi2[i] = c2
        npix[i] = cnt


@njit(cache=True)
def psf_star_models(ox, oy, fl, xs, ys, S, kind, A, B, C, beta, n_in, w_in, r2_in,
                    tab, tos, th, cw, out):
    """Unit-flux model stamps (n, S, S) of the PSF stars (for residuals and tables)."""
    n = fl.shape[0]
    for i in prange(n):
        det = A[i] * C[i] - 0.25 * B[i] * B[i]
        if kind == 0:
            norm = (beta[i] - 1.0) / math.pi * math.sqrt(det)
        else:
            norm = math.sqrt(det) / (2.0 * math.pi)
        vals = np.zeros(7)
        for a in range(S):
            dy0 = oy[i] + a - ys[i]
            for b in range(S):
                dx0 = ox[i] + b - xs[i]
                _pixel_full(kind, A[i], B[i], C[i], beta[i], norm, det, dx0, dy0,
                            n_in, w_in, vals)
                p = vals[0]
                if tab.shape[0] > 0:
                    tv, tx, ty = table_value(tab, tos, th, cw, i, dx0, dy0)
                    p += tv
                out[i, a, b] = p
