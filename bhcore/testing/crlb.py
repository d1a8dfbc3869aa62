"""Cramér-Rao lower bounds for PSF photometry and astrometry of each star.

Why: tests and benchmarks judge the engines against the physical limit, not against
a number someone typed. The bound is the inverse Fisher information of the pixel
data. Per pixel the mean is mu (ADU above bias: all stars + sky) and the variance
(Poisson in electrons plus read noise) is

    var = (mu * gain + read_noise_e**2) / gain**2        [ADU^2]

and F_ab = sum_pixels dmu/da dmu/db / var. This is the exact Fisher information for
pure Poisson data and the standard (least-squares-attainable) one with read noise;
the extra term a Gaussian with parameter-dependent variance would add does not
apply to Poisson counts, so it is left out on purpose.

Three bounds are given per star, all for a fit with the true PSF:

* ``crlb_*``: flux, x, y free; sky per pixel known; neighbours known (their light is
  in the variance only). The main column.
* ``crlb_*_skyfree``: flux, x, y and a constant local sky free over the same box.
* ``crlb_*_blend`` (see :func:`blend_bounds`): the star fitted together with every
  star whose box overlaps its own (flux, x, y of each free), sky known. For an
  isolated star it equals ``crlb_*``; for a blend it is the honest limit.

The box is the fitting region: (2h+1)^2 pixels with h = ceil(3 FWHM_major), clipped
to the detector; masked and saturated pixels carry no information and are dropped.
Positions are 0-based pixel centres.
"""
from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from .psf_models import PSFModel



