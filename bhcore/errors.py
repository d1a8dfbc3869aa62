"""One error hierarchy for bhcore.

The CLI prints any ``BhError`` as one line (``str(err)``) and exits non-zero; any
other exception is a bug and keeps its traceback. Plugins wrap failures of the
libraries and tools they drive in one of these at their border.
"""
from __future__ import annotations

from pathlib import Path


class BhError(Exception):
    """Base of every expected failure; ``str()`` is the one-line user message."""

    def __init__(self, message: str, *, path: str | Path | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


# --- configuration -------------------------------------------------------------------
class ConfigError(BhError):
    """The user's configuration (registry, settings, CLI arguments) is wrong."""


class RegistryError(ConfigError):
    """The observatory registry cannot answer (database or content problem)."""


class ObsInfoError(RegistryError):
    """An obs.info file does not parse; names the file, line and field."""

    def __init__(self, message: str, *, path=None, line: int | None = None,
                 field: str | None = None):
        super().__init__(message, path=path)
        self.line = line
        self.field = field

    def __str__(self) -> str:
        where = self.path or "<obs.info>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


class UnknownObservatory(RegistryError):
    """No registry entry has the requested ONAME."""


class SettingsError(ConfigError):
    """A plugin or pipeline setting has an invalid value."""


# --- plugins -------------------------------------------------------------------------
class PluginError(BhError):
    """A backend cannot be found, loaded or chosen."""


class BackendNotFound(PluginError):
    """The requested backend is not installed; the message lists what is."""


class BackendAmbiguous(PluginError):
    """More than one selected backend implements a first-result stage."""


class NotImplementedYet(PluginError):
    """A backend exists but this capability is not built yet (never a fake result)."""


# --- stages --------------------------------------------------------------------------
class StageError(BhError):
    """A pipeline stage failed on one frame."""

    stage = "pipeline"

    def __init__(self, message: str, *, path=None, backend: str | None = None,
                 stage: str | None = None):
        super().__init__(message, path=path)
        self.backend = backend
        if stage:
            self.stage = stage


class InputError(StageError):
    """A frame or file cannot be read (broken FITS, no image, wrong shape)."""

    stage = "input"


class HeaderError(StageError):
    """The header cannot be standardised (missing or unparsable keyword)."""

    stage = "header"


class AstrometryNotSolved(StageError):
    """No backend produced an astrometric solution that passed its checks."""

    stage = "astrometry"


class PhotometryError(StageError):
    """Photometry failed on this frame."""

    stage = "photometry"


class CalibrationError(StageError):
    """Photometric calibration failed on this frame."""

    stage = "calibration"


# --- external tools ------------------------------------------------------------------
class ExternalToolError(BhError):
    """An external program failed; carries its command, exit code and stderr tail."""

    def __init__(self, message: str, *, command=None, returncode: int | None = None,
                 stderr_tail: str = "", path=None):
        super().__init__(message, path=path)
        self.command = list(command) if command else []
        self.returncode = returncode
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.returncode is not None and self.returncode < 0:    # killed, e.g. a crash
            text += f" (killed by {_signal_name(-self.returncode)})"
        elif self.returncode is not None:
            text += f" (exit code {self.returncode})"
        if self.stderr_tail:
            last = self.stderr_tail.strip().splitlines()[-1:] or [""]
            text += f": {last[0]}"
        return text


def _signal_name(number: int) -> str:
    import signal
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class MissingEngine(ExternalToolError):
    """A required executable is not installed; the message says how to install it."""
