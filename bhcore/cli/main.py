"""The ``bhcore`` command: thin typer commands over the pipeline.

Every command turns a ``BhError`` into one line on stderr and exit code 1; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
import sys

import typer
from rich.console import Console

from ..errors import BhError
from ..secrets import install, redact

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def guard(func):
    """Wrap a command so a BhError becomes one clear line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BhError as exc:
            err_console.print(f"error: {redact(str(exc))}", markup=False)
            raise typer.Exit(code=1) from None

    return wrapper


def guard_app(sub: typer.Typer) -> typer.Typer:
    """A copy of a sub-app whose commands are guarded (the original stays as it is)."""
    guarded = typer.Typer(no_args_is_help=True)
    guarded.registered_callback = sub.registered_callback
    guarded.registered_groups = list(sub.registered_groups)
    for info in sub.registered_commands:
        copied = copy.copy(info)
        copied.callback = guard(info.callback)
        guarded.registered_commands.append(copied)
    return guarded


app = typer.Typer(
    name="bhcore", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Raw CCD frames from many telescopes to calibrated photometry, "
         "light curves and astrometry.")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    install()                              # tokens and API keys never reach a log line


def _mount() -> None:
    from . import commands, plugins_cmd, results_cmd
    from .headers_cmd import headers
    from .registry_cmd import app as registry_app
    from .service_cmd import serve, status
    from .simulate_cmd import simulate
    from .transit_cmd import transit
    app.add_typer(guard_app(plugins_cmd.app), name="plugins",
                  help="Installed backends and their settings.")
    app.add_typer(guard_app(registry_app), name="registry",
                  help="Observatories and cameras (obs.info entries).")
    app.command("doctor")(guard(plugins_cmd.doctor))
    app.command("headers")(guard(headers))
    app.command("simulate")(guard(simulate))
    for name, func in {**commands.STAGE_COMMANDS, **results_cmd.COMMANDS,
                       "serve": serve, "status": status, "transit": transit}.items():
        app.command(name)(guard(func))
    _mount_plugin_commands()


def _mount_plugin_commands() -> None:
    """Commands that plugins contribute (entry-point group ``bhcore.commands``).

    Such modules must stay light: they are imported at every start of the CLI. A
    broken one is listed as unavailable instead of breaking every command.
    """
    from importlib import metadata
    for ep in metadata.entry_points(group="bhcore.commands"):
        try:
            func = ep.load()
        except Exception as exc:  # a third party's bug must not break the CLI
            def unavailable(exc=exc):
                err_console.print(f"error: command '{ep.name}' failed to load: {exc}")
                raise typer.Exit(code=1)
            app.command(ep.name, help=f"(unavailable: {exc})")(unavailable)
            continue
        app.command(ep.name)(guard(func))


_mount()


def main() -> None:  # pragma: no cover - console entry for `python -m bhcore`
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    app()
    sys.exit(0)
