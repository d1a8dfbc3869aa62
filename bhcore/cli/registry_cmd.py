"""``bhcore registry``: list, show, add, import, export and validate obs.info entries.

Thin commands over ``bhcore.registry``; failures are ``BhError`` subclasses that the
main CLI prints as one line with exit code 1. Read commands fill an empty registry
from the repository's ``registry/`` folder first, so a fresh install just works.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from ..errors import ObsInfoError, RegistryError
from ..frame import atomic_write_text
from ..registry import Registry, validate_obsinfo

app = typer.Typer(
    help="Observatories and cameras: the obs.info entries the pipeline reads by ONAME.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_URL_KEY = "bhcore.registry_url"


@app.callback()
def _options(ctx: typer.Context,
             url: Optional[str] = typer.Option(
                 None, "--url", envvar="BHCORE_REGISTRY_URL",
                 help="Registry database URL (default sqlite:///$BHCORE_HOME/registry.db).")):
    ctx.meta[_URL_KEY] = url


def _registry(ctx: typer.Context, builtin: bool = False) -> Registry:
    registry = Registry(ctx.meta.get(_URL_KEY))
    if builtin:
        registry.ensure_builtin()
    return registry


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@app.command("list")
def list_cmd(ctx: typer.Context,
             as_json: bool = typer.Option(False, "--json", help="Print a JSON array.")):
    """List every registered camera."""
    rows = _registry(ctx, builtin=True).list()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return
    console = _console()
    wide = console.width >= 110              # narrow terminals drop the text columns
    table = Table(title=f"{len(rows)} cameras (lon East +, RN in ADU)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("ONAME", overflow="fold", min_width=16)
    if wide:
        table.add_column("observatory", overflow="fold")
    for name in ("lon", "lat", "alt m", "gain", "RN", "sat", "\"/px"):
        table.add_column(name, justify="right", no_wrap=True)
    if wide:
        table.add_column("filters", overflow="fold")
    for row in rows:
        cells = [_num(row["lon_east_deg"]), _num(row["lat_deg"]), _num(row["alt_m"], 0),
                 _num(row["gain"], 2), _num(row["read_noise_adu"], 2),
                 _num(row["saturation"], 0), _num(row["pixel_scale_arcsec"], 3)]
        if wide:
            cells = [row["observatory"] or "-"] + cells + [",".join(row["filters"])]
        table.add_row(row["oname"], *cells)
    console.print(table)


@app.command("show")
def show(ctx: typer.Context, oname: str = typer.Argument(..., help="Camera prefix (ONAME).")):
    """Show one camera's resolved settings."""
    obs = _registry(ctx, builtin=True).get(oname)
    info = obs.obsinfo
    table = Table(title=obs.oname, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [
        ("observatory", obs.observatory), ("telescope", info.literal("TELESCOP")),
        ("instrument", info.literal("INSTRUME")), ("description", info.literal("DESCRIPT")),
        ("longitude (East +)", _num(obs.lon_east_deg, 6)), ("latitude", _num(obs.lat_deg, 6)),
        ("altitude [m]", _num(obs.alt_m, 1)), ("gain [e/ADU]", _num(obs.gain, 3)),
        ("read noise [ADU]", _num(obs.read_noise_adu, 3)),
        ("saturation [ADU]", _num(obs.saturation, 0)),
    ]
    filters = info.get("FILTER")
    if filters is not None:
        pairs = filters.translation_pairs()
        rows.append(("filters", ", ".join(f"{raw}->{std}" for raw, std in pairs) or "-"))
    for stage, names in obs.backends.items():
        rows.append((f"backends: {stage}", ", ".join(names)))
    for key, value in obs.plugin_settings.items():
        rows.append((f"option {key}", str(value)))
    rows.append(("source", info.path))
    for key, value in rows:
        table.add_row(key, "-" if value in (None, "") else str(value))
    _console().print(table)


@app.command("add")
def add(ctx: typer.Context,
        file: Path = typer.Argument(..., help="An obs.info file."),
        no_replace: bool = typer.Option(False, "--no-replace",
                                        help="Fail if the ONAME is already registered.")):
    """Add (or replace) one camera from its obs.info file."""
    oname = _registry(ctx).add_obsinfo(file, replace=not no_replace)
    typer.echo(f"added {oname}")


@app.command("import")
def import_cmd(ctx: typer.Context,
               directory: Path = typer.Argument(..., help="A folder of *_obs.info files.")):
    """Add every *_obs.info file of a folder; reports every failing file."""
    try:
        names = _registry(ctx).import_dir(directory)
    except RegistryError as exc:
        for err in getattr(exc, "errors", []):
            typer.echo(f"  failed: {err}", err=True)
        if hasattr(exc, "imported"):
            typer.echo(f"imported {len(exc.imported)} camera(s)", err=True)
        raise
    typer.echo(f"imported {len(names)} camera(s) from {directory}")


@app.command("export")
def export(ctx: typer.Context, oname: str = typer.Argument(..., help="Camera prefix (ONAME)."),
           out: Optional[Path] = typer.Option(None, "--out", "-o",
                                              help="Write to this file instead of stdout.")):
    """Print (or write) one camera's obs.info exactly as it was stored."""
    text = _registry(ctx, builtin=True).export(oname)
    if out is None:
        typer.echo(text, nl=False)
        return
    atomic_write_text(out, text)
    typer.echo(f"wrote {out}", err=True)


@app.command("validate")
def validate(file: Path = typer.Argument(..., help="An obs.info file to check.")):
    """Check an obs.info file; lists every problem, with line and field."""
    try:
        text = file.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ObsInfoError(f"cannot read: {exc.strerror or exc}", path=file) from None
    obsinfo, errors = validate_obsinfo(text, path=file)
    if errors:
        for err in errors:
            typer.echo(f"  {err}", err=True)
        first = errors[0]
        if len(errors) > 1:
            first.message += f" (and {len(errors) - 1} more problem(s), listed above)"
        raise first
    missing = obsinfo.missing_keywords()
    oname = obsinfo.oname or "(no ONAME line, and the file name is not <ONAME>_obs.info)"
    typer.echo(f"OK {file}: {len(obsinfo.entries)} lines, ONAME {oname}")
    if missing:
        typer.echo(f"note: no line for {', '.join(missing)} (these stay unknown)")
