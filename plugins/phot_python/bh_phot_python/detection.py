"""Sky background, noise map and source detection (sep).

The background and its noise come from sep's mesh estimator, first on the frame and
later on the residual image (stars subtracted), which removes the bias that star
light puts into a dense field's sky. sep's clipped noise estimate runs a little low,
so the noise map is rescaled by the ratio of a MAD-based estimate to sep's global
value. Detection is sep's matched filter (a Gaussian of the PSF's FWHM) with
multi-threshold deblending; on a residual image the noise also carries the
subtracted stars' Poisson noise and a fraction of their light for PSF mismatch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

import math

from bhcore.errors import PhotometryError
from numba import njit, prange

_PIXSTACK = 0


def _native(a, dtype=np.float64):
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("="))


def _ensure_pixstack(npix: int):
    global _PIXSTACK
    need = int(max(300000, min(npix, 60_000_000)))
    if need > _PIXSTACK:
        sep.set_extract_pixstack(need)
        sep.set_sub_object_limit(4096)
        _PIXSTACK = need


@dataclass
class Background:
    sky: np.ndarray         # ADU per pixel
    rms: np.ndarray         # ADU, 1 sigma per pixel (sky + read noise)
    global_rms: float
    noise_scale: float      # MAD / sep correction applied to rms

    @property
    def global_sky(self) -> float:
        return float(np.median(self.sky[::7, ::7]))


def estimate_background(image, bad, box=64, filt=3, extra_mask=None) -> Background:
    """sep background and noise of ``image`` (already stars-subtracted if wanted)."""
    data = _native(image)
    mask = bad if extra_mask is None else (bad | extra_mask)
    ny, nx = data.shape
    bw = int(min(box, max(nx // 2, 8)))
    bh = int(min(box, max(ny // 2, 8)))
    try:
        bk = sep.Background(data, mask=_native(mask, np.uint8), bw=bw, bh=bh, fw=filt,
                            fh=filt)
    except Exception as exc:  # sep raises plain Exception subclasses
        raise PhotometryError(f"background estimation failed: {exc}") from exc
    sky = np.asarray(bk.back(), dtype=np.float64)
    rms = np.asarray(bk.rms(), dtype=np.float64)
    # sep's sigma-clipped rms runs low by ~1.5 %: rescale with a MAD estimate
    step = max(1, int(np.sqrt(data.size / 5e5)))
    sub = (data - sky)[::step, ::step]
    ok = ~mask[::step, ::step]
    norm = sub[ok] / np.maximum(rms[::step, ::step][ok], 1e-12)
    scale = 1.0
    if norm.size > 1000:
        med = np.median(norm)
        mad = 1.4826 * np.median(np.abs(norm - med))
        if np.isfinite(mad) and 0.5 < mad < 2.0:
            scale = float(mad)
    rms = rms * scale
    good_rms = rms[~bad] if (~bad).any() else rms.ravel()
    return Background(sky, rms, float(np.median(good_rms)), scale)


@njit(cache=True, parallel=True)
def _mesh_stats(resid, model, ignore, ey, ex, rms, ginv, mean, var, cnt, size):
    """Per mesh: 4-sigma clipped mean of the residual and mean of
    (r - mean)^2 - star light / gain, each pixel's sigma including its star."""
    nby = ey.size - 1
    nbx = ex.size - 1
    for t in prange(nby * nbx):
        a = t // nbx
        b = t % nbx
        mu = 0.0
        for it in range(4):
            s = 0.0
            n = 0
            lim = 5.0 if it == 0 else 4.0
            for y in range(ey[a], ey[a + 1]):
                for x in range(ex[b], ex[b + 1]):
                    if ignore[y, x]:
                        continue
                    m = max(model[y, x], 0.0)
                    sc = math.sqrt(rms * rms + m * ginv)
                    r = resid[y, x]
                    if abs(r - mu) < lim * sc:
                        s += r
                        n += 1
            mu = s / n if n > 0 else 0.0
        s2 = 0.0
        n = 0
        tot = 0
        for y in range(ey[a], ey[a + 1]):
            for x in range(ex[b], ex[b + 1]):
                tot += 1
                if ignore[y, x]:
                    continue
                m = max(model[y, x], 0.0)
                sc = math.sqrt(rms * rms + m * ginv)
                r = resid[y, x]
                if abs(r - mu) < 4.0 * sc:
                    s2 += (r - mu) * (r - mu) - m * ginv
                    n += 1
        mean[a, b] = mu
        var[a, b] = s2 / n if n > 0 else 0.0
        cnt[a, b] = n
        size[a, b] = tot


