"""Frame statistics DAOPHOT needs before it starts: sky level and noise, and the FWHM.

The sky noise (``datapars.sigma``) comes from sep's background model; the FWHM
(``datapars.fwhmpsf``) from circular Moffat fits to up to 25 bright, unsaturated,
isolated stars found by sep.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

DEFAULT_FWHM_PX = 3.0


@dataclass(frozen=True)
class FrameStats:
    sky: float          # median background, ADU
    sigma: float        # background noise per pixel, ADU
    fwhm: float         # px
    fwhm_measured: bool
    n_fwhm_stars: int


def frame_stats(data: np.ndarray, bad: np.ndarray, saturation: float | None,
                fwhm: float | None = None) -> FrameStats:
    """Sky, sky noise and FWHM of ``data`` (float64, bad pixels given by ``bad``)."""
    import sep

    pixels = np.ascontiguousarray(data, dtype=np.float64)
    good = ~bad
    fill = float(np.median(pixels[good])) if good.any() else 0.0
    pixels = np.where(bad, fill, pixels)
    mask = bad if bad.any() else None
    box = int(min(64, max(16, min(pixels.shape) // 4)))
    background = sep.Background(pixels, mask=mask, bw=box, bh=box)
    sky = float(background.globalback)
    sigma = float(background.globalrms)
    if not np.isfinite(sigma) or sigma <= 0:
        values = pixels[good]
        sigma = float(1.4826 * np.median(np.abs(values - np.median(values)))) or 1.0
    if fwhm:
        return FrameStats(sky, sigma, float(fwhm), False, 0)
    measured, n = _fwhm_from_stars(pixels - background.back(), sigma, mask, saturation,
                                   background.back())
    if measured is None:
        log.info("no star suitable for a FWHM estimate; using %.1f px", DEFAULT_FWHM_PX)
        return FrameStats(sky, sigma, DEFAULT_FWHM_PX, False, 0)
    return FrameStats(sky, sigma, measured, True, n)


def _moffat(params, yy, xx):
    amp, x0, y0, alpha, beta = params
    return amp * (1.0 + ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha ** 2) ** (-beta)


def _residual(params, yy, xx, stamp):
    return (_moffat(params, yy, xx) - stamp).ravel()


def _fwhm_from_stars(sub, sigma, mask, saturation, back, max_stars: int = 25):
    import sep

    try:
        objects = sep.extract(sub, 10.0, err=sigma, mask=mask, minarea=5)
    except Exception as exc:  # noqa: BLE001 - sep raises bare Exception (buffer full)
        log.info("sep detection for the FWHM failed: %s", exc)
        return None, 0
    if len(objects) == 0:
        return None, 0
    x, y, peak = objects["x"], objects["y"], objects["peak"]
    ok = objects["flag"] == 0
    if saturation:
        ok &= (peak + back[np.clip(y.astype(int), 0, sub.shape[0] - 1),
                           np.clip(x.astype(int), 0, sub.shape[1] - 1)]) < 0.8 * saturation
    if len(x) > 1:
        dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        ok &= dist[:, 1] > 15.0
    order = np.argsort(-objects["flux"] * ok)
    fwhms = []
    half = 7
    for i in order[:max_stars]:
        if not ok[i]:
            break
        xc, yc = int(np.rint(x[i])), int(np.rint(y[i]))
        if (xc - half < 0 or yc - half < 0 or xc + half >= sub.shape[1]
                or yc + half >= sub.shape[0]):
            continue
        stamp = sub[yc - half:yc + half + 1, xc - half:xc + half + 1]
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
        start = [max(float(stamp.max()), 1.0), x[i] - xc, y[i] - yc, 2.0, 2.5]
        try:
            fit = least_squares(_residual, start, args=(yy, xx, stamp),
                                bounds=([0, -3, -3, 0.3, 1.0], [np.inf, 3, 3, 30, 20]))
        except ValueError:
            continue
        if not fit.success:
            continue
        alpha, beta = fit.x[3], fit.x[4]
        fwhm = 2.0 * alpha * np.sqrt(2.0 ** (1.0 / beta) - 1.0)
        if 0.8 < fwhm < 30:
            fwhms.append(fwhm)
    if len(fwhms) < 3:
        return None, len(fwhms)
    return float(np.median(fwhms)), len(fwhms)
