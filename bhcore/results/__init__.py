"""Results of a run: per-frame products, quality keywords and the results database.

``calibrate_and_record`` is the stage the runner calls after photometry;
``ResultsDB`` opens the database (SQLite beside the products by default, any
SQLAlchemy URL such as PostgreSQL); ``recalibrate`` re-runs calibrations on
stored photometry. Heavy modules (plots, catalogues) load only when used.
"""
from __future__ import annotations

from .db import ResultsDB, ResultsError, results_url
from .stage import apply_calibration, calibrate_and_record, quality_cards

__all__ = ["ResultsDB", "ResultsError", "apply_calibration", "calibrate_and_record",
           "quality_cards", "results_url"]