def residual_background(resid, bad, model, gain, box=64, filt=3, core_sigma=5.0,
                        previous: Background | None = None) -> Background:
    """Sky and noise from the residual image (data minus every fitted star).

    With the stars gone the sky's *mean* is what the PSF model needs (a mode
    estimator, like sep's, sits below the mean of Poisson sky counts by about a
    third of the skewness times sigma). Per mesh: a 4-sigma clipped mean of the
    residual, and a clipped mean of (r^2 - star light / gain), which is the sky
    variance with the stars' own Poisson noise taken out. Pixels in the cores of
    stars (model above ``core_sigma`` sky sigmas) are left out. Meshes are median
    filtered and interpolated with a bicubic spline through their centres.
    """
    from scipy.ndimage import median_filter

    ny, nx = resid.shape
    prev_rms = previous.global_rms if previous is not None else float(
        1.4826 * np.median(np.abs(resid[~bad] - np.median(resid[~bad]))))
    ignore = bad | (model > core_sigma * prev_rms)
    nby, nbx = max(1, int(round(ny / box))), max(1, int(round(nx / box)))
    ey = np.linspace(0, ny, nby + 1).astype(np.int64)
    ex = np.linspace(0, nx, nbx + 1).astype(np.int64)
    mean = np.zeros((nby, nbx))
    var = np.zeros((nby, nbx))
    cnt = np.zeros((nby, nbx), np.int64)
    size = np.zeros((nby, nbx), np.int64)
    _mesh_stats(_native(resid), _native(model), ignore, ey, ex, float(prev_rms),
                1.0 / gain, mean, var, cnt, size)
    var /= 0.99933          # a 4-sigma clip removes 0.07 % of a Gaussian's variance
    thin = (cnt < 0.3 * size) | (cnt < 50)
    mean[thin] = np.nan
    var[thin] = np.nan
    if np.all(np.isnan(mean)):
        raise PhotometryError("no pixel left to estimate the sky from")
    for grid in (mean, var):
        holes = np.isnan(grid)
        if holes.any():
            grid[holes] = np.nanmedian(grid)
    if filt > 1 and min(nby, nbx) >= 3:
        mean = median_filter(mean, size=filt, mode="nearest")
        var = median_filter(var, size=filt, mode="nearest")
    var = np.clip(var, 1e-6 * np.nanmax(var) + 1e-12, None)
    cy = 0.5 * (ey[:-1] + ey[1:]) - 0.5
    cx = 0.5 * (ex[:-1] + ex[1:]) - 0.5

    def basis(centres, n):
        """Cubic interpolating-spline weights from mesh centres to pixels (n, m)."""
        m = centres.size
        if m == 1:
            return np.ones((n, 1))
        from scipy.interpolate import make_interp_spline
        return make_interp_spline(centres, np.eye(m), k=min(3, m - 1))(np.arange(n))
    by, bx = basis(cy, ny), basis(cx, nx)

    bx32 = np.ascontiguousarray(bx.T, dtype=np.float32)

    def expand(grid):
        return ((by @ grid).astype(np.float32) @ bx32).astype(np.float64)
    offset = expand(mean)
    rms = np.sqrt(np.clip(expand(var), 1e-12, None))
    base = previous.sky if previous is not None else 0.0
    return Background(base + offset, rms, float(np.median(rms[::4, ::4][~bad[::4, ::4]])),
                      1.0)


def gaussian_kernel(fwhm: float) -> np.ndarray:
    sigma = max(fwhm, 1.0) / 2.3548
    h = int(np.ceil(2.0 * sigma)) + 1
    k = np.arange(-h, h + 1)
    g = np.exp(-0.5 * (k[:, None] ** 2 + k[None, :] ** 2) / sigma ** 2)
    return (g / g.sum()).astype(np.float32)


@njit(cache=True, parallel=True)
def _matched(image, var, model, ginv, eps, bad, g, snr, amp):
    """Gaussian matched filter (separable): S/N and amplitude maps in one go.

    The variance of a pixel is var + model / gain + (eps model)^2 (the sky, the
    Poisson noise of subtracted stars and their PSF mismatch)."""
    ny, nx = image.shape
    h = g.size // 2
    g2 = g * g
    num = np.zeros((ny, nx), dtype=np.float32)
    den = np.zeros((ny, nx), dtype=np.float32)
    use_model = model.shape[0] == ny
    for y in prange(ny):
        iv = np.zeros(nx + 2 * h)
        di = np.zeros(nx + 2 * h)
        for x in range(nx):
            if not bad[y, x]:
                v = var[y, x]
                if use_model:
                    m = max(model[y, x], 0.0)
                    v += m * ginv + (eps * m) ** 2
                v = 1.0 / v
                iv[x + h] = v
                di[x + h] = image[y, x] * v
        for x in range(nx):
            a = 0.0
            b = 0.0
            for k in range(g.size):
                a += g[k] * di[x + k]
                b += g2[k] * iv[x + k]
            num[y, x] = a
            den[y, x] = b
    for y in prange(ny):
        acc_n = np.zeros(nx)
        acc_d = np.zeros(nx)
        for k in range(g.size):
            yy = y + k - h
            if yy < 0 or yy >= ny:
                continue
            w = g[k]
            w2 = w * w
            for x in range(nx):
                acc_n[x] += w * num[yy, x]
                acc_d[x] += w2 * den[yy, x]
        for x in range(nx):
            dd = acc_d[x]
            if dd > 0.0:
                snr[y, x] = acc_n[x] / math.sqrt(dd)
                amp[y, x] = acc_n[x] / dd
            else:
                snr[y, x] = 0.0
                amp[y, x] = 0.0


