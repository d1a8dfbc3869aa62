"""``bhcore transit``: fit a transit model to a source's light curve, print and plot it.

Thin: the light curve comes from a results folder (as ``bhcore lightcurve`` exports
it) or from an ECSV file, the fit from ``bhcore.lightcurves.transit``, the figure
from ``bhcore.results.plots``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from ..errors import ConfigError

console = Console(highlight=False)
PARAMETERS = ("t0", "rp", "a", "b")


def _floats(text: str, name: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, not '{text}'") from None
    if count is not None and len(values) not in (0, count):
        raise ConfigError(f"{name} takes {count} numbers (or none), not {len(values)}")
    return values


def _lightcurve(source: str, ra, dec, radius):
    from astropy.table import Table
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".ecsv":
        return Table.read(path, format="ascii.ecsv")
    if ra is None or dec is None:
        raise ConfigError("--ra and --dec are needed to pick the source from a results folder")
    from ..lightcurves import from_results
    lcs = from_results(source)
    return lcs.lightcurve(lcs.find(ra, dec, radius), upper_limits=False)


def transit(
    source: str = typer.Argument(..., help="Results folder/database/URL, or a light-curve "
                                 "ECSV written by `bhcore lightcurve --format ecsv`."),
    period: float = typer.Option(..., "--period", help="Orbital period, days."),
    t0: float = typer.Option(..., "--t0", help="Expected mid-transit time (BJD_TDB), or any "
                             "transit epoch: the one nearest the data is used."),
    ra: Optional[float] = typer.Option(None, "--ra", help="RA of the source, deg."),
    dec: Optional[float] = typer.Option(None, "--dec", help="Dec of the source, deg."),
    radius: float = typer.Option(2.0, "--radius", help="Search radius, arcsec."),
    rp: float = typer.Option(0.1, "--rp", help="Start (or fixed) radius ratio Rp/R*."),
    a: float = typer.Option(8.0, "--a", help="Start (or fixed) semi-major axis a/R*."),
    b: float = typer.Option(0.3, "--b", help="Start (or fixed) impact parameter."),
    free: str = typer.Option("t0,rp,a,b", "--free", help="Parameters to fit (others fixed)."),
    limb: str = typer.Option("0.4,0.25", "--limb-darkening", help="Quadratic u1,u2 ('' for a "
                             "uniform disc)."),
    exptime: Optional[float] = typer.Option(None, "--exptime", help="Exposure time, s "
                                            "(default: the light curve's, when it has one)."),
    baseline: int = typer.Option(1, "--baseline", min=0, max=3, help="Polynomial order of "
                                 "the out-of-transit trend."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of data, model "
                                        "and residuals."),
    as_json: bool = typer.Option(False, "--json", help="Print the fit as JSON."),
):
    """Fit a limb-darkened transit model (mid-time, depth, duration with errors)."""
    from ..lightcurves.transit import fit_transit
    chosen = tuple(p.strip() for p in free.split(",") if p.strip())
    unknown = sorted(set(chosen) - set(PARAMETERS))
    if unknown or not chosen:
        raise ConfigError(f"--free takes some of {', '.join(PARAMETERS)}, not '{free}'")
    lc = _lightcurve(source, ra, dec, radius)
    for column in ("bjd_tdb", "rel_flux", "rel_flux_err"):
        if column not in lc.colnames:
            raise ConfigError(f"{source}: the light curve has no '{column}' column")
    bjd = np.asarray(lc["bjd_tdb"], float)
    if not np.isfinite(bjd).any():
        raise ConfigError(f"{source}: the light curve has no barycentric times")
    epoch = t0 + period * np.round((np.nanmedian(bjd) - t0) / period)
    if exptime is None and "exptime" in lc.colnames:
        exptime = float(np.nanmedian(np.asarray(lc["exptime"], float)))
    fit = fit_transit(bjd, lc["rel_flux"], lc["rel_flux_err"], period, epoch, rp=rp, a=a,
                      b=b, free=chosen, limb_darkening=_floats(limb, "--limb-darkening", 2),
                      exposure_s=exptime, baseline_order=baseline)
    if plot is not None:
        from ..results.plots import transit_plot
        transit_plot(bjd, np.asarray(lc["rel_flux"], float),
                     np.asarray(lc["rel_flux_err"], float), fit, plot)
    if as_json:
        console.print_json(json.dumps({
            "t0": fit.t0, "t0_err": fit.t0_err, "depth": fit.depth, "depth_err": fit.depth_err,
            "dip": fit.dip, "dip_err": fit.dip_err,
            "duration_d": fit.duration, "values": fit.values, "errors": fit.errors,
            "chi2_red": fit.chi2_red, "rms_out": fit.rms_out, "n_points": fit.n_points,
            "n_rejected": fit.n_rejected}))
    else:
        console.print(fit.summary(), markup=False)
        if plot is not None:
            console.print(f"plot -> {plot}", markup=False)
