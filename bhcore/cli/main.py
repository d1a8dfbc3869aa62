"""The ``bhcore`` command: thin typer commands over the pipeline.

Every command turns a ``BhError`` into one line on stderr and exit code 1; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import logging
import os
import sys

import typer
from rich.console import Console

from ..errors import BhError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def guard(func):
    """Wrap a command so a BhError becomes one clear line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BhError as exc:
            err_console.print(f"error: {exc}", markup=False)
            raise typer.Exit(code=1) from None

    return wrapper


def guard_app(sub: typer.Typer) -> typer.Typer:
    for info in sub.registered_commands:
        info.callback = guard(info.callback)
    return sub


app = typer.Typer(
    name="bhcore", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Raw CCD frames from many telescopes to calibrated photometry, "
         "light curves and astrometry.")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _mount() -> None:
    from . import commands, plugins_cmd
    app.add_typer(guard_app(plugins_cmd.app), name="plugins",
                  help="Installed backends and their settings.")
    app.command("doctor")(guard(plugins_cmd.doctor))
    for name, func in commands.STAGE_COMMANDS.items():
        app.command(name)(guard(func))
    try:
        from .registry_cmd import app as registry_app
        app.add_typer(guard_app(registry_app), name="registry",
                      help="Observatories and cameras (obs.info entries).")
    except ImportError as exc:  # pragma: no cover - only while a module is missing
        _missing("registry", exc)
    try:
        from .headers_cmd import headers
        app.command("headers")(guard(headers))
    except ImportError as exc:  # pragma: no cover
        _missing("headers", exc)
    try:
        from .simulate_cmd import simulate
        app.command("simulate")(guard(simulate))
    except ImportError as exc:  # pragma: no cover
        _missing("simulate", exc)


def _missing(name: str, exc: Exception) -> None:
    def unavailable():
        err_console.print(f"error: '{name}' is unavailable in this install: {exc}")
        raise typer.Exit(code=1)
    app.command(name, help=f"(unavailable: {exc})")(unavailable)


_mount()


def main() -> None:  # pragma: no cover - console entry for `python -m bhcore`
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    app()
    sys.exit(0)
