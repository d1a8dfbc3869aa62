"""Catalogue backend 'file': a user catalogue (CSV, ECSV, FITS, VOTable).

Columns are mapped to the bhcore scheme by ``columns`` (``{"ra": "RA_ICRS", "V":
"Vmag", ...}``); names that are unambiguous across catalogues (``RAJ2000``,
``pmRA``, ``Gmag``, ``phot_g_mean_mag``, ``e_Vmag`` ...) are recognised without
a mapping. Ambiguous ones (``gmag`` can be SDSS, Pan-STARRS or APASS) must be
mapped by the user. ``ref_epoch`` says the epoch of the positions when the file
has no per-row epoch column; proper motions, when present, are applied.

Several files: ``path`` may be a list (the files share ``columns``, ``ref_epoch``,
``format``, ``mag_band``), and ``files`` lists files each with its own settings
(``{"path": ..., "columns": {...}, "ref_epoch": 2016.0}``; a key left out takes the
backend's own), read after those of ``path``. Each file is cut to the cone and
propagated to the epoch on its own. Then, like a catalogue chain: by default the
first file with stars in the cone answers (so calibration always gets one file's
photometry); with ``catalog_merge`` (which the catalogue layer sets when an
astrometry backend merges catalogues) every file that answers is merged into one
table, the earlier files preferred (``bhcore.refcat.merge_catalogs``: duplicates
within 1-2" dropped, a ``catalog`` column naming each star's file). A file that
cannot be read is then skipped and named in ``meta['merged']``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from pydantic import BaseModel

from bhcore.refcat import describe_merge, merge_catalogs
from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo

from . import __version__
from .common import (MAG_BANDS, CatalogSettings, CatalogUnavailable, brightest, cone_cut,
                     finish_columns, propagate, settings_of)

NAME = "file"
ALIASES = {
    "ra": ("ra", "RA_ICRS", "RAJ2000", "_RAJ2000", "RA", "ra_deg", "RAdeg", "ALPHA_J2000",
           "X_WORLD", "radeg"),
    "dec": ("dec", "DE_ICRS", "DEJ2000", "_DEJ2000", "DEC", "Dec", "dec_deg", "DEdeg",
            "DELTA_J2000", "Y_WORLD", "decdeg"),
    "ra_err": ("ra_err", "ra_error", "e_RA_ICRS", "e_RAJ2000"),
    "dec_err": ("dec_err", "dec_error", "e_DE_ICRS", "e_DEJ2000"),
    "pmra": ("pmra", "pmRA"), "pmdec": ("pmdec", "pmDE"),
    "pmra_err": ("pmra_err", "pmra_error", "e_pmRA"),
    "pmdec_err": ("pmdec_err", "pmdec_error", "e_pmDE"),
    "parallax": ("parallax", "Plx"), "parallax_err": ("parallax_err", "parallax_error", "e_Plx"),
    "ref_epoch": ("ref_epoch", "Epoch", "epoch"),
    "source_id": ("source_id", "id", "ID", "Source", "NUMBER"),
    "G": ("G", "Gmag", "phot_g_mean_mag"), "BP": ("BP", "BPmag", "phot_bp_mean_mag"),
    "RP": ("RP", "RPmag", "phot_rp_mean_mag"),
    "U": ("U", "Umag"), "B": ("B", "Bmag"), "V": ("V", "Vmag"), "R": ("R", "Rmag", "Rcmag"),
    "I": ("I", "Imag", "Icmag"), "J": ("J", "Jmag"), "H": ("H", "Hmag"), "Ks": ("Ks", "Kmag"),
    "VT": ("VT", "VTmag", "vt_mag"),
    "sdss_g": ("sdss_g", "g'mag"), "sdss_r": ("sdss_r", "r'mag"), "sdss_i": ("sdss_i", "i'mag"),
}
DEFAULT_UNITS = {"ra": u.deg, "dec": u.deg, "ra_err": u.mas, "dec_err": u.mas,
                 "pmra": u.mas / u.yr, "pmdec": u.mas / u.yr, "pmra_err": u.mas / u.yr,
                 "pmdec_err": u.mas / u.yr, "parallax": u.mas, "parallax_err": u.mas}


class FileEntry(BaseModel):
    """One of several files, with its own settings (None: the backend's own)."""

    path: str
    format: str | None = None
    columns: dict[str, str] | None = None
    ref_epoch: float | None = None
    mag_band: str | None = None


class Settings(CatalogSettings):
    """Which file(s), how the columns map, and the epoch of the positions."""

    path: str | list[str] = ""             # one file, or several sharing the settings below
    files: list[FileEntry] = []            # several files, each with its own settings
    format: str | None = None              # astropy format; None: from the extension
    columns: dict[str, str] = {}           # bhcore name -> file column
    ref_epoch: float = 2000.0              # when the file has no epoch column
    mag_band: str | None = None            # band used for mag_limit and ordering
    catalog_merge: bool = False            # several files: merge all (set by load_reference)


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="catalog", version=__version__,
        description="a user catalogue file (CSV/ECSV/FITS/VOTable) with a column mapping",
        settings_model=Settings)


def read_table(path: Path, fmt: str | None) -> Table:
    name = path.name.lower()
    try:
        if fmt:
            return Table.read(path, format=fmt)
        if name.endswith(".csv"):
            return Table.read(path, format="ascii.csv", comment="#")
        if name.endswith(".ecsv"):
            return Table.read(path, format="ascii.ecsv")
        if name.endswith((".xml", ".vot")):
            return Table.read(path, format="votable")
        return Table.read(path)        # FITS and anything astropy recognises
    except Exception as exc:
        raise CatalogUnavailable(f"file: cannot read catalogue {path} "
                                 f"({type(exc).__name__}: {str(exc)[:160]})") from None


