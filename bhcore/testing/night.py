"""A simulated observing night: a time series of frames of one field.

Why: light-curve and pipeline tests need frames that behave like a real run: the
telescope drifts (stars move on the detector), seeing and transparency change, one
star has a planetary transit and another is variable, and each frame carries the
header keywords an observatory writes. One star catalogue on the sky is shared by
all frames; each frame's pointing (CRVAL) follows the drift while the optics (FWHM
pattern, distortion) stay fixed to the detector, as in a real camera.

Light-curve truth is the relative flux averaged over each exposure (what ideal
differential photometry measures, transparency divided out). The transit is a
Mandel-Agol model with quadratic limb darkening (the model fitters use), so a fit
can be judged against the injected parameters. Times are UTC MJD at mid-exposure;
no barycentric correction is applied (t0 is in the same time frame).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

import numpy as np
from astropy.coordinates import Angle
from astropy.table import Table

from ..lightcurves.transit import total_duration, transit_model
from .synthetic import (DEFAULT_CENTER, DEFAULT_DATE, StarField, _magnitudes, _mjd,
                        make_star_field, make_wcs, write_table)


@dataclass
class Night:
    """Frames (if kept), their truth tables, the sky catalogue and light-curve truth."""

    frames: list[StarField]
    truth: list[Table]
    catalog: Table
    lightcurve: Table
    target_id: int = 1
    variable_id: int = 2
    paths: list[Path] = field(default_factory=list)
    out_dir: Path | None = None


def semi_major_axis_for(duration: float, period: float, rp: float, b: float) -> float:
    """Scaled semi-major axis a/R* giving a transit of ``duration`` (T14, days)."""
    s = np.sin(np.pi * min(duration / period, 0.5))
    return float(np.sqrt(b**2 + max((1 + rp) ** 2 - b**2, 1e-12) / s**2))


def sinusoid(t, t_ref: float, period: float, amplitude: float):
    """Relative flux of a sinusoidal variable (amplitude is the half range)."""
    return 1.0 + amplitude * np.sin(2.0 * np.pi * (np.asarray(t, float) - t_ref) / period)


def _exposure_mean(func, start_mjd, exptime_s, n_sub=15):
    """Average of a light curve over each exposure (midpoint rule, n_sub samples)."""
    offsets = (np.arange(n_sub) + 0.5) / n_sub * exptime_s / 86400.0
    return func(np.asarray(start_mjd)[:, None] + offsets[None, :]).mean(axis=1)


def make_night(out_dir: str | Path | None = None, n_frames: int = 20, shape=(512, 512),
               n_stars: int = 300, *, center=DEFAULT_CENTER, pixel_scale: float = 0.6,
               rotation: float = 0.0, wcs: str = "tan", header_wcs: bool = True,
               start: str = DEFAULT_DATE, exptime: float = 60.0, cadence: float = 90.0,
               drift=(0.4, 0.25), jitter: float = 0.15, fwhm: float = 3.0,
               seeing_variation: float = 0.08, transparency_variation: float = 0.02,
               target_flux: float = 1.5e5, transit_rp: float = 0.1,
               transit_a: float | None = None, transit_b: float = 0.3,
               transit_t0: float | None = None, transit_period: float = 2.0,
               limb_darkening=(0.4, 0.25), variable_flux: float = 8e4,
               variable_amplitude: float = 0.05, variable_period: float | None = None,
               filter_name: str = "V", object_name: str = "SIM-TRANSIT",
               telescope: str = "BHCORE-SIM", seed=None, keep_frames: bool = True,
               progress: Callable[[int, int], None] | None = None,
               **field_kwargs) -> Night:
    """Simulate ``n_frames`` exposures of one field; write them if ``out_dir`` is given.

    ``cadence`` s between exposure starts; ``drift`` px per frame (x, y) plus
    Gaussian ``jitter`` px rms; ``seeing_variation`` fractional rms of the FWHM
    (correlated frame to frame); ``transparency_variation`` rms of the extinction
    (clouds only dim). The target (id 1) sits at the detector centre at mid-night,
    the variable (id 2) off-centre; both are kept clear of neighbours (5 FWHM).
    Transit: radius ratio ``transit_rp``, a/R* ``transit_a`` (default: the value
    that makes T14 half the run), impact parameter ``transit_b``, mid-time
    ``transit_t0`` (MJD UTC, default mid-run), ``transit_period`` (days) and
    quadratic ``limb_darkening`` (empty: uniform disc). ``lightcurve.meta`` records
    them, the true depth ``transit_depth`` = rp^2 and ``transit_dip``, the deepest
    fractional dip (before exposure averaging).
    Other keywords (psf, beta, fwhm_gradient, gain, read_noise, sky, saturation,
    flux_range, mag_range, zero_point, ...) go to :func:`make_star_field`.
    """
    if n_frames < 1:
        raise ValueError("n_frames must be at least 1")
    ny, nx = shape = (int(shape[0]), int(shape[1]))
    seeds = np.random.SeedSequence(seed).spawn(n_frames + 1)
    rng = np.random.default_rng(seeds[0])
    zero_point = field_kwargs.get("zero_point", 25.0)

    # --- per-frame conditions -------------------------------------------------------
    k = np.arange(n_frames)
    shifts = k[:, None] * np.asarray(drift, float)[None, :] + rng.normal(0, jitter, (n_frames, 2))
    z = np.zeros(n_frames)
    z[0] = rng.normal()
    for i in range(1, n_frames):
        z[i] = 0.7 * z[i - 1] + np.sqrt(1 - 0.49) * rng.normal()
    fwhms = fwhm * np.exp(seeing_variation * z)
    transparency = np.exp(-transparency_variation * np.abs(rng.normal(size=n_frames)))
    t_start = datetime.fromisoformat(start)
    starts = [t_start + timedelta(seconds=float(i * cadence)) for i in k]
    mjd_start = np.array([_mjd(s) for s in starts])
    span = ((n_frames - 1) * cadence + exptime) / 86400.0
    t0 = mjd_start[0] + span / 2.0 if transit_t0 is None else transit_t0
    a_rs = (semi_major_axis_for(0.5 * span, transit_period, transit_rp, transit_b)
            if transit_a is None else float(transit_a))
    shape_pars = (transit_period, transit_rp, a_rs, transit_b, tuple(limb_darkening))
    period = 0.8 * span if variable_period is None else variable_period

    def transit(t):
        t = np.asarray(t, float)
        return transit_model(t.ravel(), t0, *shape_pars).reshape(t.shape)

    def variable(t):
        return sinusoid(t, mjd_start[0], period, variable_amplitude)

    target_rel = _exposure_mean(transit, mjd_start, exptime)
    variable_rel = _exposure_mean(variable, mjd_start, exptime)

    # --- the sky catalogue, in frame-0 pixel coordinates first ----------------------
    lo = -0.5 - np.maximum(shifts.max(axis=0), 0) - 10.0
    hi = np.array([nx, ny]) - 0.5 - np.minimum(shifts.min(axis=0), 0) + 10.0
    area = np.prod(hi - lo) / (nx * ny)
    n_all = int(round(n_stars * area))
    x0 = rng.uniform(lo[0], hi[0], n_all)
    y0 = rng.uniform(lo[1], hi[1], n_all)
    f1, f2 = field_kwargs.pop("flux_range", None) or (300.0, 3e5)
    mag_range = field_kwargs.pop("mag_range", None) or (
        zero_point - 2.5 * np.log10(f2), zero_point - 2.5 * np.log10(f1))
    flux = 10 ** (-0.4 * (_magnitudes(rng, n_all, mag_range,
                                      field_kwargs.pop("mag_slope", 0.3)) - zero_point))
    mid = shifts[n_frames // 2]
    special_x = np.array([(nx - 1) / 2.0, (nx - 1) / 2.0 + nx / 4.0]) - mid[0] + rng.uniform(-0.5, 0.5, 2)
    special_y = np.array([(ny - 1) / 2.0, (ny - 1) / 2.0 - ny / 5.0]) - mid[1] + rng.uniform(-0.5, 0.5, 2)
    clear = np.ones(n_all, dtype=bool)
    for sx, sy in zip(special_x, special_y):
        clear &= np.hypot(x0 - sx, y0 - sy) > 5.0 * fwhm * (1 + 3 * seeing_variation)
    x0 = np.concatenate([special_x, x0[clear]])
    y0 = np.concatenate([special_y, y0[clear]])
    flux = np.concatenate([[target_flux, variable_flux], flux[clear]])
    ids = np.arange(1, x0.size + 1)
    sip = "default" if wcs == "tan-sip" else None
    base = make_wcs(shape, center, pixel_scale, rotation, sip)
    ra, dec = base.all_pix2world(x0, y0, 0)
    catalog = Table({"id": ids, "ra": ra, "dec": dec, "x0": x0, "y0": y0, "flux": flux,
                     "mag": zero_point - 2.5 * np.log10(flux),
                     "role": np.where(ids == 1, "target", np.where(ids == 2, "variable", ""))})
    catalog.meta.update({"description": "sky catalogue; x0, y0 are frame-0 pixels; flux "
                                        "is ADU per exposure at transparency 1"})

    # --- frames ----------------------------------------------------------------------
    out = Path(out_dir) if out_dir is not None else None
    frames, truths, paths = [], [], []
    crpix0 = base.wcs.crpix - 1.0
    for i in range(n_frames):
        pointing = base.all_pix2world([[crpix0[0] - shifts[i, 0], crpix0[1] - shifts[i, 1]]], 0)[0]
        w = make_wcs(shape, pointing, pixel_scale, rotation, sip)
        rel = np.ones(ids.size)
        rel[0], rel[1] = target_rel[i], variable_rel[i]
        stars = Table({"id": ids, "ra": ra, "dec": dec,
                       "flux": flux * transparency[i] * rel})
        cards = {"OBJECT": object_name, "FILTER": filter_name, "TELESCOP": telescope,
                 "INSTRUME": "SIMCAM",
                 "RA": Angle(pointing[0], "deg").to_string("hour", sep=":", precision=2),
                 "DEC": Angle(pointing[1], "deg").to_string("deg", sep=":", precision=1,
                                                           alwayssign=True),
                 "EQUINOX": 2000.0, "SIMFRAME": i + 1,
                 "SIMTRANS": (float(transparency[i]), "truth: transparency")}
        sf = make_star_field(shape, stars=stars, wcs=w, fwhm=float(fwhms[i]),
                             seed=seeds[i + 1], exptime=exptime,
                             date_obs=starts[i].isoformat(timespec="milliseconds"),
                             header_cards=cards, **field_kwargs)
        if not header_wcs:
            for key in w.to_header(relax=True):
                sf.header.remove(key, ignore_missing=True)
        sf.truth["rel_flux"] = rel[np.searchsorted(ids, sf.truth["id"])]
        sf.truth.meta["frame"] = i + 1
        truths.append(sf.truth)
        if out is not None:
            paths.append(sf.write(out / f"frame_{i + 1:04d}.fits"))
        if keep_frames:
            frames.append(sf)
        if progress is not None:
            progress(i + 1, n_frames)

    lightcurve = Table({
        "frame": k + 1,
        "date_obs": [s.isoformat(timespec="milliseconds") for s in starts],
        "mjd_mid": mjd_start + exptime / 2.0 / 86400.0,
        "jd_mid": mjd_start + exptime / 2.0 / 86400.0 + 2400000.5,
        "exptime": np.full(n_frames, float(exptime)),
        "fwhm": fwhms, "transparency": transparency,
        "shift_x": shifts[:, 0], "shift_y": shifts[:, 1],
        "target_rel_flux": target_rel, "variable_rel_flux": variable_rel,
        "target_flux": target_flux * transparency * target_rel,
        "variable_flux": variable_flux * transparency * variable_rel})
    lightcurve.meta.update({"transit_t0_mjd": float(t0), "transit_period_d": float(transit_period),
                            "transit_rp": float(transit_rp), "transit_a": a_rs,
                            "transit_b": float(transit_b),
                            "limb_darkening": [float(u) for u in limb_darkening],
                            "transit_depth": float(transit_rp) ** 2,
                            "transit_dip": float(1.0 - transit([t0])[0]),
                            "transit_duration_d": total_duration(transit_period, transit_rp,
                                                                 a_rs, transit_b),
                            "variable_period_d": float(period),
                            "variable_amplitude": float(variable_amplitude),
                            "variable_t_ref_mjd": float(mjd_start[0]),
                            "time_scale": "UTC, mid-exposure, not barycentric",
                            "rel_flux": "averaged over the exposure; transparency excluded"})
    if out is not None:
        write_table(catalog, out / "catalog.ecsv")
        write_table(lightcurve, out / "lightcurve.ecsv")
    return Night(frames=frames, truth=truths, catalog=catalog, lightcurve=lightcurve,
                 paths=paths, out_dir=out)
