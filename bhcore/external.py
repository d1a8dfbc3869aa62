"""Run external programs safely: one runner for every plugin that drives a tool.

``run`` never goes through a shell, always has a timeout, gives the program no
standard input unless asked, and turns every failure into a ``bhcore`` error:

* the binary is not installed -> ``MissingEngine`` (saying which package to install);
* it exits non-zero, times out or cannot start -> ``ExternalToolError`` carrying the
  command, the exit code and the tail of its error output.

``private_workdir`` is a temporary folder that belongs to one run and disappears
afterwards (kept for inspection when ``BHCORE_KEEP_WORKDIR`` is set), and
``isolated_env`` builds a small environment with its own ``HOME`` so that tools
which keep state in the home folder (IRAF's ``uparm``) cannot leak it between runs.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .errors import ExternalToolError, MissingEngine

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0
TAIL_LINES = 20
KEEP_ENV = "BHCORE_KEEP_WORKDIR"


def install_hint(binary: str, apt_package: str | None) -> str:
    package = apt_package or binary
    return (f"'{binary}' is not installed; install it with: "
            f"apt-get install -y --no-install-recommends {package}")


def require(binary: str, apt_package: str | None = None) -> str:
    """The absolute path of ``binary`` on PATH, else raise ``MissingEngine``."""
    path = shutil.which(binary)
    if path is None:
        raise MissingEngine(install_hint(binary, apt_package), command=[binary])
    return path


def tail(text: str | bytes | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text`` (bytes decoded leniently, NULs dropped)."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text.replace("\x00", "")
    return "\n".join(text.strip().splitlines()[-lines:])


def run(cmd: Sequence[str | os.PathLike], cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None, timeout: float | None = DEFAULT_TIMEOUT, *,
        input_text: str | None = None, apt_package: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` (a list, no shell) and return the ``CompletedProcess`` (text output).

    :param cmd: the program and its arguments; the program is looked up on PATH.
    :param cwd: working folder (a private one from ``private_workdir`` is typical).
    :param env: full environment for the child; None inherits the current one.
    :param timeout: seconds before the child is killed (``ExternalToolError``).
    :param input_text: text written to the child's standard input (else none).
    :param apt_package: Debian package named in the ``MissingEngine`` message.
    :param check: raise ``ExternalToolError`` on a non-zero exit code.
    """
    args = [os.fspath(c) for c in cmd]
    if not args:
        raise ValueError("empty command")
    program = args[0]
    if os.sep not in program:
        args[0] = require(program, apt_package)
    elif not os.access(program, os.X_OK):
        raise MissingEngine(install_hint(Path(program).name, apt_package), command=args)
    log.debug("running %s (cwd=%s)", " ".join(args), cwd)
    try:
        proc = subprocess.run(
            args, cwd=cwd, env=dict(env) if env is not None else None, timeout=timeout,
            check=False, capture_output=True, text=True, errors="replace",
            input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ExternalToolError(
            f"{Path(program).name} did not finish within {timeout:g} s and was stopped",
            command=args, returncode=None,
            stderr_tail=tail(exc.stderr) or tail(exc.stdout)) from None
    except OSError as exc:
        raise ExternalToolError(f"{Path(program).name} could not be started: {exc}",
                                command=args) from None
    if check and proc.returncode != 0:
        raise ExternalToolError(
            f"{Path(program).name} failed", command=args, returncode=proc.returncode,
            stderr_tail=tail(proc.stderr) or tail(proc.stdout))
    return proc


@contextlib.contextmanager
def private_workdir(prefix: str = "bhcore-", keep: bool | None = None) -> Iterator[Path]:
    """A fresh temporary folder for one run, removed afterwards.

    Set ``keep=True`` (or the environment variable ``BHCORE_KEEP_WORKDIR=1``) to
    keep it for debugging; its path is logged.
    """
    if keep is None:
        keep = os.environ.get(KEEP_ENV, "") not in ("", "0")
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            log.info("kept working folder %s", path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def isolated_env(home: str | os.PathLike, extra: Mapping[str, str] | None = None,
                 inherit: Sequence[str] = ("PATH", "LANG", "LC_ALL", "TZ")) -> dict[str, str]:
    """A small environment with its own ``HOME`` (and ``USER``) for one tool run."""
    env = {k: os.environ[k] for k in inherit if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = os.fspath(home)
    env["USER"] = os.environ.get("USER") or _user_name()
    env["LOGNAME"] = env["USER"]
    if extra:
        env.update(extra)
    return env


def _user_name() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "bhcore"
