"""Stage commands: photometry, astrometry, calibrate, run, demo.

They are thin: argument parsing, one call into ``bhcore.pipeline``, and printing.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ..errors import ConfigError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def parse_overrides(items: list[str] | None) -> dict[str, object]:
    """``--set phot_python.fwhm=3.5`` pairs to a dict (numbers and booleans typed)."""
    out: dict[str, object] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        out[key.strip()] = _typed(raw.strip())
    return out


def _typed(raw: str):
    lowered = raw.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def observatory_settings(oname: str | None):
    """Resolved settings of ``oname`` from the registry (built from registry/ if empty)."""
    if not oname:
        return None
    from ..registry import Registry
    registry = Registry()
    registry.ensure_builtin()
    return registry.get(oname)


SET_HELP = "Backend setting override, e.g. phot_python.fwhm=3.5 (repeatable)."


def photometry(
    file: Path = typer.Argument(..., help="FITS frame (raw or standardised)."),
    backend: str = typer.Option(..., "--backend", "-b", help="Photometry backend name."),
    out: Path = typer.Option(..., "--out", "-o", help="Output catalogue (.ecsv)."),
    observatory: Optional[str] = typer.Option(None, "--observatory", help="ONAME."),
    products: Optional[Path] = typer.Option(None, "--products",
                                            help="Folder for the residual image."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Measure every source of FILE with one backend and write the SourceTable as ECSV."""
    from ..pipeline import run_photometry, write_table
    obs = observatory_settings(observatory)
    frame = _standardised(file, obs)
    extra = parse_overrides(overrides)
    if products is not None:
        extra["products_dir"] = str(products)
    table = run_photometry(frame, backend, obs=obs, overrides=extra)
    write_table(table, out)
    console.print(f"{len(table)} sources measured by {backend} in "
                  f"{table.meta.get('elapsed_s', 0):.2f} s -> {out}")


def _standardised(file: Path, obs):
    """The frame as the stages see it in a run: its header filled from the camera's
    obs.info entry (times, J2000 pointing, gain, saturation) when one is named."""
    from ..frame import read_frame
    from ..headers import read_standardised
    return read_standardised(file, obs) if obs is not None else read_frame(file)


def astrometry(
    file: Path = typer.Argument(..., help="FITS frame."),
    backend: Optional[List[str]] = typer.Option(None, "--backend", "-b",
                                                help="Backend(s), tried in order."),
    observatory: Optional[str] = typer.Option(None, "--observatory", help="ONAME."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Solve the astrometry of FILE with the fallback chain and write the solved copy."""
    from ..gaia_grid import write_products
    from ..pipeline import run_astrometry
    from ..runner import safe_stem
    obs = observatory_settings(observatory)
    frame = _standardised(file, obs)
    chain = backend or (obs.backends_for("astrometry") if obs else
                        ("astrometry_scamp", "astrometry_nova"))
    result, attempts = run_astrometry(frame, chain, obs=obs,
                                      overrides=parse_overrides(overrides))
    target = write_products(frame, result, out, safe_stem(file), attempts)["frame"]
    console.print(f"solved by {result.backend}: {result.n_matched} stars, "
                  f"rms {result.rms_arcsec:.3f}\" -> {target}")
    for name, said in attempts:
        console.print(f"  {name}: {said}")


def calibrate(
    catalog: Path = typer.Argument(..., help="SourceTable (.ecsv) with ra/dec."),
    backend: str = typer.Option("calibrate_builtin", "--backend", "-b"),
    observatory: Optional[str] = typer.Option(None, "--observatory", help="ONAME."),
):
    """Fit the zero point of a measured catalogue against a reference catalogue."""
    from ..pipeline import run_calibration
    result = run_calibration(catalog, backend, obs=observatory_settings(observatory))
    console.print(f"zero point {result.zero_point:.4f} ± {result.zero_point_err:.4f} "
                  f"({result.n_stars} stars, {result.catalog} {result.band})")


# options shared by the commands that process many frames (run, demo)
WORKERS_OPTION = typer.Option(
    None, "--workers", "-j", min=0,
    help="Frames processed at once (default: the cores; 0: in this process).")
RESUME_OPTION = typer.Option(False, "--resume", help="Skip frames whose products are complete.")
EXECUTOR_OPTION = typer.Option("local", "--executor", help="local | dask")
SCHEDULER_OPTION = typer.Option(
    None, "--scheduler", help="Dask scheduler tcp://HOST:PORT (default: a local cluster).")


def run(
    files: List[Path] = typer.Argument(..., help="Raw FITS frames."),
    observatory: str = typer.Option(..., "--observatory", help="ONAME of the camera."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    photometry_backend: Optional[str] = typer.Option(None, "--photometry",
                                                     help="Override the photometry backend."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    workers: Optional[int] = WORKERS_OPTION,
    resume: bool = RESUME_OPTION,
    executor: str = EXECUTOR_OPTION,
    scheduler: Optional[str] = SCHEDULER_OPTION,
):
    """Run every available stage on each frame in parallel; one failing frame never stops the rest."""
    from ..batch import print_summary
    from ..runner import run_batch
    obs = observatory_settings(observatory)
    summary = run_batch(files, obs, out, photometry_backend=photometry_backend,
                        overrides=parse_overrides(overrides), workers=workers,
                        resume=resume, executor=executor, scheduler=scheduler,
                        console=err_console)
    print_summary(summary, console, err_console)
    if summary.failed:
        raise typer.Exit(code=1)


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output folder."),
    n_frames: Optional[int] = typer.Option(
        None, "--frames", min=1, help="Frames in the simulated night (default 80)."),
    size: int = typer.Option(512, "--size", help="Frame size in pixels."),
    seed: int = typer.Option(1, "--seed"),
    workers: Optional[int] = WORKERS_OPTION,
    resume: bool = RESUME_OPTION,
    executor: str = EXECUTOR_OPTION,
    scheduler: Optional[str] = SCHEDULER_OPTION,
):
    """Simulate a night with a transit and a variable, run every stage, fit the transit."""
    from ..batch import print_summary
    from ..demo import run_demo
    run = run_demo(out, n_frames=n_frames, size=size, seed=seed, workers=workers,
                   resume=resume, executor=executor, scheduler=scheduler,
                   console=err_console)
    print_summary(run.summary, console, err_console, max_notes=12)
    for line in run.lines:
        console.print(line, markup=False, soft_wrap=True)
    if run.summary.failed:
        raise typer.Exit(code=1)


def _print_summary(summary) -> None:
    console.print(f"[bold]{summary.done} frame(s) done, {len(summary.failed)} failed[/bold]")
    for line in summary.stage_notes:
        console.print(f"  {line}", markup=False)
    for path, reason in summary.failed:
        err_console.print(f"error: {reason}", markup=False)


STAGE_COMMANDS = {"photometry": photometry, "astrometry": astrometry,
                  "calibrate": calibrate, "run": run, "demo": demo}