def _quantity(col, std: str):
    """Column values in the standard unit (its own unit when it has one)."""
    unit = DEFAULT_UNITS.get(std)
    if std in ("ra", "dec") and col.dtype.kind in "US":
        return None                         # sexagesimal strings: parsed together below
    values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
    if unit is not None and getattr(col, "unit", None) is not None:
        try:
            return (values * col.unit).to_value(unit)
        except u.UnitConversionError:
            raise CatalogUnavailable(f"file: column {col.name} has unit {col.unit}, "
                                     f"expected something convertible to {unit}") from None
    return values


def standardise(raw: Table, s: Settings) -> Table:
    """Map the file's columns to the bhcore scheme (unmapped columns are kept)."""
    chosen: dict[str, str] = {}
    for std, col in s.columns.items():
        if col not in raw.colnames:
            raise CatalogUnavailable(f"file: mapped column '{col}' (for {std}) is not in "
                                     f"{s.path}; columns: {', '.join(raw.colnames)}")
        chosen[std] = col
    for std, names in ALIASES.items():
        if std not in chosen:
            found = next((n for n in names if n in raw.colnames), None)
            if found is not None:
                chosen[std] = found
    for band in MAG_BANDS:                      # e_Vmag -> V_err for mapped bands
        if band in chosen and f"{band}_err" not in chosen:
            err = f"e_{chosen[band]}"
            if err in raw.colnames:
                chosen[f"{band}_err"] = err
    if "ra" not in chosen or "dec" not in chosen:
        raise CatalogUnavailable(f"file: no RA/Dec columns found in {s.path}; map them "
                                 "with settings columns={'ra': ..., 'dec': ...}")
    table = Table()
    ra_col, dec_col = raw[chosen["ra"]], raw[chosen["dec"]]
    if ra_col.dtype.kind in "US" or dec_col.dtype.kind in "US":
        coords = SkyCoord(np.asarray(ra_col, dtype=str), np.asarray(dec_col, dtype=str),
                          unit=(u.hourangle, u.deg))
        table["ra"], table["dec"] = coords.ra.deg, coords.dec.deg
    for std, col in chosen.items():
        if std in table.colnames:
            continue
        if std == "source_id":
            table[std] = raw[col]
            continue
        table[std] = _quantity(raw[col], std)
    if "ref_epoch" not in table.colnames:
        table["ref_epoch"] = np.full(len(table), float(s.ref_epoch))
    for name in raw.colnames:                   # keep everything else for the user
        if name not in chosen.values() and name not in table.colnames:
            table[name] = raw[name]
    return finish_columns(table)


def file_settings(s: Settings) -> list[Settings]:
    """One Settings per file (``path`` entries first, then ``files``), each with one path."""
    paths = [s.path] if isinstance(s.path, str) else list(s.path)
    out = [s.model_copy(update={"path": p, "files": []}) for p in paths if p]
    for entry in s.files:
        own = {k: v for k, v in entry.model_dump().items() if v is not None}
        out.append(s.model_copy(update={**own, "files": []}))
    return out


def read_one(s: Settings, center, radius_deg, epoch) -> Table:
    """One file's stars in the cone, at ``epoch``, brightest first."""
    path = Path(s.path).expanduser()
    if not path.is_file():
        raise CatalogUnavailable(f"file: catalogue {path} does not exist")
    table = standardise(read_table(path, s.format), s)
    table = cone_cut(table, center, radius_deg)
    band = s.mag_band or next((b for b in MAG_BANDS if b in table.colnames), None)
    if s.mag_limit is not None and band:
        table = table[~(np.asarray(table[band]) > s.mag_limit)]
    table = brightest(propagate(table, epoch), band, s.row_limit)
    table.meta.update(catalog=f"file {path.name}", backend=NAME, mag_band=band,
                      source=str(path), radius_deg=float(radius_deg),
                      ra_center=float(center.icrs.ra.deg), dec_center=float(center.icrs.dec.deg))
    return table


@hookimpl
def bh_reference_catalog(name, center, radius_deg, epoch, settings):
    if name != NAME:
        return None
    s = settings_of(Settings, settings)
    each = file_settings(s)
    if not each:
        raise CatalogUnavailable("file: no catalogue path given (setting file.path or "
                                 "file.files)")
    if len(each) == 1:
        return read_one(each[0], center, radius_deg, epoch)
    parts, tried, empty = [], [], None
    for one in each:
        label = f"file {Path(one.path).name}"
        try:
            table = read_one(one, center, radius_deg, epoch)
        except CatalogUnavailable as exc:
            tried.append({"catalog": label, "stars": 0, "kept": 0, "error": str(exc)})
            continue
        if len(table) == 0:
            empty = table if empty is None else empty
            tried.append({"catalog": label, "stars": 0, "kept": 0,
                          "error": "no stars in the cone"})
            continue
        if not s.catalog_merge:                # the first file that answers, as a chain
            table.meta["files_tried"] = tried
            return table
        parts.append((label, table))
    if not parts:
        if empty is not None:
            empty.meta["files_tried"] = tried
            return empty
        raise CatalogUnavailable(f"file: none of {len(each)} files could be read ("
                                 + describe_merge(tried) + ")")
    table = merge_catalogs(parts)
    table.meta["merged"] = table.meta["merged"] + tried
    table = brightest(table, None, s.row_limit)
    table.meta.update(backend=NAME, source=", ".join(str(Path(o.path).expanduser())
                                                      for o in each))
    return table
