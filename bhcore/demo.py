"""The built-in demo: simulate a night, run every stage, fit the transit, write the report.

Why these numbers: the demo should show the pipeline measuring something real, so
the night is long and bright enough for a precise transit: ~80 one-minute frames,
the transit (T14 half the night) in the middle with baseline on both sides, the
target at SNR ~1000 per frame and bright comparison stars, while the whole run
stays well under three minutes on two cores. The FWHM is a little wide (3.5 px)
so the brightest stars stay below the camera's 60000 ADU saturation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEMO_NIGHT = {"n_frames": 80, "n_stars": 200, "exptime": 60.0, "cadence": 90.0,
              "fwhm": 3.5, "target_flux": 6e5, "transit_rp": 0.14, "transit_b": 0.3,
              "flux_range": (2e3, 6e5), "mag_slope": 0.15, "blends": False}


@dataclass
class DemoRun:
    """What the demo did: the batch summary, the truth, the target's fit and the report."""

    summary: object
    night: object
    results: Path
    report: Path | None = None
    fit: object = None                     # TransitFit of the target, or None
    fit_error: str | None = None
    elapsed: float = 0.0
    lines: list[str] = field(default_factory=list)


def run_demo(out_dir, *, n_frames: int | None = None, size: int = 512, seed: int = 1,
             **parallel) -> DemoRun:
    """Simulate the demo night into ``out_dir/raw``, process it, fit and report."""
    from .registry import Registry
    from .runner import DEMO_ONAME, RunSummary, demo_overrides, run_batch
    from .testing import make_night
    start = time.perf_counter()
    out_dir = Path(out_dir)
    options = dict(DEMO_NIGHT, shape=(size, size), seed=seed, keep_frames=False)
    if n_frames is not None:
        options["n_frames"] = n_frames
    night = make_night(out_dir=out_dir / "raw", **options)
    registry = Registry()
    registry.ensure_builtin()
    summary = RunSummary()
    summary.stage_notes.append(f"simulated {len(night.paths)} frames ({len(night.catalog)} "
                               f"stars, a transit and a variable) into {out_dir / 'raw'}")
    parallel.setdefault("overrides", demo_overrides(out_dir / "raw" / "catalog.ecsv"))
    summary = run_batch(night.paths, registry.get(DEMO_ONAME), out_dir / "products",
                        summary=summary, **parallel)
    run = DemoRun(summary=summary, night=night, results=out_dir / "products")
    if summary.done:
        from .lightcurves import from_results
        from .lightcurves.transit import TransitFitError
        from .report import write_report
        lcs = from_results(run.results)
        target = night.catalog[night.catalog["id"] == night.target_id][0]
        try:
            run.fit = fit_target(lcs.lightcurve(lcs.find(float(target["ra"]),
                                                         float(target["dec"]))),
                                 night.lightcurve)
        except (TransitFitError, ValueError) as exc:
            run.fit_error = str(exc)
        run.report = write_report(run.results, None,
                                  target=(float(target["ra"]), float(target["dec"])))
    run.elapsed = time.perf_counter() - start
    run.lines = describe(run)
    return run


def fit_target(lc, truth):
    """Fit the transit to the target's ensemble light curve.

    The period, limb darkening and exposure come from the "ephemeris" (the
    simulation); the mid-time, radius ratio, a/R* and impact parameter are free and
    start from the light curve itself (its lowest smoothed point), not the truth.
    """
    from .lightcurves.transit import fit_transit
    ok = ~np.asarray(lc["upper_limit"], bool) & np.isfinite(np.asarray(lc["rel_flux"], float))
    t = np.asarray(lc["mjd"], float)[ok]
    f = np.asarray(lc["rel_flux"], float)[ok]
    e = np.asarray(lc["rel_flux_err"], float)[ok]
    smooth = np.array([np.median(f[max(0, i - 3):i + 4]) for i in range(f.size)])
    low = int(np.argmin(smooth))
    dip = max(1.0 - smooth[low] / np.median(f), 1e-4)
    meta = truth.meta
    return fit_transit(t, f, e, meta["transit_period_d"], t[low], rp=float(np.sqrt(dip)),
                       a=10.0, b=0.5, limb_darkening=tuple(meta["limb_darkening"]),
                       exposure_s=float(np.median(truth["exptime"])),
                       max_shift=0.5 * (t[-1] - t[0]))


def describe(run: DemoRun) -> list[str]:
    """Lines for the console: the target's fit next to the simulated truth, the report."""
    meta = run.night.lightcurve.meta
    lines = []
    if run.fit is not None:
        fit = run.fit
        depth, dip = meta["transit_depth"], meta["transit_dip"]
        dt = (fit.t0 - meta["transit_t0_mjd"]) * 1440.0
        lines.append(f"transit of the target: depth (Rp/R*)^2 {fit.depth * 100:.3f} ± "
                     f"{fit.depth_err * 100:.3f} % (simulated {depth * 100:.3f} %, off by "
                     f"{(fit.depth - depth) / depth * 100:+.1f} %); deepest dip "
                     f"{fit.dip * 100:.3f} ± {fit.dip_err * 100:.3f} % (simulated "
                     f"{dip * 100:.3f} %, off by {(fit.dip - dip) / dip * 100:+.1f} %)")
        lines.append(f"  mid-time MJD {fit.t0:.5f} ± {fit.t0_err * 1440:.2f} min (simulated "
                     f"{meta['transit_t0_mjd']:.5f}, off by {dt:+.2f} min); rp "
                     f"{fit.values['rp']:.4f} (simulated {meta['transit_rp']:.4f}), "
                     f"chi2/dof {fit.chi2_red:.2f}, out-of-transit rms "
                     f"{fit.rms_out * 100:.3f} %")
    elif run.fit_error:
        lines.append(f"transit of the target: not fitted ({run.fit_error})")
    if run.report is not None:
        lines.append(f"report with light curves -> {run.report}")
    lines.append(f"demo finished in {run.elapsed:.0f} s")
    return lines
