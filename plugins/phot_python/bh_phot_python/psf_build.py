"""Choose clean PSF stars, fit the candidate PSF models and keep the best.

Candidates: Moffat and Gaussian, with the shape's spatial polynomial degree chosen
by the Bayesian information criterion, and each optionally corrected by an
empirical residual table (oversampled, varying linearly across the frame). The
table is kept only when it lowers the chi^2 of stars it was *not* built from
(two-fold cross-validation), so it never just fits the noise.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp_
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

from .psf import GAUSS_FWHM, PSFModel, fwhm_to_scale, n_basis, poly_basis
from .psf_fit import Stamps, StarParams, fit_psf, star_models

def select_psf_stars(x, y, flux, snr, peak, shape, fwhm, half, *, saturation=None,
                     sky=None, bad=None, neighbours_subtracted=False, max_stars=150,
                     min_snr=30.0):
    """Indices of clean, bright, isolated, unsaturated stars spread over the frame."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = x.size
    if n == 0:
        return np.zeros(0, int)
    ny, nx = shape
    margin = half + 1
    ok = (x > margin) & (x < nx - 1 - margin) & (y > margin) & (y < ny - 1 - margin)
    ok &= np.isfinite(flux) & (flux > 0) & (snr >= min_snr)
    if saturation is not None:
        level = peak + (0.0 if sky is None else sky)
        ok &= level < 0.8 * saturation
    tree = cKDTree(np.column_stack([x, y]))
    reach = 1.5 * fwhm if neighbours_subtracted else half * 1.5 + 2.0 * fwhm
    for i, js in enumerate(tree.query_ball_point(np.column_stack([x, y]), reach)):
        if not ok[i]:
            continue
        for j in js:
            if j == i:
                continue
            d = np.hypot(x[j] - x[i], y[j] - y[i])
            limit = 0.05 if neighbours_subtracted else (0.002 if d > 2 * fwhm else 0.0)
            if d < 1.5 * fwhm or flux[j] > limit * flux[i]:
                ok[i] = False
                break
    if bad is not None:
        for i in np.flatnonzero(ok):
            ix, iy = int(round(x[i])), int(round(y[i]))
            r = int(np.ceil(1.5 * fwhm))
            if bad[max(iy - r, 0):iy + r + 1, max(ix - r, 0):ix + r + 1].any():
                ok[i] = False
    cand = np.flatnonzero(ok)
    if cand.size > max_stars:
        # spread over a 4x4 grid: take the brightest of each cell in turn
        cell = (np.minimum((x[cand] / nx * 4).astype(int), 3) * 4
                + np.minimum((y[cand] / ny * 4).astype(int), 3))
        order = cand[np.lexsort((-snr[cand], cell))]
        cells = cell[np.lexsort((-snr[cand], cell))]
        rank = np.zeros(order.size, int)
        for c in np.unique(cells):
            m = cells == c
            rank[m] = np.arange(m.sum())
        cand = order[np.lexsort((-snr[order], rank))][:max_stars]
    return np.sort(cand)


