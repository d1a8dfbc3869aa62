"""Find, load, validate and list plugins (entry-point group ``bhcore``).

Only the backends that an observatory (or the CLI) selects are imported. A
first-result stage is called on exactly one chosen backend, so two installed
photometry engines never race for the same frame.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from typing import Annotated, Any, Iterable

import pluggy
from pydantic import AfterValidator, BaseModel

from . import hookspecs
from .errors import BackendAmbiguous, BackendNotFound, PluginError

GROUP = "bhcore"
FIRST_RESULT_HOOKS = {
    "catalog": "bh_reference_catalog",
    "astrometry": "bh_solve_astrometry",
    "photometry": "bh_measure_photometry",
    "calibration": "bh_calibrate_photometry",
}


def _positive_radii(value: list[float]) -> list[float]:
    if not value:
        raise ValueError("at least one aperture radius is needed")
    if any(r <= 0 for r in value):
        raise ValueError("aperture radii must be positive (pixels)")
    return [float(r) for r in value]


# A settings field type that photometry plugins share: aperture radii in pixels.
ApertureRadii = Annotated[list[float], AfterValidator(_positive_radii)]


@dataclass(frozen=True)
class Executable:
    """An external program a plugin needs, and how to get it."""

    name: str                       # binary on PATH, e.g. "source-extractor"
    apt_package: str = ""           # Debian package that provides it
    version_args: tuple[str, ...] = ("--version",)


@dataclass(frozen=True)
class PluginInfo:
    """What ``bh_plugin_info`` returns: feeds ``plugins list`` and ``doctor``."""

    name: str
    stage: str                      # header | catalog | astrometry | photometry | calibration
    version: str
    description: str = ""
    settings_model: type[BaseModel] | None = None
    executables: tuple[Executable, ...] = ()
    implemented: bool = True
    data_files: tuple[str, ...] = ()  # e.g. index files it needs (globs)
    extra: dict[str, Any] = field(default_factory=dict)

    def default_settings(self) -> dict[str, Any]:
        return self.settings_model().model_dump() if self.settings_model else {}


def installed_entry_points() -> dict[str, metadata.EntryPoint]:
    """Every installed entry point of group ``bhcore``, by name (nothing imported)."""
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(names: Iterable[str]) -> pluggy.PluginManager:
    """A plugin manager holding exactly the named backends (plus nothing else).

    Raises BackendNotFound listing what is installed when a name is unknown, and
    PluginError when a plugin fails to import or implements unknown hooks.
    """
    available = installed_entry_points()
    pm = _new_manager()
    for name in dict.fromkeys(names):
        if pm.has_plugin(name):
            continue
        ep = available.get(name)
        if ep is None:
            raise BackendNotFound(
                f"backend '{name}' is not installed; installed: "
                f"{', '.join(sorted(available)) or 'none'}")
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not look like ours
            raise PluginError(f"backend '{name}' ({ep.value}) failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        pm.register(module, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"invalid plugin: {exc}") from exc
    return pm


def plugin_info(pm: pluggy.PluginManager, name: str) -> PluginInfo:
    plugin = pm.get_plugin(name)
    if plugin is None:
        raise BackendNotFound(f"backend '{name}' is not loaded")
    impl = getattr(plugin, "bh_plugin_info", None)
    if impl is None:
        raise PluginError(f"backend '{name}' has no bh_plugin_info hook")
    info = impl()
    if not isinstance(info, PluginInfo):
        raise PluginError(f"backend '{name}': bh_plugin_info must return PluginInfo")
    return info


def all_plugin_infos() -> list[tuple[str, PluginInfo | None, str]]:
    """(entry-point name, info or None, error text) for every installed plugin."""
    rows = []
    for name in sorted(installed_entry_points()):
        try:
            pm = load_plugins([name])
            rows.append((name, plugin_info(pm, name), ""))
        except PluginError as exc:
            rows.append((name, None, str(exc)))
    return rows


def call_backend(pm: pluggy.PluginManager, stage: str, backend: str, **kwargs):
    """Call the first-result hook of ``stage`` on ``backend`` alone.

    Raises BackendNotFound when ``backend`` is not loaded or does not implement
    the stage, and PluginError when it answers None for its own name.
    """
    hook_name = FIRST_RESULT_HOOKS[stage]
    if pm.get_plugin(backend) is None:
        raise BackendNotFound(f"{stage} backend '{backend}' is not loaded")
    implementers = [impl.plugin_name for impl in getattr(pm.hook, hook_name).get_hookimpls()]
    if backend not in implementers:
        have = ", ".join(sorted(implementers)) or "none"
        raise BackendNotFound(f"'{backend}' does not implement the {stage} stage; "
                              f"{stage} backends loaded: {have}")
    others = [pm.get_plugin(n) for n in implementers if n != backend]
    caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
    result = caller(**kwargs)
    if result is None:
        raise PluginError(f"{stage} backend '{backend}' declined the request "
                          "(returned None for its own name)")
    return result


def single_backend(pm: pluggy.PluginManager, stage: str) -> str:
    """The one loaded backend implementing ``stage``; error if none or several."""
    hook = getattr(pm.hook, FIRST_RESULT_HOOKS[stage])
    names = sorted({impl.plugin_name for impl in hook.get_hookimpls()})
    if not names:
        raise BackendNotFound(f"no {stage} backend selected; installed: "
                              f"{', '.join(sorted(installed_entry_points()))}")
    if len(names) > 1:
        raise BackendAmbiguous(f"several {stage} backends loaded ({', '.join(names)}); "
                               "choose one with --backend")
    return names[0]


def executable_version(exe: Executable) -> str | None:
    """The first line an executable prints for its version, or None if missing."""
    path = shutil.which(exe.name)
    if path is None:
        return None
    if not exe.version_args:
        return _package_version(exe.apt_package) or "present (version unknown)"
    try:
        proc = subprocess.run([path, *exe.version_args], capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "present (version unknown)"
    text = (proc.stdout or proc.stderr or "").strip().splitlines()
    return text[0].strip() if text else "present (version unknown)"


def _package_version(package: str) -> str | None:
    """Debian package version, for tools that print no version of their own."""
    if not package or shutil.which("dpkg-query") is None:
        return None
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return f"{package} {proc.stdout.strip()}" if proc.returncode == 0 and proc.stdout else None
