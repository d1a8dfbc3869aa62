"""The phot_python pipeline for one frame: background, detection, PSF, simultaneous
fitting in passes (detect, fit, subtract, detect again on the residual), errors,
flags, aperture photometry and products.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from bhcore.errors import PhotometryError

from .detection import (Background, detect, estimate_background, estimate_fwhm,
                        residual_background)
from .fitting import Fitter, FitOptions, Scene, Stars
from .psf_build import build_psf, cut_stamps, select_psf_stars

@dataclass
class Config:
    """Resolved settings of one run (plugin settings plus the camera values)."""

    gain: float | None = None
    read_noise_adu: float | None = None
    saturation: float | None = None
    psf_model: str = "auto"
    psf_degree: int | None = None
    max_psf_stars: int = 100
    fwhm: float | None = None          # first guess only
    detect_threshold: float = 3.5
    deblend_cont: float = 0.001
    min_snr: float = 5.0
    max_passes: int = 3
    fit_sky: bool = False
    fit_radius_fwhm: float = 3.0
    aperture_radii_fwhm: tuple = (1.0, 1.5, 2.0, 3.0)
    annulus_fwhm: tuple = (4.0, 6.0)
    background_box: int = 64
    psf_error_floor: float = 0.005
    saturation_grow: int = 0
    flux_calibration: str = "auto"
    products_dir: str | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "Config":
        known = {k: settings[k] for k in cls.__dataclass_fields__
                 if k in settings and settings[k] is not None}
        for key in ("aperture_radii_fwhm", "annulus_fwhm"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)


class Context:
    """Pixels and noise of a frame as the fit sees them (sky-subtracted data and
    sky variance follow the background whenever it is replaced)."""

    def __init__(self, data, bad, flagimg, bg: Background, gain, gain_known, notes):
        self.data = data
        self.bad = bad              # no information: masked, non-finite, saturated
        self.flagimg = flagimg      # per-pixel flag bits (1 saturated, 16 masked)
        self.gain = gain
        self.gain_known = gain_known
        self.notes = notes
        self.bg = bg

    @property
    def bg(self) -> Background:
        return self._bg

    @bg.setter
    def bg(self, value: Background):
        self._bg = value
        self.dsub = self.data - value.sky
        self.varsky = value.rms ** 2

    def scene(self, psf, dsub=None, varsky=None) -> Scene:
        return Scene(self.dsub if dsub is None else dsub,
                     self.varsky if varsky is None else varsky, self.bad,
                     1.0 / self.gain, psf)


def prepare(frame, cfg: Config) -> Context:
    """Native float pixels, bad-pixel and flag images, first background."""
    data = np.array(frame.data, dtype=np.float64, order="C")
    if data.ndim != 2:
        raise PhotometryError(f"expected a 2-D image, got shape {data.shape}",
                              path=getattr(frame, "path", None))
    masked = ~np.isfinite(data)
    if frame.mask is not None:
        masked |= np.asarray(frame.mask, bool)
    if masked.all():
        raise PhotometryError("every pixel is masked", path=getattr(frame, "path", None))
    if masked.any():
        data[masked] = np.median(data[~masked])
    sat = np.zeros(data.shape, bool)
    notes = {}
    if cfg.saturation is None:
        level = _plateau(data, masked)
        if level is not None:
            cfg.saturation = level
            notes["saturation_assumed"] = (f"no saturation level given: {level:g} ADU, "
                                           "the frame's clipped maximum, assumed")
    if cfg.saturation is not None and cfg.saturation > 0:
        sat = data >= cfg.saturation * (1.0 - 1e-6)
        if cfg.saturation_grow > 0 and sat.any():
            from scipy.ndimage import binary_dilation
            sat = binary_dilation(sat, iterations=int(cfg.saturation_grow))
    bad = masked | sat
    flagimg = (sat.astype(np.uint8) * 1) | (masked.astype(np.uint8) * 16)
    gain = cfg.gain
    if gain is None or not gain > 0:
        gain = 1.0
        notes["gain_assumed"] = "no gain given: 1 e/ADU assumed for the stars' noise"
    bg = estimate_background(data, bad, box=cfg.background_box)
    return Context(data, bad, flagimg, bg, float(gain), "gain_assumed" not in notes, notes)


def _plateau(data, masked):
    """The frame's maximum when several pixels sit exactly on it (a clipped, i.e.
    saturated, level), else None."""
    good = data[~masked]
    if good.size == 0:
        return None
    top = float(good.max())
    n_top = int(np.count_nonzero(good == top))
    return top if n_top >= 4 else None


def find_psf(ctx: Context, cfg: Config, x, y, flux, snr, peak, fwhm, *, resid=None,
             warm=None, quick=False):
    """Select PSF stars among (x, y, ...) and fit the PSF; neighbours subtracted when
    ``resid`` (data - sky - all stars) is given together with ``warm`` (the PSF that
    made that model)."""
    shape = ctx.data.shape
    half = int(np.clip(np.ceil(3.0 * fwhm), 4, 30))
    ix = np.clip(np.round(x).astype(int), 0, shape[1] - 1)
    iy = np.clip(np.round(y).astype(int), 0, shape[0] - 1)
    idx = select_psf_stars(x, y, flux, snr, peak, shape, fwhm, half,
                           saturation=cfg.saturation, sky=ctx.bg.sky[iy, ix],
                           bad=ctx.bad, neighbours_subtracted=resid is not None,
                           max_stars=cfg.max_psf_stars, min_snr=30.0)
    if idx.size < 5:
        idx = select_psf_stars(x, y, flux, snr, peak, shape, fwhm, half,
                               saturation=cfg.saturation, sky=ctx.bg.sky[iy, ix],
                               bad=ctx.bad, neighbours_subtracted=resid is not None,
                               max_stars=cfg.max_psf_stars, min_snr=10.0)
    degree = cfg.psf_degree
    if idx.size < 3:
        idx = select_psf_stars(x, y, flux, snr, peak, shape, fwhm, half,
                               saturation=cfg.saturation, sky=ctx.bg.sky[iy, ix],
                               bad=ctx.bad, neighbours_subtracted=True,
                               max_stars=cfg.max_psf_stars, min_snr=5.0)
        degree = 0
    if idx.size == 0:
        if warm is not None:
            return warm, {"psf_fallback": "kept the previous PSF"}
        from .psf_build import initial_psf
        kind = "gaussian" if cfg.psf_model == "gaussian" else "moffat"
        psf = initial_psf(kind, shape, fwhm)
        return psf, {"psf_fallback": f"no clean star: {kind} of FWHM {fwhm:.2f} px assumed",
                     **psf.describe()}
    stamps = None
    if resid is not None:
        stamps = cut_stamps(resid, ctx.varsky, ctx.bad, x[idx], y[idx], half, 1 / ctx.gain)
        own = warm.stamps(x[idx], y[idx], half) * flux[idx][:, None, None]
        stamps.ds = np.where(stamps.bad, 0.0, stamps.ds + own)
    return build_psf(ctx.dsub, ctx.varsky, ctx.bad, x[idx], y[idx], flux[idx], fwhm,
                     1.0 / ctx.gain, model=cfg.psf_model, degree=degree,
                     warm=warm, stamps=stamps, quick=quick)


def fit_options(cfg: Config, fit_positions=True) -> FitOptions:
    # a local sky needs the whole box around every star to be pinned down
    low = cfg.fit_radius_fwhm if cfg.fit_sky else 1.5
    return FitOptions(fit_positions=fit_positions, fit_sky=cfg.fit_sky,
                      fit_radius=(low, cfg.fit_radius_fwhm))


def run(frame, cfg: Config):
    """Measure every star; returns (Stars, Fitter, Context, psf, report)."""
    t0 = time.perf_counter()
    ctx = prepare(frame, cfg)
    shape = ctx.data.shape
    fwhm = cfg.fwhm or 3.0
    det = detect(ctx.dsub, ctx.varsky, ctx.bad, fwhm, cfg.detect_threshold,
                 deblend_cont=cfg.deblend_cont)
    for _ in range(2):
        est = estimate_fwhm(ctx.dsub, det, fwhm, cfg.saturation, ctx.bg.global_sky)
        # the matched filter hardly cares about a FWHM a quarter off
        if est is None or abs(est / fwhm - 1.0) < 0.25:
            break
        fwhm = est
        det = detect(ctx.dsub, ctx.varsky, ctx.bad, fwhm, cfg.detect_threshold,
                     deblend_cont=cfg.deblend_cont)
    report = {"n_detected_first": int(det.n), "fwhm_first_guess": round(fwhm, 3)}
    timing = {"detect": time.perf_counter() - t0}
    if det.n == 0 or not np.any(det.snr >= cfg.min_snr):
        return None, None, ctx, None, report
    psf, psf_report = find_psf(ctx, cfg, det.x, det.y, det.flux, det.snr, det.peak, fwhm,
                               quick=cfg.max_passes > 1)
    timing["psf"] = time.perf_counter() - t0
    fwhm = float(np.median(psf.fwhm_at(det.x, det.y)))
    # initial fluxes: the matched filter's amplitude
    stars = Stars.new(det.x, det.y, np.maximum(det.flux, 1.0))
    fitter = Fitter(ctx.scene(psf), stars, fit_options(cfg)).run()
    timing["fit1"] = time.perf_counter() - t0
    eps = max(cfg.psf_error_floor, float(psf_report.get("psf_mismatch", 0.0)))
    passes = 1
    for p in range(1, max(cfg.max_passes, 1)):
        st = fitter.stars
        live = st.alive
        # sky again, on the residual image (stars removed), then the PSF with
        # neighbours subtracted, on the first repeat
        if p == 1:
            ctx.bg = residual_background(ctx.dsub - fitter.model, ctx.bad, fitter.model,
                                         ctx.gain, box=cfg.background_box,
                                         previous=ctx.bg)
            resid = ctx.dsub - fitter.model
            snr_fit = st.f / np.maximum(np.sqrt(1.0 / np.maximum(fitter.D[:, 0, 0], 1e-30)),
                                        1e-30)
            peak = st.f * psf.quad_at(st.x, st.y)[4]
            try:
                psf2, psf_report2 = find_psf(ctx, cfg, st.x[live], st.y[live],
                                             st.f[live], snr_fit[live], peak[live], fwhm,
                                             resid=resid, warm=psf)
                psf, psf_report = psf2, psf_report2
            except PhotometryError:
                pass
            stars = st.subset(live)
            fitter = Fitter(ctx.scene(psf), stars, fit_options(cfg)).run()
            eps = max(cfg.psf_error_floor, float(psf_report.get("psf_mismatch", 0.0)))
        st = fitter.stars
        resid = ctx.dsub - fitter.model
        new = detect(resid, ctx.varsky, ctx.bad, fwhm, cfg.detect_threshold,
                     deblend_cont=cfg.deblend_cont, model=fitter.model,
                     gain_inv=1.0 / ctx.gain, eps=eps)
        new = _new_sources(new, st, fwhm)
        passes += 1
        report[f"n_new_pass{p + 1}"] = int(new.n)
        if new.n == 0:
            break
        last_pass = new.n < 0.03 * st.alive.sum()
        added = fitter.add_stars(new.x, new.y, np.maximum(new.flux, 1.0))
        fitter.run(active=added)
        if last_pass:
            break     # a few more stars: another pass would find next to nothing
    timing["passes"] = time.perf_counter() - t0
    report.update(psf_report)
    report["passes"] = passes
    report["timing"] = {k: round(v, 3) for k, v in timing.items()}
    report["psf_mismatch_eps"] = round(eps, 5)
    return fitter.stars, fitter, ctx, psf, report


def _new_sources(det, st: Stars, fwhm):
    """Residual detections that are not an existing star seen again."""
    if det.n == 0:
        return det
    from scipy.spatial import cKDTree
    live = st.alive
    if not live.any():
        return det
    tree = cKDTree(np.column_stack([st.x[live], st.y[live]]))
    d, _ = tree.query(np.column_stack([det.x, det.y]))
    return det.subset(d > 0.5 * fwhm)


def write_residual(frame, ctx: Context, model: np.ndarray, products_dir) -> str:
    """Write data - stars (sky kept) as ``<stem>_residual.fits``; returns the path."""
    from bhcore.frame import write_residual as write_image
    path = write_image(frame, ctx.data - model, products_dir,
                       "phot_python: PSF-fitted stars subtracted (sky kept)")
    return str(path)


def mag_from_flux(flux, err):
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        merr = np.where(flux > 0, 2.5 / math.log(10.0) * err / np.abs(flux), np.nan)
    return mag, merr