def _chunk(half: int, order: int) -> int:
    """Stars per batch so that one batch holds ~2e6 quadrature nodes."""
    return max(1, int(2e6 // ((2 * int(half) + 1) ** 2 * order * order)))


def _half_sizes(psf: PSFModel, x, y, box) -> np.ndarray:
    if box is None:
        return psf.core_radius(psf.fwhm_at(x, y))
    box = int(box)
    if box < 3 or box % 2 == 0:
        raise ValueError("box must be an odd side length >= 3 pixels")
    return np.full(np.shape(x), box // 2, dtype=int)


def _weight_image(scene, sky, gain, read_noise, mask, saturation, bias):
    """1/var per pixel (ADU^-2); 0 where a pixel carries no information."""
    mu = np.asarray(scene, float) + sky
    var = (np.clip(mu, 0.0, None) * gain + read_noise**2) / gain**2
    weight = np.divide(1.0, var, out=np.zeros_like(var), where=var > 0)
    if mask is not None:
        weight = np.where(mask, 0.0, weight)
    if saturation is not None:
        weight = np.where(mu + bias >= saturation, 0.0, weight)
    return weight


def _windows(image_padded, pad, ix, iy, half):
    """(n, 2h+1, 2h+1) windows of a padded image around (iy, ix); 0 beyond it."""
    k = np.arange(-half, half + 1)
    rows = iy[:, None, None] + pad + k[None, :, None]
    cols = ix[:, None, None] + pad + k[None, None, :]
    ny, nx = image_padded.shape
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    out = image_padded[np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)]
    return np.where(inside, out, 0.0)


def _safe_inv(fisher: np.ndarray) -> np.ndarray:
    """Batched inverse; a singular matrix (no usable pixels) gives infinities."""
    out = np.full_like(fisher, np.inf)
    ok = np.all(np.isfinite(fisher), axis=(1, 2))
    ok &= np.abs(np.linalg.det(np.where(ok[:, None, None], fisher, 1.0))) > 0
    ok &= fisher[:, 0, 0] > 0
    if ok.any():
        try:
            out[ok] = np.linalg.inv(fisher[ok])
        except np.linalg.LinAlgError:
            for i in np.flatnonzero(ok):
                try:
                    out[i] = np.linalg.inv(fisher[i])
                except np.linalg.LinAlgError:
                    pass
    return out


def _sqrt_diag(cov, i):
    v = cov[:, i, i]
    return np.where(np.isfinite(v) & (v > 0), np.sqrt(np.abs(v)), np.inf)


def cramer_rao_bounds(psf_model: PSFModel, x, y, flux, sky, gain: float,
                      read_noise: float, box: int | None = None, *, scene=None,
                      mask=None, saturation: float | None = None, bias: float = 0.0,
                      order: int = 5) -> Table:
    """Cramér-Rao bounds (1 sigma, ADU and px) for flux, x, y of each star.

    ``x, y`` 0-based positions, ``flux`` total ADU, ``sky`` ADU/pixel above bias
    (scalar, or an image like ``scene``), ``gain`` e/ADU, ``read_noise`` electrons,
    ``box`` odd fitting-box side (default 2*ceil(3 FWHM_major)+1). ``scene``: the
    noiseless light of all stars, these included (ADU, detector-sized); when None each
    star is alone on an infinite detector. Returns a Table with ``crlb_flux, crlb_x,
    crlb_y, crlb_flux_skyfree, crlb_x_skyfree, crlb_y_skyfree, crlb_sky_skyfree,
    npix, box, cov`` (the 3x3 covariance of flux, x, y with sky known).
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    flux = np.broadcast_to(np.asarray(flux, float), x.shape)
    n = x.size
    halves = _half_sizes(psf_model, x, y, box)
    pad = int(halves.max()) if n else 0
    weight_pad = None
    if scene is not None:
        weight = _weight_image(scene, sky, gain, read_noise, mask, saturation, bias)
        weight_pad = np.pad(weight, pad)
    cov3 = np.full((n, 3, 3), np.inf)
    cov4 = np.full((n, 4, 4), np.inf)
    npix = np.zeros(n, dtype=int)
    for half in np.unique(halves):
        members = np.flatnonzero(halves == half)
        chunk = _chunk(half, order)
        for start in range(0, members.size, chunk):
            sel = members[start:start + chunk]
            ix, iy, P, Px, Py = psf_model.stamps(x[sel], y[sel], int(half), order=order,
                                                 derivatives=True)
            f = flux[sel][:, None, None]
            if weight_pad is None:
                if np.ndim(sky):
                    raise ValueError("an image-shaped sky needs a scene")
                W = _weight_image(f * P, sky, gain, read_noise, None, saturation, bias)
            else:
                W = _windows(weight_pad, pad, ix, iy, int(half))
            D = np.stack([P, f * Px, f * Py, np.ones_like(P)], axis=1)
            fisher = np.einsum("nij,naij,nbij->nab", W, D, D)
            cov3[sel] = _safe_inv(fisher[:, :3, :3])
            cov4[sel] = _safe_inv(fisher)
            npix[sel] = np.count_nonzero(W > 0, axis=(1, 2))
    table = Table()
    for i, name in enumerate(("flux", "x", "y")):
        table[f"crlb_{name}"] = _sqrt_diag(cov3, i)
    for i, name in enumerate(("flux", "x", "y", "sky")):
        table[f"crlb_{name}_skyfree"] = _sqrt_diag(cov4, i)
    table["npix"] = npix
    table["box"] = 2 * halves + 1
    table["cov"] = cov3
    return table


def blend_bounds(psf_model: PSFModel, x, y, flux, sky, gain: float, read_noise: float,
                 scene, box: int | None = None, *, mask=None,
                 saturation: float | None = None, bias: float = 0.0,
                 order: int = 5) -> Table:
    """Bounds for each star fitted jointly with the stars whose boxes overlap its own.

    Sky known; stars beyond the group are known background. Each member's model
    derivatives are taken over its own box (its light outside carries negligible
    information). Returns ``crlb_flux_blend, crlb_x_blend, crlb_y_blend, n_group``.
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    flux = np.broadcast_to(np.asarray(flux, float), x.shape)
    n = x.size
    out = np.full((n, 3), np.inf)
    n_group = np.ones(n, dtype=int)
    table = Table()
    if n == 0:
        for name in ("flux", "x", "y"):
            table[f"crlb_{name}_blend"] = np.zeros(0)
        table["n_group"] = n_group
        return table
    halves = _half_sizes(psf_model, x, y, box)
    ix = np.floor(x + 0.5).astype(int)
    iy = np.floor(y + 0.5).astype(int)
    weight = _weight_image(scene, sky, gain, read_noise, mask, saturation, bias)
    ny, nx = weight.shape
    tree = cKDTree(np.column_stack([ix, iy]))
    reach = 2 * int(halves.max())
    near = tree.query_ball_point(np.column_stack([ix, iy]), reach, p=np.inf)
    groups = []
    for i, cand in enumerate(near):
        cand = np.asarray([j for j in cand if j != i], dtype=int)
        if cand.size:
            gap = np.maximum(np.abs(ix[cand] - ix[i]), np.abs(iy[cand] - iy[i]))
            cand = np.sort(cand[gap <= halves[i] + halves[cand]])
        groups.append(cand.tolist())
    needed = sorted({i for i, g in enumerate(groups) if g} | {j for g in groups for j in g})
    stamps: dict[int, tuple] = {}
    for half in np.unique(halves[needed]) if needed else []:
        idx = [i for i in needed if halves[i] == half]
        chunk = _chunk(half, order)
        for start in range(0, len(idx), chunk):
            sel = np.asarray(idx[start:start + chunk])
            _, _, P, Px, Py = psf_model.stamps(x[sel], y[sel], int(half), order=order,
                                               derivatives=True)
            for k, i in enumerate(sel):
                stamps[i] = np.stack([P[k], flux[i] * Px[k], flux[i] * Py[k]])
    lonely = np.flatnonzero([not g for g in groups])
    if lonely.size:
        alone = cramer_rao_bounds(psf_model, x[lonely], y[lonely], flux[lonely], sky, gain,
                                  read_noise, box, scene=scene, mask=mask,
                                  saturation=saturation, bias=bias, order=order)
        out[lonely] = np.column_stack([alone["crlb_flux"], alone["crlb_x"], alone["crlb_y"]])
    for i, group in enumerate(groups):
        if not group:
            continue
        members = [i] + group
        x0 = max(min(ix[m] - halves[m] for m in members), 0)
        x1 = min(max(ix[m] + halves[m] for m in members) + 1, nx)
        y0 = max(min(iy[m] - halves[m] for m in members), 0)
        y1 = min(max(iy[m] + halves[m] for m in members) + 1, ny)
        if x1 <= x0 or y1 <= y0:
            continue
        D = np.zeros((3 * len(members), y1 - y0, x1 - x0))
        for k, m in enumerate(members):
            h = halves[m]
            a0, a1 = max(iy[m] - h, y0), min(iy[m] + h + 1, y1)
            b0, b1 = max(ix[m] - h, x0), min(ix[m] + h + 1, x1)
            if a1 <= a0 or b1 <= b0:
                continue
            D[3 * k:3 * k + 3, a0 - y0:a1 - y0, b0 - x0:b1 - x0] = stamps[m][
                :, a0 - iy[m] + h:a1 - iy[m] + h, b0 - ix[m] + h:b1 - ix[m] + h]
        Dw = D.reshape(len(D), -1)
        fisher = (Dw * weight[y0:y1, x0:x1].ravel()) @ Dw.T
        usable = np.flatnonzero(np.diag(fisher) > 0)     # members with no pixels drop out
        if usable.size < 3 or not np.array_equal(usable[:3], [0, 1, 2]):
            continue
        cov = _safe_inv(fisher[np.ix_(usable, usable)][None])
        out[i] = [_sqrt_diag(cov, k)[0] for k in range(3)]
        n_group[i] = len(members)
    for k, name in enumerate(("flux", "x", "y")):
        table[f"crlb_{name}_blend"] = out[:, k]
    table["n_group"] = n_group
    return table
