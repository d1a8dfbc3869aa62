"""``bhcore serve`` and ``bhcore status``: the always-on service and its queue.

Thin: argument parsing, then ``bhcore.service``. Mounted in ``cli/main.py`` with
``app.command("serve")(guard(serve))`` and ``app.command("status")(guard(status))``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)

DB_HELP = ("Job database, any SQLAlchemy URL (e.g. postgresql+psycopg://user@host/bhcore); "
           "default sqlite:///OUT/.bhcore/jobs.sqlite (WAL mode).")


def _url(db: str | None, out: Path | None) -> str:
    from ..errors import ConfigError
    from ..service import default_url
    if db:
        return db
    if out is None:
        raise ConfigError("give --out (the service's output folder) or --db URL")
    return default_url(out)


def serve(
    inbox: Path = typer.Option(..., "--inbox", help="Folder watched for new frames "
                               "(inbox/<ONAME>/ names the camera)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the products."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    observatory: Optional[str] = typer.Option(
        None, "--observatory", help="ONAME of frames directly in the inbox."),
    astrometry: int = typer.Option(1, "--astrometry", min=1, help="Astrometry workers."),
    photometry: int = typer.Option(1, "--photometry", min=1, help="Photometry workers."),
    photometry_backend: Optional[str] = typer.Option(None, "--photometry-backend",
                                                     help="Override the photometry backend."),
    poll: float = typer.Option(1.0, "--poll", min=0.05, help="Seconds between inbox scans."),
    settle: float = typer.Option(2.0, "--settle", min=0.0,
                                 help="Seconds a file's size must stay put before it is taken."),
    give_up: float = typer.Option(60.0, "--give-up", min=0.0,
                                  help="Take a stable file that never looks complete after this."),
    lease: float = typer.Option(60.0, "--lease", min=0.5,
                                help="Seconds a claimed job stays a worker's without a heartbeat."),
    max_attempts: int = typer.Option(5, "--max-attempts", min=1,
                                     help="Attempts before a job is set aside."),
    backoff: float = typer.Option(5.0, "--backoff", min=0.0,
                                  help="First retry delay of a transient failure (doubles)."),
    until_idle: Optional[float] = typer.Option(
        None, "--until-idle", help="Stop after the queue has been idle this many seconds."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Backend setting, "
                                                  "e.g. phot_python.fwhm=3.5 (repeatable)."),
):
    """Watch INBOX and process every new frame; SIGTERM or Ctrl-C stops cleanly."""
    from ..service import ServiceConfig, serve as run_service
    from .commands import parse_overrides
    logging.getLogger("bhcore").setLevel(logging.INFO)
    config = ServiceConfig(
        inbox=str(inbox.absolute()), out=str(out.absolute()), db_url=_url(db, out),
        default_oname=observatory, astrometry_workers=astrometry,
        photometry_workers=photometry, poll=poll, settle=settle, give_up=give_up,
        lease=lease, max_attempts=max_attempts, backoff=backoff,
        overrides=parse_overrides(overrides), photometry_backend=photometry_backend)
    raise typer.Exit(code=run_service(config, until_idle=until_idle))


def status(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The service's output folder."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    limit: int = typer.Option(20, "--limit", min=1, help="Failed/running jobs listed."),
):
    """Show the service's queue: jobs per stage and state, running and failed jobs."""
    from ..errors import ConfigError
    from ..secrets import redact
    from ..service import status as queue_status
    url = _url(db, out)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise ConfigError(f"no job database at {url[len('sqlite:///'):]} "
                          "(has bhcore serve run with this --out?)")
    report = queue_status(url, limit)
    if as_json:
        console.print_json(redact(json.dumps(report)))
        return
    totals = report["by_state"]
    console.print(f"[bold]{sum(totals.values())} job(s):[/bold] " +
                  ", ".join(f"{n} {state}" for state, n in totals.items()) +
                  f"; {report['results']} with results")
    table = Table("stage", "queued", "running", "done", "failed", title="jobs by stage")
    for stage in ("astrometry", "photometry", "results"):
        table.add_row(stage, *(str(report["counts"].get(f"{stage}/{s}", 0))
                               for s in ("queued", "running", "done", "failed")))
    console.print(table)
    for job in report["running"]:
        console.print(f"  running: job {job['id']} {job['file']} ({job['stage']}, attempt "
                      f"{job['attempt']}, {job['owner']}, lease {job['lease_s']:+.0f} s)",
                      markup=False, soft_wrap=True)
    for job in report["failed"]:
        console.print(f"  failed: job {job['id']}: {redact(job['reason'])}", markup=False,
                      soft_wrap=True)
