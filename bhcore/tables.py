"""SourceTable and the result types that stages hand to each other.

Pixel positions in a SourceTable are **0-based** pixel centres (numpy convention).
SExtractor, IRAF and DAOPHOT are 1-based: plugins convert at their border.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

LEADING_COLUMNS = ("id", "x", "y", "flux", "flux_err", "flags")


class SourceFlag(enum.IntFlag):
    """Per-source quality bits shared by every photometry backend."""

    SATURATED = 1
    NEAR_EDGE = 2
    BLENDED = 4
    NOT_CONVERGED = 8
    MASKED_PIXELS = 16
    EXTERNAL = 256          # backend-specific flags are kept in column ``flags_raw``


class SourceTable(Table):
    """An astropy Table whose first columns are ``id, x, y, flux, flux_err, flags``.

    ``meta`` records at least ``backend`` and ``backend_version``.
    """

    @classmethod
    def build(cls, x, y, flux, flux_err, flags=None, *, ids=None, meta=None,
              **extra) -> "SourceTable":
        """Make a table from arrays; extra keyword arrays become optional columns."""
        x = np.asarray(x, dtype=float)
        n = len(x)
        table = cls(meta=dict(meta or {}))
        table["id"] = np.arange(1, n + 1) if ids is None else np.asarray(ids)
        table["x"] = x
        table["y"] = np.asarray(y, dtype=float)
        table["flux"] = np.asarray(flux, dtype=float)
        table["flux_err"] = np.asarray(flux_err, dtype=float)
        table["flags"] = (np.zeros(n, dtype=np.int32) if flags is None
                          else np.asarray(flags, dtype=np.int32))
        for name, values in extra.items():
            table[name] = values
        return table

    @classmethod
    def empty(cls, meta=None) -> "SourceTable":
        """A table with the leading columns and no rows (a frame with no sources)."""
        return cls.build([], [], [], [], meta=meta)

    def check(self) -> "SourceTable":
        """Raise ValueError if the leading columns are missing or out of order."""
        names = tuple(self.colnames[: len(LEADING_COLUMNS)])
        if names != LEADING_COLUMNS:
            raise ValueError(f"SourceTable must start with {LEADING_COLUMNS}, got {names}")
        return self


@dataclass(frozen=True)
class AstrometryResult:
    """What an astrometry backend returns; ``solved`` False is never passed on."""

    wcs: WCS | None
    solved: bool
    n_matched: int = 0
    rms_arcsec: float = float("nan")
    backend: str = ""
    catalog: str = ""
    matches: Table | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationResult:
    """A photometric zero point (and colour term) with its quality figures."""

    zero_point: float
    zero_point_err: float
    color_term: float | None = None
    color_term_err: float | None = None
    n_stars: int = 0
    outlier_fraction: float = 0.0
    scatter: float = float("nan")
    catalog: str = ""
    band: str = ""
    backend: str = ""
    match_radius_arcsec: float = float("nan")
    method_version: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


def pixels_near(flagged: np.ndarray | None, x, y, radius: float) -> np.ndarray:
    """True for each source (0-based x, y) with a flagged pixel within ``radius`` px."""
    out = np.zeros(len(x), dtype=bool)
    if flagged is None or not flagged.any() or len(x) == 0:
        return out
    ny, nx = flagged.shape
    r = int(np.ceil(radius))
    for i, (xc, yc) in enumerate(zip(x, y)):
        if not (np.isfinite(xc) and np.isfinite(yc)):
            continue
        x0, x1 = max(int(np.rint(xc)) - r, 0), min(int(np.rint(xc)) + r + 1, nx)
        y0, y1 = max(int(np.rint(yc)) - r, 0), min(int(np.rint(yc)) + r + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = (xx - xc) ** 2 + (yy - yc) ** 2 <= radius ** 2
        out[i] = bool(flagged[y0:y1, x0:x1][inside].any())
    return out
