"""The PSF model: analytic Moffat or Gaussian with smoothly varying shape, plus an
optional empirical residual table (oversampled, varying linearly over the frame).

Shape: q = A dx^2 + B dx dy + C dy^2 built from a geometric-mean scale ``s`` (Moffat
alpha, Gaussian sigma) and two ellipticity components ``e1, e2``:
A = (1 - e1) k, B = -2 e2 k, C = (1 + e1) k, k = 1 / (s^2 sqrt(1 - e1^2 - e2^2)),
so det = 1 / s^4 whatever the ellipticity. ``s``, ``e1`` and ``e2`` are polynomials
of the normalised detector position (u, v in [-1, 1]); Moffat beta is one number.
Both profiles are normalised to unit total flux (integral to infinity), so a fitted
flux is a total flux.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

KINDS = {"moffat": 0, "gaussian": 1}
GAUSS_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def n_basis(deg: int) -> int:
    return (deg + 1) * (deg + 2) // 2


def poly_basis(u, v, deg: int) -> np.ndarray:
    """Monomials u^a v^b with a + b <= deg, shape (n, n_basis(deg))."""
    u = np.atleast_1d(np.asarray(u, float))
    v = np.atleast_1d(np.asarray(v, float))
    cols = [np.ones_like(u)]
    for total in range(1, deg + 1):
        for b in range(total + 1):
            cols.append(u ** (total - b) * v ** b)
    return np.stack(cols, axis=1)


def quadrature(order: int):
    t, w = np.polynomial.legendre.leggauss(int(order))
    return np.ascontiguousarray(0.5 * t), np.ascontiguousarray(0.5 * w)


def shape_to_quadratic(s, e1, e2):
    """(A, B, C) of the quadratic form from scale and ellipticity components."""
    n = np.sqrt(np.clip(1.0 - e1 * e1 - e2 * e2, 1e-6, None))
    k = 1.0 / (s * s * n)
    return (1.0 - e1) * k, -2.0 * e2 * k, (1.0 + e1) * k


def quadratic_jacobian(s, e1, e2):
    """d(A, B, C)/d(s, e1, e2), shape (n, 3, 3)."""
    n2 = np.clip(1.0 - e1 * e1 - e2 * e2, 1e-6, None)
    n = np.sqrt(n2)
    k = 1.0 / (s * s * n)
    A, B, C = (1.0 - e1) * k, -2.0 * e2 * k, (1.0 + e1) * k
    ke1 = k * e1 / n2
    ke2 = k * e2 / n2
    jac = np.empty(np.shape(s) + (3, 3))
    jac[..., 0, 0] = -2.0 * A / s
    jac[..., 1, 0] = -2.0 * B / s
    jac[..., 2, 0] = -2.0 * C / s
    jac[..., 0, 1] = -k + (1.0 - e1) * ke1
    jac[..., 1, 1] = -2.0 * e2 * ke1
    jac[..., 2, 1] = k + (1.0 + e1) * ke1
    jac[..., 0, 2] = (1.0 - e1) * ke2
    jac[..., 1, 2] = -2.0 * k - 2.0 * e2 * ke2
    jac[..., 2, 2] = (1.0 + e1) * ke2
    return jac


def scale_to_fwhm(kind: str, s, beta):
    if kind == "moffat":
        return 2.0 * np.asarray(s) * np.sqrt(2.0 ** (1.0 / beta) - 1.0)
    return GAUSS_FWHM * np.asarray(s)


def fwhm_to_scale(kind: str, fwhm, beta):
    if kind == "moffat":
        return np.asarray(fwhm) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return np.asarray(fwhm) / GAUSS_FWHM


@dataclass(frozen=True)
class PSFModel:
    """A spatially varying PSF; evaluate it with :mod:`kernels` via ``kernel_args``."""

    kind: str
    shape: tuple[int, int]              # detector (ny, nx)
    deg: int                            # polynomial degree of s, e1, e2
    coef_s: np.ndarray
    coef_e1: np.ndarray
    coef_e2: np.ndarray
    beta: float = 2.5                   # Moffat only
    table: np.ndarray | None = None     # (nterm, n, n) residual table, unit flux
    table_os: int = 2                   # table nodes per pixel
    table_half: int = 0                 # table covers offsets -half..half px
    info: dict = field(default_factory=dict)

    # --- geometry ------------------------------------------------------------------
    def uv(self, x, y):
        ny, nx = self.shape
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        return ((np.asarray(x, float) - cx) / max(cx, 1.0),
                (np.asarray(y, float) - cy) / max(cy, 1.0))

    def shape_at(self, x, y):
        """Scale s, e1, e2 and beta at positions (arrays)."""
        u, v = self.uv(x, y)
        base = poly_basis(u, v, self.deg)
        s = base @ self.coef_s
        e1 = base @ self.coef_e1
        e2 = base @ self.coef_e2
        s = np.clip(s, 0.2, None)
        lim = 0.95
        e = np.hypot(e1, e2)
        shrink = np.where(e > lim, lim / np.maximum(e, 1e-12), 1.0)
        return s, e1 * shrink, e2 * shrink, np.full(s.shape, self.beta)

    def fwhm_at(self, x, y) -> np.ndarray:
        """Geometric-mean FWHM (px) at positions."""
        s, _, _, beta = self.shape_at(x, y)
        return scale_to_fwhm(self.kind, s, beta)

    def quad_at(self, x, y):
        """A, B, C, beta, norm arrays at positions (the kernel's per-star shape)."""
        s, e1, e2, beta = self.shape_at(x, y)
        A, B, C = shape_to_quadratic(s, e1, e2)
        det = np.clip(A * C - 0.25 * B * B, 1e-30, None)
        if self.kind == "moffat":
            norm = (beta - 1.0) / np.pi * np.sqrt(det)
        else:
            norm = np.sqrt(det) / (2.0 * np.pi)
        return A, B, C, beta, norm

    def table_weights(self, x, y) -> np.ndarray:
        """Per-star weights of the table terms (1, u, v, ...), shape (n, nterm)."""
        x = np.atleast_1d(np.asarray(x, float))
        if self.table is None:
            return np.zeros((x.size, 0))
        u, v = self.uv(x, y)
        nterm = self.table.shape[0]
        deg = {1: 0, 3: 1, 6: 2}[nterm]
        return np.ascontiguousarray(poly_basis(u, v, deg))

    def table_args(self, x, y):
        if self.table is None:
            x = np.atleast_1d(x)
            return np.zeros((0, 4, 4)), 1, 0.0, np.zeros((x.size, 0))
        return (np.ascontiguousarray(self.table), int(self.table_os),
                float(self.table_half), self.table_weights(x, y))

    @cached_property
    def fwhm_range(self) -> tuple[float, float]:
        ny, nx = self.shape
        gx, gy = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
        f = self.fwhm_at(gx.ravel(), gy.ravel())
        return float(f.min()), float(f.max())

    @cached_property
    def _plan(self):
        fmin = self.fwhm_range[0]
        order_in = 4 if fmin < 2.2 else (3 if fmin < 6.0 else 2)
        return (quadrature(order_in), quadrature(max(order_in - 1, 2)), quadrature(1),
                1.0, 3.0)

    def quadrature_plan(self):
        """Gauss-Legendre node sets (inner, middle, outer) and switch radii / FWHM."""
        return self._plan

    def kernel_args(self, x, y, fwhm=None):
        """Arguments of ``kernels.eval_boxes`` after the box layout (kind..cw)."""
        A, B, C, beta, norm = self.quad_at(x, y)
        fwhm = self.fwhm_at(x, y) if fwhm is None else fwhm
        (n_in, w_in), (n_mid, w_mid), (n_out, w_out), r_in, r_mid = self.quadrature_plan()
        tab, tos, th, cw = self.table_args(x, y)
        return (KINDS[self.kind], A, B, C, beta, norm, n_in, w_in, n_mid, w_mid,
                n_out, w_out, (r_in * fwhm) ** 2, (r_mid * fwhm) ** 2, tab, tos, th, cw)

    def with_table(self, table, os_, half) -> "PSFModel":
        return replace(self, table=table, table_os=int(os_), table_half=int(half))

    def describe(self) -> dict:
        lo, hi = self.fwhm_range
        out = {"psf_kind": self.kind + ("+table" if self.table is not None else ""),
               "psf_degree": self.deg, "psf_fwhm_min": round(lo, 3),
               "psf_fwhm_max": round(hi, 3)}
        if self.kind == "moffat":
            out["psf_beta"] = round(float(self.beta), 4)
        return out

    # --- evaluation outside the fit (exports, encircled energy, peers) -------------
    def stamps(self, x, y, half: int) -> np.ndarray:
        """Unit-flux pixel-integrated stamps (n, 2h+1, 2h+1) centred on round(x, y)."""
        from . import kernels
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        n = x.size
        S = 2 * half + 1
        hr = np.full(n, half, np.int64)
        hf = np.zeros(n, np.int64)
        roff = np.arange(n, dtype=np.int64) * S * S
        foff = np.arange(n, dtype=np.int64)
        rvals = np.zeros(n * S * S)
        scratch = np.zeros(n)
        kernels.eval_boxes(np.arange(n), x, y, np.floor(x + 0.5).astype(np.int64),
                           np.floor(y + 0.5).astype(np.int64), hr, hf, roff, foff,
                           *self.kernel_args(x, y), rvals, scratch, scratch.copy(),
                           scratch.copy(), np.ones(n, np.bool_))
        return rvals.reshape(n, S, S)
