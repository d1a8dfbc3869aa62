"""``bhcore plugins list`` and ``bhcore doctor``: what is installed and usable."""
from __future__ import annotations

import glob
import json
from importlib import metadata

import typer
from rich.console import Console
from rich.table import Table

from ..errors import MissingEngine
from ..plugins import all_plugin_infos, executable_version

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)

INDEX_GLOBS = ("/usr/share/astrometry/index-*.fits", "/usr/share/astrometry/*/index-*.fits")
PYTHON_LIBS = ("astropy", "numpy", "scipy", "photutils", "sep", "astroquery", "sqlmodel",
               "pluggy", "typer", "matplotlib")


def _plugin_rows() -> list[dict]:
    rows = []
    for name, info, error in all_plugin_infos():
        if info is None:
            rows.append({"name": name, "stage": "?", "version": "?", "implemented": False,
                         "error": error, "settings": {}, "executables": []})
            continue
        rows.append({
            "name": name, "stage": info.stage, "version": info.version,
            "implemented": info.implemented, "description": info.description,
            "settings": info.default_settings(),
            "executables": [e.name for e in info.executables], "error": "",
        })
    return rows


@app.command("list")
def list_plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List installed backends, their stage, version and default settings."""
    rows = _plugin_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title="bhcore plugins (entry-point group 'bhcore')")
    for col in ("name", "stage", "version", "status", "needs"):
        table.add_column(col)
    for row in rows:
        status = ("[red]broken: " + row["error"] + "[/red]" if row["error"]
                  else "ready" if row["implemented"] else "[yellow]not implemented yet[/yellow]")
        table.add_row(row["name"], row["stage"], row["version"], status,
                      ", ".join(row["executables"]) or "-")
    console.print(table)


def engine_report() -> list[dict]:
    """Every executable any plugin needs: present or not, version, how to install."""
    seen: dict[str, dict] = {}
    for name, info, _error in all_plugin_infos():
        for exe in (info.executables if info else ()):
            entry = seen.setdefault(exe.name, {
                "executable": exe.name, "package": exe.apt_package,
                "version": executable_version(exe), "needed_by": []})
            entry["needed_by"].append(name)
    return list(seen.values())


def index_files() -> list[str]:
    found: list[str] = []
    for pattern in INDEX_GLOBS:
        found.extend(glob.glob(pattern))
    return sorted(set(found))


def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON."),
           strict: bool = typer.Option(False, "--strict",
                                       help="Exit 1 when any engine is missing.")):
    """Report which engines, index files and libraries are present, with versions."""
    engines = engine_report()
    indexes = index_files()
    libs = {}
    for lib in PYTHON_LIBS:
        try:
            libs[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            libs[lib] = None
    if as_json:
        typer.echo(json.dumps({"engines": engines, "astrometry_index_files": indexes,
                               "python": libs}, indent=2))
    else:
        table = Table(title="external engines")
        for col in ("executable", "version", "needed by", "install"):
            table.add_column(col)
        for e in engines:
            version = e["version"] or "[red]missing[/red]"
            install = "" if e["version"] else f"apt-get install -y {e['package']}"
            table.add_row(e["executable"], version, ", ".join(e["needed_by"]), install)
        console.print(table)
        console.print(f"astrometry.net index files: {len(indexes)}"
                      + (f" in {sorted({i.rsplit('/', 1)[0] for i in indexes})}" if indexes
                         else " (none: apt-get install astrometry-data-tycho2-10-19-littleendian)"))
        console.print("python: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in libs.items()))
    missing = [e for e in engines if not e["version"]]
    if strict and missing:
        names = ", ".join(f"{e['executable']} (apt-get install -y {e['package']})" for e in missing)
        raise MissingEngine(f"missing engines: {names}")
