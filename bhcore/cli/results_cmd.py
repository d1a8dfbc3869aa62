"""Result commands: lightcurve, report, upload, recalibrate.

Thin: each parses its arguments, calls one function of ``bhcore.lightcurves``,
``bhcore.report``, ``bhcore.bhtom`` or ``bhcore.results`` and prints a summary.
RESULTS is a results folder (holding ``results.db``), a database file, or a URL.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from ..secrets import redact

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
FORMATS = ("bhtom-csv", "ecsv")


def lightcurve(
    results: str = typer.Argument(..., help="Results folder, database file or URL."),
    ra: float = typer.Option(..., "--ra", help="RA of the source, deg."),
    dec: float = typer.Option(..., "--dec", help="Dec of the source, deg."),
    radius: float = typer.Option(2.0, "--radius", help="Search radius, arcsec."),
    fmt: str = typer.Option("bhtom-csv", "--format", help="bhtom-csv or ecsv."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: "
                                       "standard output)."),
    filter_name: Optional[str] = typer.Option(None, "--filter-name", help="Filter label of "
                                              "the CSV (default: the frames' filter)."),
    observer: Optional[str] = typer.Option(None, "--observer", help="Observer column (CSV)."),
    limits: bool = typer.Option(True, "--limits/--no-limits", help="Upper limits for frames "
                                "where the source was not detected."),
):
    """Export the light curve of the source nearest RA/Dec."""
    from ..lightcurves import from_results
    from ..frame import atomic_write_text
    from ..results.exports import bhtom_csv_text, lightcurve_ecsv_text
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    lcs = from_results(results)
    j = lcs.find(ra, dec, radius)
    lc = lcs.lightcurve(j, upper_limits=limits)
    if fmt == "bhtom-csv":
        label = filter_name or _majority(lc["filter"] if "filter" in lc.colnames else [])
        if not label:
            raise ConfigError("the frames carry no filter name; pass --filter-name")
        if not any(m == m for m in lc["mag"]):
            raise ConfigError("the source has no calibrated magnitudes (frames not "
                              "calibrated); use --format ecsv for relative fluxes")
        text = bhtom_csv_text(lc, label, observer)
    else:
        text = lightcurve_ecsv_text(lc)
    if out is None:
        sys.stdout.write(text)
        return
    atomic_write_text(out, text)
    err_console.print(f"source {int(lcs.sources['source_id'][j])}: {len(lc)} points -> {out}",
                      markup=False)


def _majority(values) -> str:
    names = [str(v) for v in values if str(v)]
    return Counter(names).most_common(1)[0][0] if names else ""


def report(
    results: str = typer.Argument(..., help="Results folder, database file or URL."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: "
                                       "<results>/report)."),
    ra: Optional[float] = typer.Option(None, "--ra", help="Target RA, deg."),
    dec: Optional[float] = typer.Option(None, "--dec", help="Target Dec, deg."),
    top: int = typer.Option(5, "--top", help="Light curves of this many variable sources."),
    ingest: bool = typer.Option(False, "--ingest", help="First record every frame folder "
                                "under RESULTS in its database (after a cluster run)."),
):
    """Write a static HTML report with PNG plots of a run."""
    from ..report import write_report
    if (ra is None) != (dec is None):
        raise ConfigError("give both --ra and --dec, or neither")
    if ingest:
        from ..results.stage import ingest as record_all
        console.print(f"{record_all(results)} frame folder(s) recorded", markup=False)
    page = write_report(results, out, target=None if ra is None else (ra, dec),
                        n_variables=top)
    console.print(f"report -> {page}", markup=False)


def upload(
    files: List[Path] = typer.Argument(..., help="Files to upload, one request each."),
    target: str = typer.Option(..., "--target", help="BHTOM target name."),
    observatory: str = typer.Option(..., "--observatory", help="ONAME (camera prefix)."),
    filter_: str = typer.Option("GaiaSP/any", "--filter", help="BHTOM calibration filter."),
    data_type: Optional[str] = typer.Option(None, "--type", help="fits_file, photometry, "
                                            "photometry_csv (default: from the file name)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Processed by BHTOM, not stored."),
    mjd: Optional[float] = typer.Option(None, "--mjd", help="MJD of a SExtractor catalogue "
                                        "(default: from <stem>_quality.json beside it)."),
    observer: Optional[str] = typer.Option(None, "--observer"),
    match_dist: Optional[float] = typer.Option(None, "--match-dist", help="arcsec"),
    comment: Optional[str] = typer.Option(None, "--comment"),
    move: bool = typer.Option(False, "--move", help="Move files to success/ or error/."),
    config: Optional[Path] = typer.Option(None, "--config", help="BHTOM config file (default "
                                          "$BHCORE_HOME/bhtom.json)."),
    username: Optional[str] = typer.Option(None, "--username", help="Get a token with this "
                                           "user's password (prompted)."),
    save: bool = typer.Option(False, "--save-token", help="Store that token (mode 0600)."),
    attempts: Optional[int] = typer.Option(None, "--attempts", min=1, help="Requests per "
                                           "file on timeouts, connection errors and HTTP "
                                           "5xx (default: config file, else 4)."),
    backoff: Optional[float] = typer.Option(None, "--backoff", min=0.0, help="First retry "
                                            "delay, s; doubles each retry (default: config "
                                            "file, else 2)."),
):
    """Upload files to BHTOM (token from BHTOM_TOKEN or the private config file).

    One line per file as it finishes (sent only on HTTP 201, or failed with the
    server's reason), then the totals; exit code 1 when any file failed."""
    from ..bhtom import BhtomClient, BhtomConfig, save_token
    settings = BhtomConfig.load(config)
    if attempts is not None:
        settings.attempts = attempts
    if backoff is not None:
        settings.backoff_s = backoff
    client = BhtomClient(settings)
    if username:
        password = typer.prompt(f"BHTOM password for {username}", hide_input=True)
        token = client.authenticate(username, password)
        if save:
            err_console.print(f"token stored in {save_token(token, config)}", markup=False)
    client.require_token()                  # one clear error before any file is touched

    def show(result) -> None:
        tries = f"{result.attempts} attempt{'' if result.attempts == 1 else 's'}"
        where = f" -> {result.moved_to}" if result.moved_to else ""
        if result.ok:
            console.print(f"{result.path.name}: sent (HTTP {result.status}, {tries}){where}",
                          markup=False, soft_wrap=True)
        else:
            http = f"HTTP {result.status}" if result.status else "no HTTP answer"
            err_console.print(f"{result.path.name}: failed ({http}, {tries}): "
                              f"{redact(result.reason)}{where}", markup=False, soft_wrap=True)

    results = client.upload_many(files, move=move, on_result=show, target=target,
                                 observatory=observatory, filter=filter_,
                                 data_product_type=data_type, dry_run=dry_run,
                                 mjd=mjd if mjd is not None else _sidecar_mjd,
                                 observer=observer, match_dist=match_dist, comment=comment)
    failed = sum(not r.ok for r in results)
    console.print(f"{len(results) - failed} sent, {failed} failed", markup=False)
    if failed:
        raise typer.Exit(code=1)


def _sidecar_mjd(path: Path) -> float | None:
    """MJD of a ``<stem>_bhtom.cat`` from the ``<stem>_quality.json`` written beside it."""
    if not path.name.endswith("_bhtom.cat"):
        return None
    sidecar = path.with_name(path.name[: -len("_bhtom.cat")] + "_quality.json")
    try:
        return float(json.loads(sidecar.read_text())["mjd"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recalibrate(
    results: str = typer.Argument(..., help="Results folder, database file or URL."),
    backend: str = typer.Option("calibrate_builtin", "--backend", "-b"),
    frame: Optional[List[str]] = typer.Option(None, "--frame", help="Only this frame stem "
                                              "(repeatable)."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Calibration setting, "
                                                  "e.g. calibrate_builtin.min_stars=5."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Redraw calibration plots."),
):
    """Re-run the calibration of stored frames (no re-measuring); history is kept."""
    from ..results.recalibrate import recalibrate as run
    from .commands import parse_overrides
    summary = run(results, backend, parse_overrides(overrides), stems=frame, plots=plots)
    for stem, old, new in summary.done:
        was = "none" if old is None else f"{old:.4f}"
        console.print(f"{stem}: zero point {was} -> {new:.4f}", markup=False)
    for stem, why in summary.skipped:
        console.print(f"{stem}: skipped ({why})", markup=False)
    for stem, why in summary.failed:
        err_console.print(f"{stem}: failed: {why}", markup=False)
    console.print(f"{len(summary.done)} recalibrated, {len(summary.failed)} failed, "
                  f"{len(summary.skipped)} skipped", markup=False)
    if summary.failed:
        raise typer.Exit(code=1)


COMMANDS = {"lightcurve": lightcurve, "report": report, "upload": upload,
            "recalibrate": recalibrate}
