"""Read DAOPHOT text outputs (.coo, .mag, .als) into bhcore tables.

DAOPHOT positions are 1-based: 1 is subtracted here, once. ALLSTAR magnitudes
become fluxes with the zero point that was set (``flux = 10**(-0.4 (mag - zmag))``,
``flux_err = flux * merr * ln(10) / 2.5``).

Flags: ``flags_raw`` is ALLSTAR's PIER code; a non-zero code -> NOT_CONVERGED.
SATURATED (a pixel at or above ``datamax`` within the fitting radius), MASKED_PIXELS
(a bad pixel within the fitting radius), NEAR_EDGE (the PSF radius leaves the
image) and BLENDED (another fitted star within 2 FWHM) are derived from the
pixels and positions, since ALLSTAR has no per-star flags for them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table
from scipy.spatial import cKDTree

from bhcore.tables import SourceFlag, SourceTable, pixels_near

LN10_OVER_2P5 = math.log(10.0) / 2.5


_FORMAT = re.compile(r"%-?(\d+)")


def read_daophot(path: Path) -> Table:
    """A DAOPHOT/APPHOT text file (.coo, .mag, .pst, .als, .arj) as a Table.

    Values are cut at the widths of the ``#F`` formats (a value that overflows its
    width runs into the next one, so splitting on blanks is wrong). Records span
    several lines (continued with a trailing backslash); a line ending in ``*\\``
    repeats (one per aperture in .mag files) and its columns get the suffixes 1..n
    when it repeats more than once, as astropy's 'daophot' reader names them.
    INDEF becomes a masked value; ``#K`` keywords go into ``meta['keywords']``.
    (astropy's reader fails on a multi-aperture file holding a single star.)
    """
    names: list[list[str]] = []
    widths: list[list[int]] = []
    keywords: dict[str, str] = {}
    records: list[list[tuple[str, bool]]] = []
    current: list[tuple[str, bool]] = []
    for raw in Path(path).read_text().splitlines():
        if raw.startswith("#N"):                # one #N/#F line per data line
            names.append(raw[2:].rstrip().rstrip("\\").split())
            continue
        if raw.startswith("#F"):
            widths.append([int(w) for w in _FORMAT.findall(raw[2:])])
            continue
        if raw.startswith("#K"):
            key, _, rest = raw[2:].partition("=")
            keywords[key.strip()] = rest.split()[0] if rest.split() else ""
            continue
        if raw.startswith("#") or not raw.strip():
            continue
        text = raw.rstrip()
        more = text.endswith("\\")
        body = text.rstrip("\\").rstrip()
        current.append((raw, body.endswith("*")))
        if not more:
            records.append(current)
            current = []
    if not records or not names:
        return Table(meta={"keywords": keywords})
    if len(widths) != len(names) or any(len(w) != len(n) for w, n in zip(widths, names)):
        raise ValueError(f"{path}: #N and #F header lines do not match")
    return _records_to_table(records, names, widths, keywords)


def _cut(line: str, widths: list[int]) -> list[str]:
    out, start = [], 0
    for width in widths:
        out.append(line[start:start + width].strip())
        start += width
    return out


def _flush(repeats, header_names, k, names, values) -> int:
    """Append a block of repeated (per-aperture) lines; returns the next header line."""
    fields = header_names[k]
    many = len(repeats) > 1
    for n, block in enumerate(repeats, start=1):
        names.extend(f"{f}{n}" if many else f for f in fields)
        values.extend(block)
    return k + 1


def _records_to_table(records, header_names, header_widths, keywords) -> Table:
    layout: list[str] | None = None
    rows = []
    for record in records:
        names, values, k = [], [], 0
        repeats: list[list[str]] = []
        for line, repeat in record:
            if repeats and not repeat:
                k = _flush(repeats, header_names, k, names, values)
                repeats = []
            if k >= len(header_names):
                raise ValueError("DAOPHOT record has more lines than its #N header")
            tokens = _cut(line, header_widths[k])
            if repeat:                      # one line per aperture, same columns
                repeats.append(tokens)
                continue
            names.extend(header_names[k])
            values.extend(tokens)
            k += 1
        if repeats:
            _flush(repeats, header_names, k, names, values)
        if layout is None:
            layout = names
        elif names != layout:
            raise ValueError("DAOPHOT records have different layouts")
        rows.append(values)
    columns = {name: _column([row[j] for row in rows]) for j, name in enumerate(layout or [])}
    return Table(columns, meta={"keywords": keywords})


def _column(tokens: list[str]):
    try:
        values = [int(t) for t in tokens]
        return np.asarray(values, dtype=np.int64)
    except ValueError:
        pass
    try:
        values = [np.nan if t == "INDEF" else float(t) for t in tokens]
        return np.ma.masked_invalid(np.asarray(values, dtype=float))
    except ValueError:
        return np.asarray(tokens, dtype=str)


def count_stars(path: Path) -> int:
    return len(read_daophot(path)) if Path(path).exists() else 0


def _num(table: Table, name: str) -> np.ndarray:
    """A numeric column with INDEF (masked) as NaN."""
    if name not in table.colnames:
        return np.full(len(table), np.nan)
    col = table[name]
    values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan) \
        if np.ma.isMaskedArray(col) or getattr(col, "mask", None) is not None \
        else np.asarray(col, dtype=float)
    return np.asarray(values, dtype=float)


def aperture_label(radius: float) -> str:
    """Column suffix of an aperture radius: 3 -> '3', 4.5 -> '4p5'."""
    return f"{radius:g}".replace(".", "p").replace("-", "m")


def mag_to_flux(mag, merr, zmag: float):
    mag = np.asarray(mag, dtype=float)
    flux = 10.0 ** (-0.4 * (mag - zmag))
    return flux, flux * np.asarray(merr, dtype=float) * LN10_OVER_2P5


def _aperture_index(table: Table, radius: float) -> int | None:
    """The n of the PHOT column set (RAPERTn, MAGn, ...) whose radius is ``radius``."""
    if not len(table):
        return None
    found = {0: table["RAPERT"]} if "RAPERT" in table.colnames else {}
    n = 1
    while f"RAPERT{n}" in table.colnames:
        found[n] = table[f"RAPERT{n}"]
        n += 1
    best, best_diff = None, 0.02            # RAPERT is printed with 2 decimals
    for index, column in found.items():
        diff = abs(float(column[0]) - radius)
        if diff <= best_diff:
            best, best_diff = index, diff
    return best


def aperture_columns(mags: list[Table], ids: np.ndarray, radii: list[float],
                     zmag: float) -> dict[str, np.ndarray]:
    """mag/flux columns of the requested radii from PHOT outputs, matched by ID.

    PHOT sorts its apertures, so each radius is found by its RAPERTn value.
    """
    rows: dict[int, tuple[Table, int]] = {}
    for table in mags:
        if len(table) == 0 or "ID" not in table.colnames:
            continue
        for k, star_id in enumerate(np.asarray(table["ID"], dtype=int)):
            rows[int(star_id)] = (table, k)
    out: dict[str, np.ndarray] = {}
    n = len(ids)
    cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}
    for radius in radii:
        mag = np.full(n, np.nan)
        merr = np.full(n, np.nan)
        for i, star_id in enumerate(ids):
            found = rows.get(int(star_id))
            if found is None:
                continue
            table, k = found
            key = (id(table), radius)
            if key not in cache:
                index = _aperture_index(table, radius)
                suffix = "" if index == 0 else str(index)
                cache[key] = ((_num(table, f"MAG{suffix}"), _num(table, f"MERR{suffix}"))
                              if index is not None else
                              (np.full(len(table), np.nan), np.full(len(table), np.nan)))
            mag[i] = cache[key][0][k]
            merr[i] = cache[key][1][k]
        flux, flux_err = mag_to_flux(mag, merr, zmag)
        label = aperture_label(radius)
        out[f"flux_aper_{label}"] = flux
        out[f"fluxerr_aper_{label}"] = flux_err
        out[f"mag_aper_{label}"] = mag
        out[f"magerr_aper_{label}"] = merr
    return out


def build_table(als: Table, *, zmag: float, fwhm: float, fitrad: float, psfrad: float,
                shape: tuple[int, int], saturated_pixels: np.ndarray | None,
                bad_pixels: np.ndarray | None, apertures: dict[str, np.ndarray],
                wcs=None, meta: dict | None = None) -> SourceTable:
    if len(als) == 0:
        table = SourceTable.empty(meta=meta)
        table["mag"] = np.zeros(0)
        table["mag_err"] = np.zeros(0)
        _units(table)
        return table
    ids = np.asarray(als["ID"], dtype=np.int64)
    x = _num(als, "XCENTER") - 1.0
    y = _num(als, "YCENTER") - 1.0
    mag = _num(als, "MAG")
    merr = _num(als, "MERR")
    flux, flux_err = mag_to_flux(mag, merr, zmag)
    pier = np.nan_to_num(_num(als, "PIER"), nan=-1).astype(np.int32)
    flags = np.zeros(len(als), dtype=np.int32)
    flags[(pier != 0) | ~np.isfinite(flux)] |= SourceFlag.NOT_CONVERGED
    check = max(fitrad, 1.5)
    flags[pixels_near(saturated_pixels, x, y, check)] |= SourceFlag.SATURATED
    flags[pixels_near(bad_pixels, x, y, check)] |= SourceFlag.MASKED_PIXELS
    ny, nx = shape
    edge = (x < psfrad) | (y < psfrad) | (x > nx - 1 - psfrad) | (y > ny - 1 - psfrad)
    flags[edge] |= SourceFlag.NEAR_EDGE
    if len(x) > 1:
        dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        flags[dist[:, 1] < 2.0 * fwhm] |= SourceFlag.BLENDED
    columns: dict[str, object] = {"mag": mag, "mag_err": merr}
    if wcs is not None:
        ra, dec = wcs.celestial.pixel_to_world_values(x, y)
        columns["ra"] = np.asarray(ra, dtype=float) * u.deg
        columns["dec"] = np.asarray(dec, dtype=float) * u.deg
    columns.update(apertures)
    columns.update({
        "sky": _num(als, "MSKY"), "sharpness": _num(als, "SHARPNESS"),
        "chi": _num(als, "CHI"),
        "niter": np.nan_to_num(_num(als, "NITER"), nan=0).astype(np.int32),
        "flags_raw": pier,
        "perror": np.asarray(als["PERROR"], dtype=str) if "PERROR" in als.colnames
        else np.full(len(als), ""),
    })
    table = SourceTable.build(x, y, flux, flux_err, flags, ids=ids, meta=meta or {},
                              **columns)
    _units(table)
    return table


def _units(table: Table) -> None:
    for name in table.colnames:
        if name in ("x", "y"):
            table[name].unit = u.pix
        elif name.startswith(("mag", "magerr")):
            table[name].unit = u.mag
        elif name.startswith(("flux", "fluxerr")) or name == "sky":
            table[name].unit = u.adu
