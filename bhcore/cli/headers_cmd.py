"""``bhcore headers FILES... --observatory ONAME --out DIR``: standardised header copies.

Thin on purpose: resolve the observatory once, then one ``write_standardised``
per file. A bad file never stops the others; each failure is one line naming the
file and the problem, and the exit code is 1 when any file failed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import typer

from ..errors import BhError, ConfigError

log = logging.getLogger(__name__)


def resolve_observatory(observatory: str):
    """Settings for an ONAME from the registry, or straight from an obs.info file path.

    An empty registry is first filled from the repository's ``registry/`` folder,
    so a fresh install knows the built-in cameras.
    """
    candidate = Path(observatory)
    if observatory.endswith(".info") and candidate.is_file():
        from ..registry.obsinfo import read_obsinfo, settings_from_obsinfo
        return settings_from_obsinfo(read_obsinfo(candidate))
    from ..registry.db import Registry
    registry = Registry()
    registry.ensure_builtin()
    return registry.get(observatory)


def headers(
    files: List[Path] = typer.Argument(..., metavar="FILES",
                                       help="Raw FITS frames (.fits, .fit, .fts, .gz, .fz)."),
    observatory: str = typer.Option(..., "--observatory",
                                    help="Camera prefix (ONAME), or the path of an obs.info file."),
    out: Path = typer.Option(..., "--out", help="Folder for the standardised copies."),
) -> None:
    """Write a copy of each frame with the standard header (the input is never changed)."""
    from ..headers import header_plugins, output_path, write_standardised

    try:
        obs = resolve_observatory(observatory)
        pm = header_plugins(obs)
        out.mkdir(parents=True, exist_ok=True)
    except BhError as exc:
        _fail(str(exc))
        raise typer.Exit(code=1) from None
    except OSError as exc:
        _fail(str(ConfigError(f"cannot create the output folder: {exc.strerror}", path=out)))
        raise typer.Exit(code=1) from None

    written: dict[Path, Path] = {}
    failed = 0
    for path in files:
        try:
            target = output_path(path, out)
            if target in written:
                raise BhError(f"its output name {target.name} is also that of "
                              f"{written[target]} in this run; rename one of them", path=path)
            result = write_standardised(path, obs, out, pm=pm)
            written[result] = path
            typer.echo(f"{path} -> {result}")
        except BhError as exc:
            failed += 1
            _fail(str(exc))
        except OSError as exc:
            failed += 1
            _fail(f"{path}: cannot write the output: {exc.strerror or exc}")
        except Exception as exc:    # a bug: one line here, the traceback in the log
            failed += 1
            log.debug("traceback for %s", path, exc_info=True)
            _fail(f"{path}: internal error {type(exc).__name__}: {exc} (please report this)")
    if failed:
        _fail(f"{failed} of {len(files)} file(s) failed")
        raise typer.Exit(code=1)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
