"""Files in the formats BHTOM accepts: light-curve CSV and SExtractor ASCII_HEAD.

Why hand-written writers: BHTOM parses these files with its own readers, so the
layout is fixed to what its documentation shows (``time,magnitude,error,filter``
with MJD in UTC; ``#   1 NAME  description [unit]`` header lines, 1-based pixel
columns), and each writer has a reader here so a test can round-trip it.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..frame import atomic_write_text

SEXTRACTOR_COLUMNS = (   # name, description, unit, format
    ("NUMBER", "Running object number", "", "{:10d}"),
    ("ALPHA_J2000", "Right ascension of barycenter (J2000)", "deg", "{:15.8f}"),
    ("DELTA_J2000", "Declination of barycenter (J2000)", "deg", "{:15.8f}"),
    ("XWIN_IMAGE", "Windowed position estimate along x", "pixel", "{:11.4f}"),
    ("YWIN_IMAGE", "Windowed position estimate along y", "pixel", "{:11.4f}"),
    ("MAG_AUTO", "Kron-like elliptical aperture magnitude", "mag", "{:9.4f}"),
    ("MAGERR_AUTO", "RMS error for AUTO magnitude", "mag", "{:9.4f}"),
    ("FLUX_AUTO", "Flux within a Kron-like elliptical aperture", "count", "{:14.4f}"),
    ("FLUXERR_AUTO", "RMS error for AUTO flux", "count", "{:14.4f}"),
    ("FWHM_IMAGE", "FWHM assuming a gaussian core", "pixel", "{:9.3f}"),
    ("FLAGS", "Extraction flags", "", "{:4d}"),
)
INSTRUMENTAL_ZERO_POINT = 25.0


def write_sextractor(table: Table, path, zero_point: float = INSTRUMENTAL_ZERO_POINT) -> Path:
    """BHTOM's ``photometry`` upload: instrumental MAG_AUTO = zero_point - 2.5 log10(flux).

    Positions are converted to SExtractor's 1-based pixels; rows without sky
    coordinates or a positive flux are left out (BHTOM cannot match them).
    """
    flux = np.asarray(table["flux"], float)
    ferr = np.asarray(table["flux_err"], float)
    n = len(table)

    def column(name, default):
        return np.asarray(table[name]) if name in table.colnames else default

    ra = np.asarray(column("ra", np.full(n, np.nan)), float)
    dec = np.asarray(column("dec", np.full(n, np.nan)), float)
    ok = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(flux) & (flux > 0)
    fwhm = np.asarray(column("fwhm", np.full(n, np.nan)), float)
    ids = column("id", np.arange(1, n + 1))
    flags = np.asarray(column("flags", np.zeros(n, int)), int)
    lines = []
    for k, (name, desc, unit, _fmt) in enumerate(SEXTRACTOR_COLUMNS, start=1):
        lines.append(f"#{k:4d} {name:<16s}{desc}" + (f" [{unit}]" if unit else ""))
    for i in np.flatnonzero(ok):
        mag = zero_point - 2.5 * math.log10(flux[i])
        merr = 2.5 / math.log(10) * ferr[i] / flux[i] if np.isfinite(ferr[i]) else 99.0
        values = (int(ids[i]), ra[i], dec[i], table["x"][i] + 1.0, table["y"][i] + 1.0, mag,
                  merr, flux[i], ferr[i] if np.isfinite(ferr[i]) else 0.0,
                  fwhm[i] if np.isfinite(fwhm[i]) else 0.0, int(flags[i]))
        lines.append(" ".join(fmt.format(v) for (_n, _d, _u, fmt), v
                              in zip(SEXTRACTOR_COLUMNS, values)))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_sextractor(path) -> Table:
    """Read an ASCII_HEAD catalogue (columns named by its ``#  k NAME`` lines)."""
    names, rows = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            parts = line[1:].split()
            if len(parts) >= 2 and parts[0].isdigit():
                names.append(parts[1])
        elif line.strip():
            rows.append([float(v) for v in line.split()])
    table = Table(rows=rows or None, names=names) if rows else Table(names=names)
    for name in ("NUMBER", "FLAGS"):
        if name in table.colnames and len(table):
            table[name] = table[name].astype(int)
    return table


def write_bhtom_csv(lc: Table, path, filter_name: str, observer: str | None = None) -> Path:
    """Write :func:`bhtom_csv_text` atomically."""
    return atomic_write_text(path, bhtom_csv_text(lc, filter_name, observer))


def bhtom_csv_text(lc: Table, filter_name: str, observer: str | None = None) -> str:
    """``time,magnitude,error,filter`` (MJD UTC); non-detections have error -1.

    ``lc`` needs ``mjd, mag, mag_err`` and optionally ``upper_limit`` (bool).
    Rows without a finite magnitude are left out.
    """
    buffer = io.StringIO()
    header = ["time", "magnitude", "error", "filter"] + (["observer"] if observer else [])
    buffer.write(",".join(header) + "\n")
    limits = (np.asarray(lc["upper_limit"], bool) if "upper_limit" in lc.colnames
              else np.zeros(len(lc), bool))
    for row, limit in zip(lc, limits):
        mag, err = float(row["mag"]), float(row["mag_err"])
        if not np.isfinite(mag) or not np.isfinite(row["mjd"]):
            continue
        err = -1.0 if limit or not np.isfinite(err) else err
        fields = [f"{float(row['mjd']):.6f}", f"{mag:.4f}", f"{err:.4f}", filter_name]
        buffer.write(",".join(fields + ([observer] if observer else [])) + "\n")
    return buffer.getvalue()


def read_bhtom_csv(path) -> Table:
    """Read a BHTOM light-curve CSV back (``upper_limit`` = error < 0 or >= 99)."""
    table = Table.read(path, format="ascii.csv")
    table["upper_limit"] = (np.asarray(table["error"], float) < 0) | (
        np.asarray(table["error"], float) >= 99)
    return table


def write_lightcurve_ecsv(lc: Table, path) -> Path:
    """The full light curve (every column) as ECSV, written atomically."""
    return atomic_write_text(path, lightcurve_ecsv_text(lc))


def lightcurve_ecsv_text(lc: Table) -> str:
    """The full light curve (every column) as ECSV text."""
    buffer = io.StringIO()
    clean = lc.copy(copy_data=False)
    clean.meta = {k: v for k, v in lc.meta.items()
                  if isinstance(v, (str, int, float, bool, list, dict, type(None)))}
    clean.write(buffer, format="ascii.ecsv")
    return buffer.getvalue()
