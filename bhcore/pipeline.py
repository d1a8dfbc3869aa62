"""Run the stages of one frame with the backends an observatory (or the CLI) selects.

Settings cascade, lowest first: plugin defaults < user config (``$BHCORE_HOME/
config.json``) < observatory settings (obs.info ``BH_OPTS``) < CLI overrides. The
frame's camera values (gain, read noise, saturation, pixel scale) come from the
standardised header, else from the registry entry, and are passed to every backend
under common names so no plugin reads the registry itself.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .errors import SettingsError
from .frame import Frame
from .plugins import call_backend, load_plugins, plugin_info

COMMON_KEYS = ("gain", "read_noise_adu", "saturation", "pixel_scale_arcsec", "exptime")


def home() -> Path:
    return Path(os.environ.get("BHCORE_HOME", Path.home() / ".local/share/bhcore"))


def user_config() -> dict[str, Any]:
    """``$BHCORE_HOME/config.json``: ``{"backend.setting": value}``; absent = {}."""
    path = home() / "config.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read user config: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise SettingsError("user config must be a JSON object", path=path)
    return data


def _scoped(mapping: Mapping[str, Any], backend: str) -> dict[str, Any]:
    """Keys ``backend.name`` for this backend, plus unscoped keys."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        scope, dot, name = key.partition(".")
        if not dot:
            out[key] = value
        elif scope == backend:
            out[name] = value
    return out


def camera_values(frame: Frame | None, obs) -> dict[str, Any]:
    """Gain (e/ADU), read noise (ADU), saturation (ADU), pixel scale ("/px), exposure."""
    values: dict[str, Any] = {}
    header = frame.header if frame is not None else {}
    for key, card in (("gain", "GAIN"), ("read_noise_adu", "RDNOISE"),
                      ("saturation", "SATURATE"), ("exptime", "EXPTIME")):
        raw = header.get(card) if card in header else None
        if raw is None and obs is not None and key != "exptime":
            raw = getattr(obs, key, None)
        values[key] = _float_or_none(raw)
    scale = None
    if frame is not None and frame.wcs is not None:
        from astropy.wcs.utils import proj_plane_pixel_scales
        scale = float(proj_plane_pixel_scales(frame.wcs.celestial).mean() * 3600.0)
    elif "CDELT1" in header:
        # a scale hint from the obs.info (deg/px); pixel-unit CDELT1 = 1 is not a scale
        cdelt = _float_or_none(header["CDELT1"])
        scale = abs(cdelt) * 3600.0 if cdelt and abs(cdelt) < 0.05 else None
    values["pixel_scale_arcsec"] = scale
    return {k: v for k, v in values.items() if v is not None}


def _float_or_none(value):
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def resolve_settings(backend: str, info=None, obs=None, frame: Frame | None = None,
                     overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings one backend gets for one frame, validated by its model."""
    merged: dict[str, Any] = dict(info.default_settings()) if info else {}
    merged.update(camera_values(frame, obs))
    merged.update(_scoped(user_config(), backend))
    if obs is not None:
        merged.update(_scoped(getattr(obs, "plugin_settings", {}) or {}, backend))
    merged.update(_scoped(overrides or {}, backend))
    if info is not None and info.settings_model is not None:
        model_fields = info.settings_model.model_fields
        known = {k: v for k, v in merged.items() if k in model_fields}
        try:
            validated = info.settings_model(**known).model_dump()
        except Exception as exc:  # pydantic.ValidationError, rendered on one line
            first = str(exc).splitlines()
            raise SettingsError(f"{backend}: invalid settings: "
                                f"{' '.join(first[:3])}") from None
        merged.update(validated)
    merged["backend"] = backend
    return merged


def run_photometry(frame: Frame, backend: str, obs=None, overrides=None):
    """Measure every source of ``frame`` with one photometry backend."""
    pm = load_plugins([backend])
    info = plugin_info(pm, backend)
    settings = resolve_settings(backend, info, obs or frame.obs, frame, overrides)
    start = time.perf_counter()
    table = call_backend(pm, "photometry", backend, frame=frame, settings=settings)
    table.meta.setdefault("backend", backend)
    table.meta.setdefault("backend_version", info.version)
    table.meta["elapsed_s"] = round(time.perf_counter() - start, 3)
    return table


def run_astrometry(frame: Frame, backends, obs=None, overrides=None, sources=None):
    """Try each astrometry backend in order; the first solution that passes wins.

    Returns (result, attempts) where attempts records what every backend said.
    """
    from .errors import AstrometryNotSolved, BhError
    attempts: list[tuple[str, str]] = []
    for backend in backends:
        try:
            pm = load_plugins([backend])
            info = plugin_info(pm, backend)
            settings = resolve_settings(backend, info, obs or frame.obs, frame, overrides)
            result = call_backend(pm, "astrometry", backend, frame=frame,
                                  sources=sources, settings=settings)
        except BhError as exc:
            attempts.append((backend, str(exc)))
            continue
        if result.solved:
            attempts.append((backend, "solved"))
            return result, attempts
        attempts.append((backend, "not solved"))
    summary = "; ".join(f"{b}: {why}" for b, why in attempts) or "no backend selected"
    error = AstrometryNotSolved(f"no astrometric solution ({summary})", path=frame.path)
    error.attempts = [why for _b, why in attempts]
    raise error


# --- products and batch runs ------------------------------------------------------------
def write_table(table, path) -> Path:
    """Write a table as ECSV atomically (temporary file, then rename)."""
    import io
    from .frame import atomic_write_text
    path = Path(path)
    buffer = io.StringIO()
    clean = table.copy(copy_data=False)
    clean.meta = {k: v for k, v in table.meta.items()
                  if isinstance(v, (str, int, float, bool, list, dict, type(None)))}
    clean.write(buffer, format="ascii.ecsv")
    return atomic_write_text(path, buffer.getvalue())


def wcs_cards(result, attempts=None) -> dict[str, Any]:
    """Header cards of a solved WCS plus the astrometry QA keywords."""
    from .gaia_grid import qa_cards
    return qa_cards(result, attempts)


def run_calibration(catalog_path, backend: str, obs=None, overrides=None):
    """Calibrate a stored SourceTable (re-runnable without re-measuring)."""
    from astropy.table import Table
    pm = load_plugins([backend])
    info = plugin_info(pm, backend)
    sources = Table.read(catalog_path, format="ascii.ecsv")
    settings = resolve_settings(backend, info, obs, None, overrides)
    return call_backend(pm, "calibration", backend, frame=None, sources=sources,
                        reference=None, settings=settings)
