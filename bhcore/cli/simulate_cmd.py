"""``bhcore simulate``: write a synthetic night of frames with their truth tables.

Thin by design: it parses options, calls ``bhcore.testing.make_night`` and prints
where the files went. Defaults match the frames the peers were measured on
(Moffat beta 2.8, FWHM +24 % to the corners, gain 1.6, read noise 9 e, sky 600 ADU).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from ..errors import ConfigError

console = Console(highlight=False)


def simulate(
    out: Annotated[Path, typer.Argument(help="Folder for the FITS frames and truth tables.")],
    n_frames: Annotated[int, typer.Option(min=1, help="Number of exposures.")] = 10,
    size: Annotated[int, typer.Option(min=16, help="Detector size in pixels (square).")] = 512,
    n_stars: Annotated[int, typer.Option(min=0, help="Stars per detector area.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 1,
    psf: Annotated[str, typer.Option(help="PSF profile: moffat or gaussian.")] = "moffat",
    fwhm: Annotated[float, typer.Option(help="FWHM at the centre, px.")] = 3.0,
    beta: Annotated[float, typer.Option(help="Moffat beta.")] = 2.8,
    fwhm_gradient: Annotated[float, typer.Option(
        help="Fractional FWHM growth from centre to corner.")] = 0.24,
    sky: Annotated[float, typer.Option(help="Sky level, ADU per pixel.")] = 600.0,
    gain: Annotated[float, typer.Option(help="Gain, e-/ADU.")] = 1.6,
    read_noise: Annotated[float, typer.Option(help="Read noise, e-.")] = 9.0,
    saturation: Annotated[Optional[float], typer.Option(
        help="Saturation level, ADU (pixels clipped, stars flagged).")] = None,
    exptime: Annotated[float, typer.Option(help="Exposure time, s.")] = 60.0,
    cadence: Annotated[float, typer.Option(help="Seconds between exposure starts.")] = 90.0,
    drift: Annotated[float, typer.Option(help="Drift along x and y, px per frame.")] = 0.4,
    transit_rp: Annotated[float, typer.Option(
        help="Planet-to-star radius ratio of the target's transit.")] = 0.1,
    variable_amplitude: Annotated[float, typer.Option(
        help="Semi-amplitude of the variable star.")] = 0.05,
    wcs: Annotated[str, typer.Option(help="Header WCS: tan, tan-sip or none.")] = "tan",
    start: Annotated[str, typer.Option(help="UTC start of the first exposure.")] =
        "2024-08-15T21:30:00",
) -> None:
    """Write a synthetic night (frames, per-frame truth, light-curve truth) to OUT."""
    from ..testing.night import make_night

    if psf not in ("moffat", "gaussian"):
        raise ConfigError(f"--psf must be 'moffat' or 'gaussian', not '{psf}'")
    if wcs not in ("tan", "tan-sip", "none"):
        raise ConfigError(f"--wcs must be 'tan', 'tan-sip' or 'none', not '{wcs}'")
    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("frames", total=n_frames)
        night = make_night(
            out, n_frames=n_frames, shape=(size, size), n_stars=n_stars, seed=seed,
            psf=psf, fwhm=fwhm, beta=beta, fwhm_gradient=fwhm_gradient, sky=sky,
            gain=gain, read_noise=read_noise, saturation=saturation, exptime=exptime,
            cadence=cadence, drift=(drift, drift), transit_rp=transit_rp,
            variable_amplitude=variable_amplitude,
            wcs="tan" if wcs == "none" else wcs, header_wcs=wcs != "none",
            start=start, keep_frames=False,
            progress=lambda done, total: bar.update(task, completed=done))
    summary = RichTable(title=f"synthetic night in {out}", show_header=True)
    summary.add_column("what")
    summary.add_column("where")
    first, last = night.paths[0], night.paths[-1]
    summary.add_row(f"{len(night.paths)} frames (FITS)",
                    f"{first.name} .. {last.name}" if len(night.paths) > 1 else first.name)
    summary.add_row("per-frame truth (ECSV)", "frame_NNNN.truth.ecsv")
    summary.add_row("sky catalogue", "catalog.ecsv")
    summary.add_row("light-curve truth", "lightcurve.ecsv")
    console.print(summary)
    depth, dip = night.lightcurve.meta["transit_depth"], night.lightcurve.meta["transit_dip"]
    console.print(f"target id {night.target_id} (transit depth (Rp/R*)^2 {depth:.4f}, "
                  f"deepest dip {dip:.4f}), "
                  f"variable id {night.variable_id}; "
                  f"{len(night.catalog)} stars in the sky catalogue.")
