"""Re-run the calibration of stored frames without measuring them again.

Why: calibration methods and error models change (BHTOM once had to recalibrate
months of data after one such change); the photometry does not. Each frame keeps
its measured catalogue and the reference catalogue it was calibrated against, so a
new calibration is reproducible offline; it is stored as a new, current
calibration row beside the old ones (method version and settings included), and
the measurements' calibrated magnitudes follow it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from astropy.table import Table

from ..errors import BhError, CalibrationError
from ..pipeline import run_calibration, write_table
from . import quality as qa
from .db import ResultsDB
from .stage import apply_calibration, calibration_fields, stars_table

RERUN_KEYS = ("bhtom_filter", "band", "band_map", "color", "fit_color_term", "color_term",
              "min_color_range", "min_stars", "max_outlier_fraction", "max_catalog_err",
              "catalog_err_default", "max_inst_err", "exclude_flags", "bright_limit",
              "faint_limit", "reject_crowded", "clip_sigma", "max_iter",
              "match_radius_arcsec", "limit_snr", "target_ra", "target_dec",
              "pixel_scale_arcsec")


@dataclass
class RecalibrationSummary:
    done: list = field(default_factory=list)       # (stem, old zp, new zp)
    failed: list = field(default_factory=list)     # (stem, reason)
    skipped: list = field(default_factory=list)    # (stem, reason)


def _previous_settings(db: ResultsDB, frame_id: int) -> dict:
    for row in reversed(db.calibrations(frame_id)):
        data = json.loads(row.settings_json or "{}")
        if data:
            return {k: v for k, v in data.items() if k in RERUN_KEYS and v is not None}
    return {}


def recalibrate(results, backend: str = "calibrate_builtin",
                overrides: Mapping | None = None, stems=None, plots: bool = True
                ) -> RecalibrationSummary:
    """Recalibrate every (or the named) stored frame; failures are listed, not raised."""
    db = results if isinstance(results, ResultsDB) else ResultsDB(results)
    summary = RecalibrationSummary()
    for frame in db.frames():
        if stems and frame.stem not in stems:
            continue
        products = db.products(frame.id)
        catalog = products.get("calibrated") or products.get("photometry")
        reference = products.get("reference")
        if catalog is None or not Path(catalog).is_file():
            summary.skipped.append((frame.stem, "no stored photometry"))
            continue
        if reference is None or not Path(reference).is_file():
            summary.skipped.append((frame.stem, "no stored reference catalogue"))
            continue
        base = _previous_settings(db, frame.id)
        if frame.pixel_scale:
            base.setdefault("pixel_scale_arcsec", frame.pixel_scale)
        scoped = {f"{backend}.{k}": v for k, v in base.items()}
        scoped.update({f"{backend}.reference_path": str(reference),
                       f"{backend}.filter": frame.filter or None})
        scoped.update(overrides or {})
        try:
            result = run_calibration(catalog, backend, overrides=scoped)
        except CalibrationError as exc:
            db.add_calibration(frame.id, {**calibration_fields(None, "error", str(exc), scoped),
                                          "current": False}, {})
            summary.failed.append((frame.stem, str(exc)))
            continue
        except BhError as exc:
            summary.failed.append((frame.stem, str(exc)))
            continue
        table = Table.read(catalog, format="ascii.ecsv")
        cal = apply_calibration(table, result, frame.pixel_scale, frame.fwhm)
        cal.meta.update(table.meta, calibrated=True, calib_version=result.method_version)
        folder = Path(catalog).parent
        write_table(cal, folder / f"{frame.stem}_cal.ecsv")
        write_table(stars_table(result), folder / f"{frame.stem}_calstars.ecsv")
        if plots:
            from .plots import calibration_plot
            calibration_plot(result, result.notes["stars"], folder / f"{frame.stem}_calib.png")
        q = json.loads(frame.quality_json or "{}")
        qa.add_calibration(q, result)
        fields = {k: q.get(k) for k in ("zero_point", "zero_point_err", "color_term",
                                         "color_term_err", "scatter", "n_cal_stars",
                                         "outlier_fraction", "catalog", "band", "bhtom_band",
                                         "match_radius", "lim_mag", "photflag",
                                         "calib_version", "target_in_field")}
        fields.update(status="done", status_reason="", quality_json=json.dumps(q, default=str))
        mags = zip(range(len(cal)), cal["mag"], cal["mag_err"])
        db.add_calibration(frame.id, calibration_fields(result, "success", "", scoped),
                           fields, mags)
        summary.done.append((frame.stem, frame.zero_point, result.zero_point))
    return summary
