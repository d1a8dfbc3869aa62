"""Compiled inner loops of the PSF model: pixel-integrated profiles and boxes.

Written as plain loops and compiled with numba (cached on disk after the first
run); the fit's own loops are in :mod:`.solve_kernels`. Per star the PSF is evaluated over
two square boxes centred on the nearest pixel: the *render* box (the star's light
that is subtracted from the image, wings included) and the smaller *fit* box inside
it (the pixels whose values constrain the star, where the derivatives are kept).
Boxes are stored flat: star ``i`` owns ``(2h+1)**2`` values from ``offset[i]``.

The profile is integrated over each pixel with Gauss-Legendre quadrature (the
node count falls with distance from the centre, where the profile is smooth), and
an optional empirical residual table (oversampled, spatially varying) is added.
Quadratic form of the analytic profile: q = A dx^2 + B dx dy + C dy^2 with
dx = X - x0; Moffat (1 + q)^-beta, Gaussian exp(-q / 2), normalised to unit flux.
"""
from __future__ import annotations

import math

from numba import njit, prange

MOFFAT = 0
GAUSSIAN = 1


@njit(cache=True, inline="always")
def _keys(t):
    """Keys cubic convolution weights (a = -0.5) and their derivatives at fraction t."""
    t2 = t * t
    t3 = t2 * t
    w0 = -0.5 * t3 + t2 - 0.5 * t
    w1 = 1.5 * t3 - 2.5 * t2 + 1.0
    w2 = -1.5 * t3 + 2.0 * t2 + 0.5 * t
    w3 = 0.5 * t3 - 0.5 * t2
    d0 = -1.5 * t2 + 2.0 * t - 0.5
    d1 = 4.5 * t2 - 5.0 * t
    d2 = -4.5 * t2 + 4.0 * t + 0.5
    d3 = 1.5 * t2 - t
    return w0, w1, w2, w3, d0, d1, d2, d3


@njit(cache=True)
def table_value(tab, tos, th, cw, i, dx0, dy0):
    """Residual-table correction and its d/dx0, d/dy0 at pixel offset (dx0, dy0)."""
    nterm = tab.shape[0]
    n = tab.shape[1]
    gx = (dx0 + th) * tos
    gy = (dy0 + th) * tos
    jx = int(math.floor(gx))
    jy = int(math.floor(gy))
    if jx < 1 or jy < 1 or jx > n - 3 or jy > n - 3:
        return 0.0, 0.0, 0.0
    wx0, wx1, wx2, wx3, dx0_, dx1_, dx2_, dx3_ = _keys(gx - jx)
    wy0, wy1, wy2, wy3, dy0_, dy1_, dy2_, dy3_ = _keys(gy - jy)
    wx = (wx0, wx1, wx2, wx3)
    dwx = (dx0_, dx1_, dx2_, dx3_)
    wy = (wy0, wy1, wy2, wy3)
    dwy = (dy0_, dy1_, dy2_, dy3_)
    v = 0.0
    vx = 0.0
    vy = 0.0
    for t in range(nterm):
        c = cw[i, t]
        if c == 0.0:
            continue
        for a in range(4):
            row = jy - 1 + a
            for b in range(4):
                val = tab[t, row, jx - 1 + b] * c
                v += wy[a] * wx[b] * val
                vx += wy[a] * dwx[b] * val
                vy += dwy[a] * wx[b] * val
    # d/dx0 = -d/d(dx0) = -tos * d/dgx
    return v, -vx * tos, -vy * tos


