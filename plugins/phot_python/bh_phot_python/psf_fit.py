"""Fit the PSF model to the stamps of the chosen PSF stars.

One Levenberg-Marquardt fit for everything at once: each star's flux, position and
local sky, and the polynomial coefficients of the shape (s, e1, e2) shared by all
stars, plus Moffat beta. The normal matrix is arrow-shaped (small per-star blocks
plus one shared block), solved through the Schur complement of the shared part, so
the cost is linear in the number of stars.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import psf_kernels
from .psf import KINDS, PSFModel, n_basis, poly_basis, quadratic_jacobian


@dataclass
class Stamps:
    """Sky-subtracted (neighbour-subtracted) stamps of PSF stars and their noise."""

    ds: np.ndarray          # (n, S, S) data - sky - neighbours, ADU
    vs: np.ndarray          # (n, S, S) sky + read-noise variance, ADU^2
    bad: np.ndarray         # (n, S, S) True = no information
    ox: np.ndarray          # column of stamp pixel [.., 0]
    oy: np.ndarray          # row of stamp pixel [0, ..]
    gain_inv: float

    @property
    def n(self) -> int:
        return self.ds.shape[0]

    def subset(self, keep) -> "Stamps":
        return Stamps(self.ds[keep], self.vs[keep], self.bad[keep], self.ox[keep],
                      self.oy[keep], self.gain_inv)


@dataclass
class StarParams:
    f: np.ndarray
    x: np.ndarray
    y: np.ndarray
    b: np.ndarray

    def subset(self, keep) -> "StarParams":
        return StarParams(self.f[keep], self.x[keep], self.y[keep], self.b[keep])

    def stacked(self) -> np.ndarray:
        return np.stack([self.f, self.x, self.y, self.b], axis=1)


@dataclass
class FitResult:
    psf: PSFModel
    stars: StarParams
    chi2: np.ndarray        # per star
    npix: np.ndarray
    n_params: int

    @property
    def total_chi2(self) -> float:
        return float(self.chi2.sum())

    @property
    def rchi2(self) -> np.ndarray:
        return self.chi2 / np.maximum(self.npix - 4, 1)

    def bic(self) -> float:
        return self.total_chi2 + self.n_params * np.log(max(self.npix.sum(), 2))


def _kernel(psf: PSFModel, st: Stamps, sp: StarParams, with_jac: bool):
    n = st.n
    A, B, C, beta, _ = psf.quad_at(sp.x, sp.y)
    fw = psf.fwhm_at(sp.x, sp.y)
    (n_in, w_in), (n_mid, w_mid), _, r_in, _ = psf.quadrature_plan()
    tab, tos, th, cw = psf.table_args(sp.x, sp.y)
    JTJ = np.zeros((n, 8, 8))
    JTr = np.zeros((n, 8))
    chi2 = np.zeros(n)
    npix = np.zeros(n, np.int64)
    psf_kernels.psf_star_normals(
        st.ds, st.vs, st.bad, st.ox.astype(np.int64), st.oy.astype(np.int64),
        sp.f, sp.x, sp.y, sp.b, KINDS[psf.kind], A, B, C, beta,
        n_in, w_in, n_mid, w_mid, (1.5 * r_in * fw) ** 2, tab, tos, th, cw,
        st.gain_inv, JTJ, JTr, chi2, npix, with_jac)
    return JTJ, JTr, chi2, npix


def _theta(psf: PSFModel, fit_beta: bool) -> np.ndarray:
    parts = [psf.coef_s, psf.coef_e1, psf.coef_e2]
    if fit_beta:
        parts.append(np.array([psf.beta]))
    return np.concatenate(parts)


def _with_theta(psf: PSFModel, theta: np.ndarray, fit_beta: bool) -> PSFModel:
    nb = n_basis(psf.deg)
    beta = float(theta[3 * nb]) if fit_beta else psf.beta
    return replace(psf, coef_s=theta[:nb].copy(), coef_e1=theta[nb:2 * nb].copy(),
                   coef_e2=theta[2 * nb:3 * nb].copy(), beta=beta)


def _valid(psf: PSFModel, sp: StarParams) -> bool:
    u, v = psf.uv(sp.x, sp.y)
    base = poly_basis(u, v, psf.deg)
    s = base @ psf.coef_s
    e = np.hypot(base @ psf.coef_e1, base @ psf.coef_e2)
    ok = np.all(s > 0.3) and np.all(e < 0.9) and np.all(sp.f > 0)
    if psf.kind == "moffat":
        ok = ok and 1.05 < psf.beta < 30.0
    return bool(ok)


def fit_psf(psf: PSFModel, st: Stamps, sp: StarParams, *, fit_shape: bool = True,
            max_iter: int = 30, tol: float = 1e-6) -> FitResult:
    """Levenberg-Marquardt fit of the shared shape and per-star (f, x, y, b)."""
    fit_beta = fit_shape and psf.kind == "moffat"
    nb = n_basis(psf.deg)
    ntheta = (3 * nb + (1 if fit_beta else 0)) if fit_shape else 0
    lam = 1e-3
    JTJ, JTr, chi2, npix = _kernel(psf, st, sp, True)
    total = chi2.sum()
    for _ in range(max_iter):
        n = st.n
        D = JTJ[:, :4, :4].copy()
        g = JTr[:, :4].copy()
        Dd = D + lam * np.einsum("nii->ni", D)[:, :, None] * np.eye(4)
        Dd += 1e-12 * np.eye(4)
        Dinv = np.linalg.inv(Dd)
        if ntheta:
            s, e1, e2, _ = psf.shape_at(sp.x, sp.y)
            T = np.zeros((n, 4, 4))
            T[:, :3, :3] = quadratic_jacobian(s, e1, e2)
            T[:, 3, 3] = 1.0
            JS = np.einsum("nab,nbc->nac", JTJ[:, :4, 4:], T)          # (n,4,4)
            SS = np.einsum("nba,nbc,ncd->nad", T, JTJ[:, 4:, 4:], T)    # (n,4,4)
            gS = np.einsum("nba,nb->na", T, JTr[:, 4:])
            u, v = psf.uv(sp.x, sp.y)
            base = poly_basis(u, v, psf.deg)
            Bx = np.zeros((n, 4, ntheta))
            for p in range(3):
                Bx[:, p, p * nb:(p + 1) * nb] = base
            if fit_beta:
                Bx[:, 3, 3 * nb] = 1.0
            E = np.einsum("nab,nbt->nat", JS, Bx)
            G = np.einsum("nat,nab,nbu->tu", Bx, SS, Bx)
            gT = np.einsum("nat,na->t", Bx, gS)
            Gd = G + lam * np.diag(np.diag(G)) + 1e-12 * np.eye(ntheta)
            EtDinv = np.einsum("nat,nab->ntb", E, Dinv)
            Schur = Gd - np.einsum("ntb,nbu->tu", EtDinv, E)
            rhs = gT - np.einsum("ntb,nb->t", EtDinv, g)
            try:
                dtheta = np.linalg.solve(Schur, rhs)
            except np.linalg.LinAlgError:
                dtheta = np.linalg.lstsq(Schur, rhs, rcond=None)[0]
            dstar = np.einsum("nab,nb->na", Dinv, g - np.einsum("nat,t->na", E, dtheta))
        else:
            dtheta = np.zeros(0)
            dstar = np.einsum("nab,nb->na", Dinv, g)
        dstar[:, 1:3] = np.clip(dstar[:, 1:3], -1.0, 1.0)
        trial_sp = StarParams(sp.f + dstar[:, 0], sp.x + dstar[:, 1], sp.y + dstar[:, 2],
                              sp.b + dstar[:, 3])
        trial_psf = (_with_theta(psf, _theta(psf, fit_beta) + dtheta, fit_beta)
                     if ntheta else psf)
        if _valid(trial_psf, trial_sp):
            tJTJ, tJTr, tchi2, tnpix = _kernel(trial_psf, st, trial_sp, True)
            ttotal = tchi2.sum()
        else:
            ttotal = np.inf
        if ttotal < total:
            improvement = (total - ttotal) / max(total, 1.0)
            psf, sp = trial_psf, trial_sp
            JTJ, JTr, chi2, npix = tJTJ, tJTr, tchi2, tnpix
            total = ttotal
            lam = max(lam / 4.0, 1e-7)
            if improvement < tol:
                break
        else:
            # a step that changes chi^2 by a negligible amount means convergence
            # (weights follow the model, so chi^2 is not exactly the LM objective)
            if ttotal - total < max(tol * total, 0.5) or lam > 1e6:
                break
            lam *= 8.0
    return FitResult(psf, sp, chi2, npix, ntheta + 4 * st.n)


def star_models(psf: PSFModel, st: Stamps, sp: StarParams) -> np.ndarray:
    """Unit-flux model stamps of the PSF stars at their fitted positions."""
    n, S, _ = st.ds.shape
    A, B, C, beta, _ = psf.quad_at(sp.x, sp.y)
    (n_in, w_in), _, _, _, _ = psf.quadrature_plan()
    tab, tos, th, cw = psf.table_args(sp.x, sp.y)
    out = np.zeros((n, S, S))
    psf_kernels.psf_star_models(st.ox.astype(np.int64), st.oy.astype(np.int64), sp.f,
                                sp.x, sp.y, S, KINDS[psf.kind], A, B, C, beta, n_in,
                                w_in, np.full(n, 1e30), tab, tos, th, cw, out)
    return out
