"""The reference catalogue of a field at the frame's epoch: a chain of backends.

Why its own module: astrometry (both backends and the Gaia grid) and the catalogue
plugins all ask the same question, "which stars are here at this epoch?", and the
answer has rules of its own: the chain of catalogue backends tried in order (the
first that answers wins), or with ``merge`` every one that answers, merged with the
earlier catalogues preferred (duplicates dropped, a ``catalog`` column for
provenance). Calibration never merges: one photometric system per frame.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time
from scipy.spatial import cKDTree

from .errors import StageError

log = logging.getLogger(__name__)


DEFAULT_CHAIN = ("gaia", "tycho2_local")


def unit_vectors(ra, dec) -> np.ndarray:
    """Unit vectors of positions in degrees (for k-d trees on the sphere)."""
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


class CatalogError(StageError):
    """No catalogue of the chain could answer for this frame."""

    stage = "catalog"


def frame_epoch(frame) -> Time | None:
    """Time of the exposure mid-point if known (MJD-OBS/DATE-OBS + EXPTIME/2), else None."""
    header = frame.header
    when = None
    for key, fmt in (("MJD-OBS", "mjd"), ("MJD", "mjd"), ("DATE-OBS", "isot"),
                     ("DATE", "isot")):
        value = header.get(key)
        if value in (None, ""):
            continue
        try:
            when = Time(float(value), format="mjd", scale="utc") if fmt == "mjd" else \
                Time(str(value).strip()[:23], format="isot", scale="utc")
            break
        except ValueError:
            continue
    if when is None:
        return None
    try:
        half = float(header.get("EXPTIME", 0.0) or 0.0) / 2.0
    except (TypeError, ValueError):
        half = 0.0
    return when + half * u.s


MERGE_RADIUS_ARCSEC = (1.0, 2.0)   # duplicate radius: 3 sigma of the quoted errors, clipped
_CORE_COLUMNS = ("source_id", "ra", "dec", "ra_err", "dec_err", "pmra", "pmdec", "pmra_err",
                 "pmdec_err", "parallax", "parallax_err", "ref_epoch", "epoch")
_MAIN_BANDS = ("G", "V", "VT", "R", "r", "mag")


def _main_band(table: Table) -> str | None:
    band = table.meta.get("mag_band")
    if band and band in table.colnames:
        return band
    return next((b for b in _MAIN_BANDS if b in table.colnames), None)


def _sigma_mas(table: Table) -> np.ndarray:
    """Per-axis position error (mas), NaN when the catalogue quotes none."""
    if {"ra_err", "dec_err"} <= set(table.colnames):
        return np.hypot(np.asarray(table["ra_err"], float),
                        np.asarray(table["dec_err"], float)) / math.sqrt(2.0)
    return np.full(len(table), np.nan)


def _same_kind(columns) -> bool:
    kinds = {("str" if c.dtype.kind in "US" else "num" if c.dtype.kind in "biuf" else c.dtype.kind)
             for c in columns}
    units = {str(getattr(c, "unit", None) or "") for c in columns}
    return len(kinds) == 1 and len(units) == 1 and kinds <= {"str", "num"}


def merge_catalogs(parts, radius_arcsec=MERGE_RADIUS_ARCSEC) -> Table:
    """One reference table from several catalogue tables, the earlier ones preferred.

    ``parts`` is a sequence of ``(label, table)`` in the bhcore catalogue scheme, each
    already at the frame epoch (every backend propagates its own positions). A star
    of a later table is a duplicate, and is dropped, when it lies within 3 times the
    combined quoted position error of a star already kept, that radius clipped to
    ``radius_arcsec`` (1-2"; 1" when neither catalogue quotes errors). Stars of one
    table are never merged with each other. The result keeps the astrometric
    columns, ``epoch``, and the other columns every table has (same kind and unit);
    it adds ``mag`` (each table's main band, named in ``mag_band``; the table's
    ``meta['mag_band']`` is ``mag``: good for ordering stars by brightness, never for
    photometry) and ``catalog`` (where each star came from; a table that is itself a
    merge keeps its own). ``meta['merged']`` lists, per catalogue, the stars it gave
    (``stars``) and those kept (``kept``).
    """
    from astropy.table import vstack
    parts = [(str(label), table) for label, table in parts]
    if not parts:
        raise ValueError("merge_catalogs: nothing to merge")
    low, high = (float(radius_arcsec), float(radius_arcsec)) if np.isscalar(radius_arcsec) \
        else (float(radius_arcsec[0]), float(radius_arcsec[1]))
    shared = [c for c in parts[0][1].colnames
              if c not in _CORE_COLUMNS and c not in ("mag", "mag_band", "catalog")
              and all(c in t.colnames for _l, t in parts)
              and _same_kind([t[c] for _l, t in parts])]
    pieces, entries = [], []
    kept_xyz = np.zeros((0, 3))
    kept_sig = np.zeros(0)
    chord_max = 2 * math.sin(math.radians(high / 3600.0) / 2)
    for label, table in parts:
        inner = table.meta.get("merged")
        entries += ([dict(e) for e in inner] if inner and "catalog" in table.colnames
                    else [{"catalog": label, "stars": len(table)}])
        n = len(table)
        ra, dec = np.asarray(table["ra"], float), np.asarray(table["dec"], float)
        xyz, sig = unit_vectors(ra, dec), _sigma_mas(table)
        keep = np.isfinite(ra) & np.isfinite(dec)
        if len(kept_xyz) and n:
            tree = cKDTree(kept_xyz)
            for i, near in enumerate(tree.query_ball_point(xyz, chord_max)):
                if not near or not keep[i]:
                    continue
                chord = np.linalg.norm(kept_xyz[near] - xyz[i], axis=1)
                sep = np.degrees(2 * np.arcsin(np.clip(chord / 2, 0, 1))) * 3600.0
                limit = np.clip(3e-3 * np.hypot(kept_sig[near], sig[i]), low, high)
                limit = np.where(np.isfinite(limit), limit, low)
                if np.any(sep <= limit):
                    keep[i] = False
        part = table[keep]
        piece = Table()
        for name in _CORE_COLUMNS:
            if name == "source_id":
                values = part[name] if name in part.colnames else np.arange(1, len(part) + 1)
                piece[name] = np.asarray(values).astype(str)
            elif name in part.colnames:
                piece[name] = np.ma.filled(np.ma.asarray(part[name], dtype=float), np.nan)
                piece[name].unit = part[name].unit
            else:
                piece[name] = np.full(len(part), np.nan)
        for name in shared:
            piece[name] = part[name]
        if inner and {"mag", "mag_band", "catalog"} <= set(part.colnames):
            piece["mag"] = np.asarray(part["mag"], float)
            piece["mag_band"] = np.asarray(part["mag_band"]).astype(str)
            piece["catalog"] = np.asarray(part["catalog"]).astype(str)
        else:
            band = _main_band(part)
            piece["mag"] = (np.ma.filled(np.ma.asarray(part[band], dtype=float), np.nan)
                            if band else np.full(len(part), np.nan))
            piece["mag_band"] = np.full(len(part), band or "", dtype=object).astype(str)
            piece["catalog"] = np.full(len(part), label, dtype=object).astype(str)
        pieces.append(piece)
        kept_xyz = np.vstack([kept_xyz, xyz[keep]])
        kept_sig = np.concatenate([kept_sig, sig[keep]])
    merged = vstack(pieces, join_type="exact", metadata_conflicts="silent")
    merged.meta = {}
    if "mag" in merged.colnames:
        merged["mag"].unit = u.mag
    labels = list(np.asarray(merged["catalog"]).astype(str))
    for entry in entries:
        entry["kept"] = labels.count(entry["catalog"])
    first = parts[0][1].meta
    merged.meta.update(
        catalog=" + ".join(e["catalog"] for e in entries if not e.get("error")),
        backend="merge", mag_band="mag",
        merged=entries, epoch=first.get("epoch"),
        merge_radius_arcsec=[low, high],
        **{k: first[k] for k in ("radius_deg", "ra_center", "dec_center") if k in first})
    return merged


def describe_merge(entries) -> str:
    """'A: 187 stars, 187 kept; B: 5 stars, 3 kept' from ``meta['merged']``."""
    out = []
    for e in entries:
        text = f"{e['catalog']}: {e.get('stars', 0)} stars, {e.get('kept', 0)} kept"
        if e.get("error"):
            text = f"{e['catalog']}: {e['error']}"
        out.append(text)
    return "; ".join(out)


def load_reference(center: SkyCoord, radius_deg: float, epoch, chain: Iterable[str] = (),
                   settings: Mapping[str, Any] | None = None, obs=None,
                   per_catalog: Mapping[str, Mapping[str, Any]] | None = None,
                   merge: bool = False):
    """The first catalogue of ``chain`` that answers with stars, or with ``merge`` all of
    them in one table (``merge_catalogs``, the earlier ones preferred).

    ``settings`` (e.g. ``offline``) go to every backend, ``per_catalog[name]`` to one.
    Each backend is also told ``catalog_merge=merge`` (the ``file`` backend with several
    files then merges them too, else it gives its first file that has stars). A
    catalogue that fails or has no star in the cone is skipped, with or without
    ``merge``. Returns ``(table, name, attempts)``; merged, the name joins the names of
    the catalogues that answered with '+' and ``attempts`` says how many stars each
    gave and kept. Raises CatalogError listing every attempt when none answers.
    """
    from .errors import BhError
    from .pipeline import resolve_settings
    from .plugins import call_backend, load_plugins, plugin_info
    attempts: list[tuple[str, str]] = []
    parts: list[tuple[int, str, Table]] = []      # (attempt index, name, table)
    chain = tuple(chain) or DEFAULT_CHAIN
    for name in chain:
        backend = name.split(":", 1)[0]
        try:
            pm = load_plugins([backend])
            info = plugin_info(pm, backend)
            overrides = {k: v for k, v in (settings or {}).items() if "." not in k}
            overrides["catalog_merge"] = bool(merge)
            overrides.update((per_catalog or {}).get(name, {}) or {})
            merged = resolve_settings(backend, info, obs, None, overrides)
            table = call_backend(pm, "catalog", backend, name=name, center=center,
                                 radius_deg=float(radius_deg), epoch=epoch, settings=merged)
        except BhError as exc:
            attempts.append((name, str(exc)))
            log.info("reference catalogue %s: %s", name, exc)
            continue
        if len(table) == 0:
            attempts.append((name, "no stars in the cone"))
            continue
        if not merge:
            attempts.append((name, f"{len(table)} stars"))
            return table, name, attempts
        parts.append((len(attempts), name, table))
        attempts.append((name, f"{len(table)} stars"))
    if parts:
        table = merge_catalogs([(t.meta.get("catalog", n), t) for _i, n, t in parts])
        entries = table.meta["merged"]
        for i, name, part in parts:            # what each gave and what was kept of it
            own = part.meta.get("merged") or [{"catalog": part.meta.get("catalog", name)}]
            labels = {e["catalog"] for e in own}
            said = describe_merge([e for e in entries if e["catalog"] in labels])
            attempts[i] = (name, f"{len(part)} stars, merged ({said})")
        log.info("reference catalogues merged: %s", describe_merge(entries))
        return table, "+".join(n for _i, n, _t in parts), attempts
    summary = "; ".join(f"{n}: {why}" for n, why in attempts)
    raise CatalogError(f"no reference catalogue for RA {center.icrs.ra.deg:.4f} Dec "
                             f"{center.icrs.dec.deg:+.4f} r={radius_deg:.3f} deg ({summary})")