def cut_stamps(dsub, varsky, bad, x, y, half, gain_inv) -> Stamps:
    """Stamps (2h+1)^2 around the nearest pixels of (x, y); outside = bad."""
    ny, nx = dsub.shape
    ix = np.floor(np.asarray(x) + 0.5).astype(int)
    iy = np.floor(np.asarray(y) + 0.5).astype(int)
    k = np.arange(-half, half + 1)
    rows = iy[:, None, None] + k[None, :, None]
    cols = ix[:, None, None] + k[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    r = np.clip(rows, 0, ny - 1)
    c = np.clip(cols, 0, nx - 1)
    rr, cc = np.broadcast_arrays(r, c)
    badst = bad[rr, cc] | ~inside
    return Stamps(np.where(badst, 0.0, dsub[rr, cc]), varsky[rr, cc], badst,
                  ix - half, iy - half, gain_inv)


def initial_psf(kind, shape, fwhm, beta=2.5) -> PSFModel:
    s = float(fwhm_to_scale(kind, fwhm, beta))
    return PSFModel(kind=kind, shape=tuple(shape), deg=0, coef_s=np.array([s]),
                    coef_e1=np.zeros(1), coef_e2=np.zeros(1), beta=beta)


def raise_degree(psf: PSFModel, deg: int) -> PSFModel:
    nb_old, nb = n_basis(psf.deg), n_basis(deg)

    def grow(c):
        out = np.zeros(nb)
        out[:min(nb_old, nb)] = c[:min(nb_old, nb)]
        return out
    return replace(psf, deg=deg, coef_s=grow(psf.coef_s), coef_e1=grow(psf.coef_e1),
                   coef_e2=grow(psf.coef_e2))


def _clip_outliers(res, st, sp):
    """Drop stars whose fit is much worse than the rest (blends, galaxies, hits)."""
    r = res.rchi2
    med = np.median(r)
    mad = 1.4826 * np.median(np.abs(r - med))
    moved = np.hypot(res.stars.x - sp.x, res.stars.y - sp.y) > 1.0
    keep = (r < med + max(5 * mad, 0.3 * med)) & ~moved & (res.stars.f > 0)
    return keep


def plausible(psf: PSFModel, x, y) -> bool:
    """The shape stays physical over the whole frame (FWHM within 0.6-1.7x of its
    median at the stars, ellipticity below 0.8)."""
    ny, nx = psf.shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
    fw = psf.fwhm_at(gx.ravel(), gy.ravel())
    ref = float(np.median(psf.fwhm_at(x, y)))
    _, e1, e2, _ = psf.shape_at(gx.ravel(), gy.ravel())
    return bool(fw.min() > 0.6 * ref and fw.max() < 1.7 * ref
                and np.hypot(e1, e2).max() < 0.8)


def lower_degree(psf: PSFModel) -> PSFModel:
    return raise_degree(psf, psf.deg - 1)


def fit_kind(kind, st, sp, shape, fwhm, max_deg, warm=None, fixed_degree=False,
             rival=None):
    """Fit one profile family; step the polynomial degree down while BIC improves.

    With ``rival`` (a FitResult of another family) a fit that is still clearly worse
    after a few iterations is abandoned (returned as is).
    """
    if warm is None:
        res = fit_psf(initial_psf(kind, shape, fwhm), st, sp, max_iter=12, tol=1e-5)
        psf, sp = res.psf, res.stars
    else:
        psf = warm
    if rival is not None:
        res = fit_psf(raise_degree(psf, max_deg), st, sp, max_iter=5)
        if res.bic() > rival.bic() + 0.05 * rival.total_chi2:
            return res
        psf, sp = res.psf, res.stars
    res = fit_psf(raise_degree(psf, max_deg), st, sp)
    while not fixed_degree and res.psf.deg > 0:
        lower = fit_psf(lower_degree(res.psf), st, res.stars, max_iter=10)
        if lower.bic() >= res.bic():
            break
        res = lower
    return res


def as_gaussian(psf: PSFModel) -> PSFModel:
    """A Gaussian with the same FWHM polynomial as a Moffat (warm start)."""
    ratio = 2.0 * np.sqrt(2.0 ** (1.0 / psf.beta) - 1.0) / GAUSS_FWHM
    return replace(psf, kind="gaussian", coef_s=psf.coef_s * ratio)


def build_table(res, st: Stamps, nterm: int, os_: int = 2, ridge: float = 1e-3,
                half: int | None = None):
    """Least-squares residual table (nterm, n, n) from the PSF stars' residuals.

    Nodes every 1/os_ px out to ``half`` px (default 2.5 FWHM); Keys-cubic
    interpolation; constrained to add no flux and to move no centroid.
    """
    psf = res.psf.with_table(None, 2, 0) if res.psf.table is not None else res.psf
    sp = res.stars
    n, S, _ = st.ds.shape
    if half is None:
        half = int(np.ceil(2.5 * np.median(psf.fwhm_at(sp.x, sp.y))))
    half = int(min(half, S // 2))
    models = star_models(psf, st, sp) * sp.f[:, None, None] + sp.b[:, None, None]
    resid = st.ds - models
    var = st.vs + np.clip(models - sp.b[:, None, None], 0, None) * st.gain_inv
    w = np.where(st.bad, 0.0, 1.0 / var)
    nn = 2 * half * os_ + 1
    k = np.arange(S)
    dx0 = st.ox[:, None, None] + k[None, None, :] - sp.x[:, None, None]
    dy0 = st.oy[:, None, None] + k[None, :, None] - sp.y[:, None, None]
    dx0, dy0 = np.broadcast_arrays(dx0, dy0)
    gx = (dx0 + half) * os_
    gy = (dy0 + half) * os_
    jx = np.floor(gx).astype(int)
    jy = np.floor(gy).astype(int)
    tx = gx - jx
    ty = gy - jy
    good = (w > 0) & (jx >= 1) & (jy >= 1) & (jx <= nn - 3) & (jy <= nn - 3)
    idx = np.flatnonzero(good.ravel())
    if idx.size < 10:
        return None
    jx, jy, tx, ty = (a.ravel()[idx] for a in (jx, jy, tx, ty))
    star = np.repeat(np.arange(n), S * S)[idx]
    u, v = psf.uv(sp.x, sp.y)
    basis = poly_basis(u, v, {1: 0, 3: 1, 6: 2}[nterm])[star]      # (m, nterm)
    f = sp.f[star]
    sw = np.sqrt(w.ravel()[idx])
    rhs = resid.ravel()[idx] * sw

    def keys(t):
        t2, t3 = t * t, t * t * t
        return np.stack([-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0,
                         -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2], axis=1)
    wx, wy = keys(tx), keys(ty)
    rows, cols, vals = [], [], []
    m = idx.size
    for a in range(4):
        for b in range(4):
            node = (jy - 1 + a) * nn + (jx - 1 + b)
            for t in range(nterm):
                rows.append(np.arange(m))
                cols.append(t * nn * nn + node)
                vals.append(wy[:, a] * wx[:, b] * f * basis[:, t] * sw)
    nunk = nterm * nn * nn
    Amat = sp_.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                   np.concatenate(cols))), shape=(m, nunk))
    # constraints (per term): the table adds no flux and moves no centroid;
    # solved with Lagrange multipliers on the banded normal matrix
    g = (np.arange(nn) - half * os_) / os_
    GX, GY = np.meshgrid(g, g)
    cons = np.zeros((3 * nterm, nunk))
    for t in range(nterm):
        for c, pattern in enumerate((np.ones(nn * nn), GX.ravel(), GY.ravel())):
            cons[3 * t + c, t * nn * nn:(t + 1) * nn * nn] = pattern
    N = (Amat.T @ Amat).tocsc()
    scale = N.diagonal().mean() if N.nnz else 1.0
    N = (N + sp_.identity(nunk, format="csc") * (ridge * scale)).tocsc()
    lu = splu(N, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
    x0 = lu.solve(np.asarray(Amat.T @ rhs, float))
    Y = lu.solve(np.ascontiguousarray(cons.T))
    lam = np.linalg.solve(cons @ Y, cons @ x0)
    sol = x0 - Y @ lam
    return sol.reshape(nterm, nn, nn), os_, half


def cv_table_gain(res, st: Stamps, nterm: int):
    """Held-out chi^2 without and with a residual table (two folds)."""
    n = st.n
    folds = np.arange(n) % 2
    plain, corrected, npix = 0.0, 0.0, 0
    for k in (0, 1):
        train, test = folds != k, folds == k
        if train.sum() < 5 or test.sum() < 3:
            return None
        sub = type(res)(res.psf, res.stars.subset(train), res.chi2[train],
                        res.npix[train], 0)
        tab = build_table(sub, st.subset(train), nterm)
        if tab is None:
            return None
        sp_test = res.stars.subset(test)
        base = fit_psf(res.psf, st.subset(test), sp_test, fit_shape=False, max_iter=6)
        withtab = fit_psf(res.psf.with_table(*tab), st.subset(test), sp_test,
                          fit_shape=False, max_iter=6)
        plain += base.total_chi2
        corrected += withtab.total_chi2
        npix += int(base.npix.sum())
    return plain, corrected, npix


def mismatch(res, st: Stamps) -> float:
    """Fractional PSF model error: excess residual power over model power (cores)."""
    psf, sp = res.psf, res.stars
    unit = star_models(psf, st, sp)
    model = unit * sp.f[:, None, None]
    resid = st.ds - model - sp.b[:, None, None]
    var = st.vs + np.clip(model, 0, None) * st.gain_inv
    core = (~st.bad) & (model > 3.0 * np.sqrt(st.vs))
    if core.sum() < 20:
        return 0.0
    excess = float(np.sum(resid[core] ** 2 - var[core]))
    return float(np.sqrt(max(excess, 0.0) / np.sum(model[core] ** 2)))


def build_psf(dsub, varsky, bad, x, y, flux, fwhm, gain_inv, *, model="auto",
              degree=None, warm: PSFModel | None = None, stamps: Stamps | None = None,
              max_iter_clip=2, quick=False):
    """Fit the PSF on stars at (x, y); returns (PSFModel, report dict).

    ``stamps``: precomputed (e.g. neighbour-subtracted) stamps of those stars;
    ``warm``: a previous PSF to start from. ``quick``: one family (Moffat unless a
    Gaussian is asked for) and no residual table: the first, provisional PSF.
    """
    shape = dsub.shape
    n = len(x)
    half = int(np.clip(np.ceil(3.0 * fwhm), 4, 30))
    st = stamps if stamps is not None else cut_stamps(dsub, varsky, bad, x, y, half,
                                                      gain_inv)
    if warm is not None and warm.table is not None:
        warm = warm.with_table(None, 2, 0)
    sp = StarParams(np.asarray(flux, float).copy(), np.asarray(x, float).copy(),
                    np.asarray(y, float).copy(), np.zeros(n))
    if degree is None:
        max_deg = 0 if n < 8 else (1 if n < 20 else (2 if n < 50 else 3))
        if quick:
            max_deg = min(max_deg, 2)
    else:
        max_deg = int(degree)
    kinds = ["moffat", "gaussian"] if model in ("auto", "empirical") else [model]
    if quick:
        kinds = kinds[:1]
    report = {"psf_stars": n}
    results = {}
    for kind in kinds:
        if warm is not None and warm.kind == kind:
            w = warm
        elif kind == "gaussian" and "moffat" in results:
            w = as_gaussian(results["moffat"][0].psf)
        else:
            w = None
        first = not results
        st_k, sp_k = (st, sp) if first else (results["moffat"][1],
                                            results["moffat"][0].stars)
        res = fit_kind(kind, st_k, sp_k, shape, fwhm,
                       max_deg if w is None else w.deg, warm=w,
                       fixed_degree=degree is not None or (w is not None and first),
                       rival=None if first else results["moffat"][0])
        for _ in range(max_iter_clip if first else 0):
            keep = _clip_outliers(res, st_k, sp_k)
            if keep.all() or keep.sum() < max(5, n // 3):
                break
            st_k, sp_k = st_k.subset(keep), sp_k.subset(keep)
            res = fit_psf(res.psf, st_k, res.stars.subset(keep))
        results[kind] = (res, st_k, sp_k)
        report[f"chi2_{kind}"] = round(res.total_chi2, 1)
    for kind_, (res_, st_, sp_) in list(results.items()):
        # a polynomial that runs wild away from the stars is no PSF: lower it
        while res_.psf.deg > 0 and not plausible(res_.psf, sp_.x, sp_.y):
            res_ = fit_psf(lower_degree(res_.psf), st_, res_.stars, max_iter=15)
        results[kind_] = (res_, st_, sp_)
    kind = min(results, key=lambda k: results[k][0].bic())
    res, st, sp = results[kind]
    report["psf_stars_used"] = st.n
    dof = max(int(res.npix.sum()) - 4 * st.n, 1)
    report["psf_rchi2"] = round(float(res.total_chi2 / dof), 4)
    psf = res.psf
    misfit = res.total_chi2 / dof - 1.0 > 3.0 * np.sqrt(2.0 / dof)
    report["psf_misfit"] = bool(misfit)
    if not quick and (model == "empirical" or (model == "auto" and misfit)) and st.n >= 10:
        nterm = 1
        cv = cv_table_gain(res, st, nterm)
        if cv is not None:
            plain, corrected, npix = cv
            report["cv_chi2_analytic"] = round(plain, 1)
            report["cv_chi2_table"] = round(corrected, 1)
            # keep the table when it fits stars it was not built from better
            if model == "empirical" or plain - corrected > 0.001 * plain:
                tab = build_table(res, st, nterm)
                if tab is not None:
                    psf = psf.with_table(*tab)
                    res = fit_psf(psf, st, res.stars, fit_shape=False, max_iter=6)
    report["psf_mismatch"] = round(mismatch(res, st), 5)
    report.update(psf.describe())
    return psf, report
