"""``bhcore iraf``: run any IRAF task on a copy of a frame (contributed by this plugin).

Kept light (no IRAF work at import) because the CLI loads it at start-up.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def iraf(
    frame: Path = typer.Argument(..., help="FITS frame; the task sees a copy as image.fits."),
    task: List[str] = typer.Option(..., "--task", "-t",
                                   help="CL line, e.g. 'imstatistics (\"image.fits\")' "
                                        "(repeatable; '!' escapes and logout are refused)."),
    package: Optional[List[str]] = typer.Option(None, "--package", "-p",
                                                help="CL packages to load (default: "
                                                     "noao, digiphot, daophot)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Folder for the files named by --keep."),
    keep: Optional[List[str]] = typer.Option(None, "--keep",
                                             help="Output file to copy to --out."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds before irafcl is stopped."),
):
    """Run IRAF/PyRAF task lines on a copy of FRAME with an isolated HOME; print the log."""
    from .iraf import PACKAGES, run_iraf_task
    log = run_iraf_task(task, frame, timeout, packages=tuple(package or PACKAGES),
                        output_dir=out, outputs=tuple(keep or ()))
    typer.echo(log.rstrip())
