"""Run IRAF CL scripts headless through ``irafcl``, safely.

IRAF's CL exits 0 even when a task fails, keeps task parameters in
``$HOME/.iraf/uparm`` and needs ``HOME``, ``USER`` and ``TERM=xterm``. So every
script here runs with a private HOME, ends with a marker line that must appear in
the log on a line of its own, and the log is searched for ``ERROR`` lines; either
problem raises ``ExternalToolError`` with the tail of the log.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from bhcore.errors import ExternalToolError, SettingsError
from bhcore.external import isolated_env, private_workdir, run, tail

IRAFCL = "irafcl"
APT_PACKAGE = "iraf iraf-noao"
MARKER = "BHCORE_IRAF_DONE"
PACKAGES = ("noao", "digiphot", "daophot")
_ERROR = re.compile(r"^\W*(ERROR|Error)\b[:\s]")
_PROMPT = re.compile(r"^[a-z][a-z0-9_]*> ")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\x1b\[[0-9;]*[A-Za-z]")


def clean_log(text: str) -> str:
    """The log without terminal control sequences and bells."""
    return _CONTROL.sub("", text.replace("\r", ""))


def setup_lines(packages: Sequence[str] = PACKAGES,
                min_lenuserarea: int | None = None) -> list[str]:
    lines = []
    if min_lenuserarea:
        lines.append(f"set min_lenuserarea = {int(min_lenuserarea)}")
    lines += list(packages)
    lines += ['set stdgraph = "null"', 'set stdimage = "imt512"', 'set imtype = "fits"',
              "set clobber = yes"]
    return lines


def iraf_env(home: Path) -> dict[str, str]:
    env = isolated_env(home, {"TERM": "xterm"})
    for key in ("IRAFARCH", "iraf", "host", "hlib", "hbin", "arch", "mach"):
        env.pop(key, None)
    return env


def run_cl(lines: Iterable[str], workdir: Path, home: Path, timeout: float,
           log_name: str = "iraf.log") -> str:
    """Run CL ``lines`` in ``workdir`` with HOME ``home``; return the cleaned log.

    :raises ExternalToolError: irafcl missing/failed, no end marker, or an ERROR line.
    """
    lines = list(lines)
    script = "\n".join(lines + [f'print ("{MARKER}")', "logout", ""])
    (workdir / (Path(log_name).stem + ".cl")).write_text(script)
    home.mkdir(parents=True, exist_ok=True)
    proc = run([IRAFCL], cwd=workdir, env=iraf_env(home), timeout=timeout,
               input_text=script, apt_package=APT_PACKAGE, check=False)
    log = clean_log((proc.stdout or "") + "\n" + (proc.stderr or ""))
    (workdir / log_name).write_text(log)
    log_lines = [line.strip() for line in log.splitlines()]
    errors = [i for i, line in enumerate(log_lines) if _ERROR.match(line)]
    if errors:
        first = errors[0]
        task = next((line.split("> ", 1)[1] for line in reversed(log_lines[:first])
                     if _PROMPT.match(line)), "")
        where = f" in '{task[:120]}'" if task else ""
        # irafcl exits 0 whatever happens: no exit code is reported
        raise ExternalToolError(f"IRAF reported an error{where}", command=[IRAFCL],
                                stderr_tail="\n".join(log_lines[max(0, first - 5):first + 1]))
    if MARKER not in log_lines:
        raise ExternalToolError("IRAF stopped before the end of its script",
                                command=[IRAFCL], stderr_tail=tail(log))
    return log


def write_iraf_image(path: Path, data: np.ndarray) -> Path:
    """A plain float32 FITS image with a minimal header (IRAF reads it directly)."""
    fits.PrimaryHDU(data=np.asarray(data, dtype=np.float32)).writeto(path, overwrite=True)
    return path


def _check_task_lines(task_lines: Sequence[str]) -> list[str]:
    out = []
    for line in task_lines:
        text = str(line)
        if "\n" in text or "\r" in text:
            raise SettingsError("IRAF task lines must be single lines")
        stripped = text.strip()
        if stripped.startswith("!") or re.match(r"^(logout|bye|reset\s+home)\b", stripped):
            raise SettingsError(f"IRAF task line not allowed: {stripped!r}")
        out.append(text)
    return out


def run_iraf_task(task_lines: Sequence[str], frame_path, timeout: float = 300.0, *,
                  packages: Sequence[str] = PACKAGES, output_dir=None,
                  outputs: Sequence[str] = ()) -> str:
    """Run IRAF/PyRAF-style CL task lines on a copy of one FITS frame; return the log.

    The frame is copied into a private working folder as ``image.fits`` (the original
    is never touched); write ``image.fits`` in the task lines to refer to it, e.g.
    ``['imstatistics ("image.fits")']``. The CL runs with its own HOME, ``TERM=xterm``,
    the given packages loaded, and ``stdgraph=null``.

    :param task_lines: CL lines (host escapes ``!...`` and ``logout`` are refused).
    :param frame_path: the FITS file to work on.
    :param timeout: seconds before irafcl is stopped.
    :param output_dir: where to copy the files named in ``outputs`` afterwards.
    :raises ExternalToolError: a task failed (an ``ERROR`` line) or the script did not
        reach its end; ``MissingEngine`` when irafcl is not installed.
    """
    lines = _check_task_lines(task_lines)
    source = Path(frame_path)
    if not source.is_file():
        raise SettingsError(f"{source}: no such FITS file")
    with private_workdir(prefix="bh-iraf-") as work:
        with fits.open(source, memmap=False) as hdul:
            index = next((i for i, h in enumerate(hdul)
                          if h.data is not None and getattr(h.data, "ndim", 0) == 2), 0)
            data = hdul[index].data
            header = hdul[index].header.copy()
        for key in ("BZERO", "BSCALE", "BLANK"):
            header.remove(key, ignore_missing=True, remove_all=True)
        fits.PrimaryHDU(data=np.asarray(data, dtype=np.float32), header=header).writeto(
            work / "image.fits", overwrite=True, output_verify="silentfix")
        log = run_cl(setup_lines(packages) + lines, work, work / "home", timeout)
        if output_dir is not None:
            dest = Path(output_dir)
            dest.mkdir(parents=True, exist_ok=True)
            for name in outputs:
                if Path(name).name != name:
                    raise SettingsError(f"output {name!r} must be a plain file name")
                produced = work / name
                if produced.exists():
                    shutil.copy2(produced, dest / Path(name).name)
        return log