@njit(cache=True, inline="always")
def pixel_value(kind, A, B, C, beta, norm, dx0, dy0, nodes, wts, deriv):
    """Pixel-integrated unit-flux profile and (optionally) d/dx0, d/dy0."""
    p = 0.0
    px = 0.0
    py = 0.0
    m = nodes.shape[0]
    if m == 1:
        # far wings: centre value plus the pixel-averaging term Laplacian / 24
        q = A * dx0 * dx0 + B * dx0 * dy0 + C * dy0 * dy0
        qx = 2.0 * A * dx0 + B * dy0
        qy = B * dx0 + 2.0 * C * dy0
        if kind == 0:
            base = 1.0 + q
            f = math.exp(-beta * math.log(base))
            g = beta * f / base
            h2 = (beta + 1.0) * g / base
        else:
            f = math.exp(-0.5 * q)
            g = 0.5 * f
            h2 = 0.25 * f
        lap = h2 * (qx * qx + qy * qy) - g * (2.0 * A + 2.0 * C)
        p = f + lap / 24.0
        if deriv:
            px = g * qx
            py = g * qy
        return norm * p, norm * px, norm * py
    for a in range(m):
        dy = dy0 + nodes[a]
        for b in range(m):
            dx = dx0 + nodes[b]
            q = A * dx * dx + B * dx * dy + C * dy * dy
            if kind == 0:
                base = 1.0 + q
                f = math.exp(-beta * math.log(base))
                g = beta * f / base
            else:
                f = math.exp(-0.5 * q)
                g = 0.5 * f
            w = wts[a] * wts[b]
            p += w * f
            if deriv:
                px += w * g * (2.0 * A * dx + B * dy)
                py += w * g * (B * dx + 2.0 * C * dy)
    return norm * p, norm * px, norm * py


@njit(cache=True)
def eval_boxes(sel, xs, ys, bx, by, hr, hf, roff, foff, kind, A, B, C, beta, norm,
               n_in, w_in, n_mid, w_mid, n_out, w_out, r2_in, r2_mid,
               tab, tos, th, cw, rvals, fP, fPx, fPy, full):
    """Unit-flux render boxes (``rvals``) and fit-box values/derivatives of ``sel``.

    Where ``full[i]`` is False only the fit box is evaluated and the wings keep
    their last values (for a star that moved by a few hundredths of a pixel).
    """
    use_tab = tab.shape[0] > 0
    for jj in prange(sel.size):
        i = sel[jj]
        ix = bx[i]
        iy = by[i]
        fx = ix - xs[i]
        fy = iy - ys[i]
        R = hr[i]
        F = hf[i]
        S = 2 * R + 1
        SF = 2 * F + 1
        reach = R if full[i] else F
        for a in range(-reach, reach + 1):
            dy0 = a + fy
            for b in range(-reach, reach + 1):
                dx0 = b + fx
                infit = abs(a) <= F and abs(b) <= F
                r2 = dx0 * dx0 + dy0 * dy0
                if r2 < r2_in[i]:
                    p, px, py = pixel_value(kind, A[i], B[i], C[i], beta[i], norm[i],
                                            dx0, dy0, n_in, w_in, infit)
                elif r2 < r2_mid[i]:
                    p, px, py = pixel_value(kind, A[i], B[i], C[i], beta[i], norm[i],
                                            dx0, dy0, n_mid, w_mid, infit)
                else:
                    p, px, py = pixel_value(kind, A[i], B[i], C[i], beta[i], norm[i],
                                            dx0, dy0, n_out, w_out, infit)
                if use_tab:
                    tv, tx, ty = table_value(tab, tos, th, cw, i, dx0, dy0)
                    p += tv
                    px += tx
                    py += ty
                rvals[roff[i] + (a + R) * S + (b + R)] = p
                if infit:
                    k = foff[i] + (a + F) * SF + (b + F)
                    fP[k] = p
                    fPx[k] = px
                    fPy[k] = py


@njit(cache=True)
def add_boxes(img, sel, bx, by, hr, roff, rvals, scale):
    """img += scale[i] * render box of star i, for i in ``sel`` (serial: boxes overlap)."""
    H, W = img.shape
    for jj in range(sel.size):
        i = sel[jj]
        s = scale[i]
        if s == 0.0:
            continue
        ix = bx[i]
        iy = by[i]
        R = hr[i]
        S = 2 * R + 1
        for a in range(-R, R + 1):
            Y = iy + a
            if Y < 0 or Y >= H:
                continue
            base = roff[i] + (a + R) * S + R
            for b in range(-R, R + 1):
                X = ix + b
                if X < 0 or X >= W:
                    continue
                img[Y, X] += s * rvals[base + b]
