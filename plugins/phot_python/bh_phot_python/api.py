"""Entry points used by the plugin hook: measure one frame, write its products."""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np

from bhcore.errors import BhError, PhotometryError
from bhcore.tables import SourceTable

from .engine import Config, run, write_residual

log = logging.getLogger(__name__)


def _settings_dict(settings) -> dict:
    if settings is None:
        return {}
    if hasattr(settings, "model_dump"):
        return settings.model_dump()
    return dict(settings)


def measure(frame, settings: Mapping[str, Any] | None = None) -> SourceTable:
    """Measure every source of ``frame``; returns a SourceTable (empty if none)."""
    settings = _settings_dict(settings)
    cfg = Config.from_settings(settings)
    start = time.perf_counter()
    try:
        return _measure(frame, settings, cfg, start)
    except BhError:
        raise
    except (ValueError, FloatingPointError, MemoryError, np.linalg.LinAlgError) as exc:
        raise PhotometryError(f"phot_python failed: {type(exc).__name__}: {exc}",
                              path=getattr(frame, "path", None),
                              backend="phot_python") from exc


def _measure(frame, settings, cfg: Config, start) -> SourceTable:
    from .catalog import build_table
    stars, fitter, ctx, psf, report = run(frame, cfg)
    meta = {"backend": "phot_python", "report": report}
    if stars is None:
        table = SourceTable.empty(meta=meta)
        table.meta.update(ctx.notes)
        return table
    fitter.finish()
    stars = fitter.stars
    ferr = np.sqrt(np.clip(stars.cov[:, 0, 0], 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(ferr > 0, stars.f / ferr, 0.0)
    keep = stars.alive & (snr >= cfg.min_snr) & np.isfinite(stars.f)
    report["n_fitted"] = int(stars.alive.sum())
    report["n_kept"] = int(keep.sum())
    report["elapsed_s"] = round(time.perf_counter() - start, 3)
    table = build_table(frame, stars, fitter, ctx, psf, cfg, report, keep)
    log.debug("phot_python: %d sources, report %s", len(table), report)
    products = settings.get("products_dir")
    if products and settings.get("write_residual", True):
        table.meta["residual_image"] = write_residual(frame, ctx, fitter.model, products)
    return table