def matched_filter(image, var, bad, fwhm, model=None, gain_inv=0.0, eps=0.0):
    """S/N and amplitude maps of a Gaussian (FWHM ``fwhm``) matched filter.

    With k the normalised kernel and v the variance: amplitude = sum(k d / v) /
    sum(k^2 / v), S/N = sum(k d / v) / sqrt(sum(k^2 / v)); masked pixels carry no
    weight. For a star whose PSF is close to the kernel the amplitude is its flux.
    """
    sigma = max(fwhm, 1.0) / 2.3548
    h = int(np.ceil(3.0 * sigma))
    k = np.arange(-h, h + 1)
    g = np.exp(-0.5 * k * k / sigma ** 2)
    g /= g.sum()
    snr = np.empty(image.shape)
    amp = np.empty(image.shape)
    model = np.zeros((0, 0)) if model is None else _native(model)
    _matched(_native(image), _native(var), model, float(gain_inv), float(eps),
             np.ascontiguousarray(bad, dtype=np.bool_), g, snr, amp)
    return snr, amp


@dataclass
class Detections:
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    peak: np.ndarray
    snr: np.ndarray
    flag: np.ndarray

    @property
    def n(self) -> int:
        return self.x.size

    def subset(self, keep) -> "Detections":
        return Detections(*(getattr(self, k)[keep] for k in
                            ("x", "y", "flux", "peak", "snr", "flag")))


def detect(image, var, bad, fwhm, threshold=3.5, minarea=3, deblend_cont=0.001,
           deblend_nthresh=16, model=None, gain_inv=0.0, eps=0.0) -> Detections:
    """Matched-filter detection with deblending on a sky-subtracted image.

    ``var``: sky variance; on a residual image pass the subtracted ``model`` too
    (its Poisson noise and ``eps`` times its light count as noise).

    The S/N map of the matched filter is thresholded and deblended by sep; each
    object's position is its S/N-weighted barycentre (its peak pixel when that is
    far off, as in blends), its flux the filter amplitude there.
    """
    data = _native(image)
    snr_map, amp = matched_filter(data, var, bad, fwhm, model, gain_inv, eps)
    _ensure_pixstack(data.size // 4)
    try:
        objs = sep.extract(_native(snr_map), threshold, mask=_native(bad, np.uint8),
                           minarea=minarea, filter_kernel=None,
                           deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont,
                           clean=False)
    except Exception as exc:  # sep raises plain Exception subclasses
        raise PhotometryError(f"source detection failed: {exc}") from exc
    if len(objs) == 0:
        z = np.zeros(0)
        return Detections(z, z, z, z, z, np.zeros(0, int))
    x = np.asarray(objs["x"], float)
    y = np.asarray(objs["y"], float)
    px, py = objs["xpeak"].astype(float), objs["ypeak"].astype(float)
    far = np.hypot(x - px, y - py) > 0.5 * fwhm
    x = np.where(far, px, x)
    y = np.where(far, py, y)
    ny, nx = data.shape
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    ipx = np.clip(objs["xpeak"].astype(int), 0, nx - 1)
    ipy = np.clip(objs["ypeak"].astype(int), 0, ny - 1)
    peak = np.maximum(data[iy, ix], data[ipy, ipx])
    return Detections(x, y, amp[ipy, ipx], peak, snr_map[ipy, ipx],
                      np.asarray(objs["flag"], int))


def half_light_radius(image, x, y, rmax):
    r50, _ = sep.flux_radius(_native(image), x, y, np.full(len(x), float(rmax)), 0.5,
                             subpix=5)
    return np.asarray(r50, float)


def estimate_fwhm(image, det: Detections, fwhm, saturation=None, sky=None):
    """FWHM from the half-light radius of bright, unblended detections.

    Blends and neighbours only make a half-light radius larger, never smaller, so
    the lower third of the distribution (not its median) is the stars'."""
    ny, nx = image.shape
    ok = (det.snr > 20) & (det.flag == 0)
    m = int(4 * fwhm) + 2
    ok &= (det.x > m) & (det.x < nx - 1 - m) & (det.y > m) & (det.y < ny - 1 - m)
    if saturation is not None:
        ok &= det.peak + (0.0 if sky is None else sky) < 0.7 * saturation
    if ok.sum() < 3:
        return None
    idx = np.flatnonzero(ok)[np.argsort(-det.snr[ok])][:200]
    r = half_light_radius(image, det.x[idx], det.y[idx], 3.0 * fwhm)
    r = r[r > 0.3]
    if r.size < 3:
        return None
    # half-light radius / FWHM is 0.5 for a Gaussian, ~0.65 for a Moffat beta 2.5-3
    return float(np.percentile(r, 33) / 0.58)
