"""What every catalogue backend shares: the column scheme, cone cuts, epoch
propagation, the on-disk cone cache and the error raised when nothing can answer.

Remote answers are cached as they came (positions at the catalogue's own epoch) so
one cached cone serves frames of any date; propagation happens after reading.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, Table
from astropy.time import Time
from pydantic import BaseModel

from bhcore.errors import StageError
from bhcore.frame import atomic_write_bytes

log = logging.getLogger(__name__)

# Magnitude columns use these names (errors: "<band>_err"). Johnson-Kron-Cousins
# bands are upper case, SDSS bands carry a prefix so that no two names differ
# only by case (FITS column names are case-insensitive).
MAG_BANDS = ("G", "BP", "RP", "U", "B", "V", "R", "I", "sdss_u", "sdss_g", "sdss_r",
             "sdss_i", "sdss_z", "J", "H", "Ks", "VT", "urat_f", "ucac_f",
             "nomad_B", "nomad_V", "nomad_R")
ASTROMETRY_COLUMNS = ("source_id", "ra", "dec", "ra_err", "dec_err", "pmra", "pmdec",
                      "pmra_err", "pmdec_err", "parallax", "parallax_err", "ref_epoch")
MAG_ERR_PER_FLUX_ERR = 2.5 / math.log(10.0)     # 1.0857 mag per unit relative flux error


class CatalogUnavailable(StageError):
    """A catalogue cannot answer (offline without a cached cone, network, bad file)."""

    stage = "catalog"


class CatalogSettings(BaseModel):
    """Settings every catalogue backend accepts."""

    offline: bool = False            # only the cache and local backends
    use_cache: bool = True
    timeout_s: float = 60.0
    row_limit: int = 50000
    mag_limit: float | None = None   # faintest magnitude kept (backend's main band)


def home() -> Path:
    from bhcore.pipeline import home as bh_home
    return bh_home()


def epoch_year(epoch) -> float | None:
    """Julian year of ``epoch`` (Time, number or None)."""
    if epoch is None:
        return None
    if isinstance(epoch, Time):
        return float(epoch.jyear)
    return float(epoch)


def as_float(table: Table, name: str, unit=None) -> None:
    """Make column ``name`` plain float64 with NaN for masked values (in place)."""
    col = table[name]
    data = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan) \
        if isinstance(col, MaskedColumn) or np.ma.isMaskedArray(col) \
        else np.asarray(col, dtype=float)
    table[name] = np.asarray(data, dtype=np.float64)
    if unit is not None:
        table[name].unit = unit


def finish_columns(table: Table) -> Table:
    """Float columns in the standard units; missing astrometry columns added as NaN."""
    n = len(table)
    units = {"ra": u.deg, "dec": u.deg, "ra_err": u.mas, "dec_err": u.mas,
             "pmra": u.mas / u.yr, "pmdec": u.mas / u.yr, "pmra_err": u.mas / u.yr,
             "pmdec_err": u.mas / u.yr, "parallax": u.mas, "parallax_err": u.mas,
             "ref_epoch": u.yr}
    for name, unit in units.items():
        if name not in table.colnames:
            table[name] = np.full(n, np.nan)
        as_float(table, name, unit)
    for band in MAG_BANDS:
        for name in (band, f"{band}_err"):
            if name in table.colnames:
                as_float(table, name, u.mag)
    ordered = [c for c in ASTROMETRY_COLUMNS if c in table.colnames]
    rest = [c for c in table.colnames if c not in ordered]
    return table[ordered + rest]


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def cone_mask(ra_deg, dec_deg, center: SkyCoord, radius_deg: float) -> np.ndarray:
    c = center.icrs
    axis = unit_vectors([c.ra.deg], [c.dec.deg])[0]
    return unit_vectors(ra_deg, dec_deg) @ axis >= math.cos(math.radians(radius_deg))


def cone_cut(table: Table, center: SkyCoord, radius_deg: float) -> Table:
    if len(table) == 0:
        return table
    return table[cone_mask(table["ra"], table["dec"], center, radius_deg)]


def propagate(table: Table, epoch) -> Table:
    """Move positions from ``ref_epoch`` to ``epoch`` along great circles.

    Proper motions (pmra includes cos dec) are applied as a rotation along the
    direction of motion; position errors grow with the proper-motion errors. The
    perspective acceleration that a parallax and radial velocity would add is below
    a milliarcsecond over decades for all but a handful of stars and is ignored.
    Rows without a proper motion keep their catalogue position. Adds ``epoch``.
    """
    year = epoch_year(epoch)
    out = table.copy()
    out["epoch"] = np.asarray(out["ref_epoch"], dtype=float)
    out["epoch"].unit = u.yr
    out.meta["epoch"] = year
    if year is None or len(out) == 0:
        return out
    dt = year - np.asarray(out["ref_epoch"], dtype=float)
    pmra = np.asarray(out["pmra"], dtype=float)
    pmdec = np.asarray(out["pmdec"], dtype=float)
    ok = np.isfinite(dt) & np.isfinite(pmra) & np.isfinite(pmdec)
    if ok.any():
        start = SkyCoord(np.asarray(out["ra"])[ok] * u.deg, np.asarray(out["dec"])[ok] * u.deg)
        pa = np.arctan2(pmra[ok], pmdec[ok]) * u.rad
        sep = np.hypot(pmra[ok], pmdec[ok]) * dt[ok] * u.mas
        moved = start.directional_offset_by(pa, sep)
        ra = np.asarray(out["ra"], dtype=float).copy()
        dec = np.asarray(out["dec"], dtype=float).copy()
        ra[ok], dec[ok] = moved.ra.deg, moved.dec.deg
        out["ra"], out["dec"] = ra, dec
        out["ra"].unit = out["dec"].unit = u.deg
        epochs = np.asarray(out["epoch"], dtype=float).copy()
        epochs[ok] = year
        out["epoch"] = epochs
        out["epoch"].unit = u.yr
        for pos, pm in (("ra_err", "pmra_err"), ("dec_err", "pmdec_err")):
            grow = np.where(np.isfinite(out[pm]), np.asarray(out[pm]) * np.abs(dt), 0.0)
            new = np.asarray(out[pos], dtype=float).copy()
            new[ok] = np.hypot(new[ok], grow[ok])
            out[pos] = new
            out[pos].unit = u.mas
    return out


def brightest(table: Table, band: str | None, limit: int) -> Table:
    """At most ``limit`` rows, brightest first in ``band`` when it exists."""
    if band and band in table.colnames and len(table):
        mags = np.asarray(table[band], dtype=float)
        table = table[np.argsort(np.where(np.isfinite(mags), mags, np.inf), kind="stable")]
    return table[:limit] if limit and len(table) > limit else table


# --- the cone cache ---------------------------------------------------------------------
_NAME = re.compile(r"^(?P<key>[0-9a-f]{12})_ra(?P<ra>[0-9.]+)_dec(?P<dec>[-+][0-9.]+)"
                   r"_r(?P<r>[0-9.]+)\.ecsv$")


def query_cone(center: SkyCoord, radius_deg: float) -> tuple[SkyCoord, float]:
    """The cone actually asked for: a rounded centre and a padded, rounded radius,
    so that later frames of the same field (pointing drifts, dithers) reuse it."""
    c = center.icrs
    ra = round(c.ra.deg * 50.0) / 50.0 % 360.0           # 0.02 deg grid
    dec = max(-90.0, min(90.0, round(c.dec.deg * 50.0) / 50.0))
    rounded = SkyCoord(ra * u.deg, dec * u.deg)
    need = radius_deg + rounded.separation(c).deg
    radius = math.ceil(need * 1.1 / 0.05 + 1e-9) * 0.05   # 10 % margin, 0.05 deg steps
    return rounded, round(radius, 3)


class ConeCache:
    """Cones of one catalogue query kind under ``$BHCORE_HOME/cache/catalogs/<name>``.

    ``params`` (table, columns, magnitude limit, ...) is hashed into the key, so a
    cone is only reused for the same kind of query; a cone serves any smaller cone
    inside it.
    """

    def __init__(self, name: str, params: Mapping[str, Any], root: Path | None = None):
        self.name = name
        self.params = dict(params)
        blob = json.dumps(self.params, sort_keys=True, default=str).encode()
        self.key = hashlib.sha1(blob).hexdigest()[:12]
        self.folder = (root or home() / "cache" / "catalogs") / name

    def entries(self) -> list[tuple[Path, SkyCoord, float]]:
        if not self.folder.is_dir():
            return []
        out = []
        for path in sorted(self.folder.glob(f"{self.key}_*.ecsv")):
            m = _NAME.match(path.name)
            if m:
                out.append((path, SkyCoord(float(m["ra"]) * u.deg, float(m["dec"]) * u.deg),
                            float(m["r"])))
        return out

    def find(self, center: SkyCoord, radius_deg: float) -> Path | None:
        """The smallest cached cone that contains the requested one."""
        best = None
        for path, c, r in self.entries():
            if c.separation(center).deg + radius_deg <= r + 1e-9:
                if best is None or r < best[1]:
                    best = (path, r)
        return best[0] if best else None

    def load(self, path: Path) -> Table:
        table = Table.read(path, format="ascii.ecsv")
        table.meta["cache_file"] = str(path)
        return table

    def store(self, table: Table, center: SkyCoord, radius_deg: float) -> Path:
        c = center.icrs
        path = self.folder / (f"{self.key}_ra{c.ra.deg:.3f}_dec{c.dec.deg:+.3f}"
                              f"_r{radius_deg:.3f}.ecsv")
        clean = table.copy(copy_data=False)
        clean.meta = {"catalog": self.name, "params": self.params,
                      "center_ra": round(c.ra.deg, 6), "center_dec": round(c.dec.deg, 6),
                      "radius_deg": radius_deg, "fetched_unix": round(time.time())}
        buffer = io.StringIO()
        clean.write(buffer, format="ascii.ecsv")
        return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))

    def describe(self) -> str:
        cones = [f"({c.ra.deg:.2f}, {c.dec.deg:+.2f}) r={r:.2f}" for _p, c, r in self.entries()]
        return ", ".join(cones) if cones else "none"


def cached_query(name: str, params: Mapping[str, Any], center: SkyCoord, radius_deg: float,
                 settings: CatalogSettings, fetch: Callable[[SkyCoord, float], Table],
                 label: str) -> Table:
    """Answer a cone from the cache, or fetch a padded cone, cache it and cut it.

    Offline, a missing cone raises ``CatalogUnavailable`` naming what is missing.
    """
    if not (math.isfinite(radius_deg) and 0 < radius_deg <= 90):
        raise CatalogUnavailable(f"{label}: invalid cone radius {radius_deg!r} deg")
    cache = ConeCache(name, params)
    hit = cache.find(center, radius_deg) if settings.use_cache else None
    if hit is not None:
        log.debug("%s: cone from cache %s", label, hit.name)
        table = cache.load(hit)
        source = f"cache {hit.name}"
    elif settings.offline:
        c = center.icrs
        raise CatalogUnavailable(
            f"{label}: offline, and no cached cone covers RA {c.ra.deg:.4f} Dec "
            f"{c.dec.deg:+.4f} radius {radius_deg:.3f} deg for this query "
            f"(key {cache.key}; cached cones: {cache.describe()} in {cache.folder}); "
            "run once online, or use the tycho2_local or file catalogue")
    else:
        qcenter, qradius = query_cone(center, radius_deg)
        table = fetch(qcenter, qradius)
        if settings.use_cache:
            cache.store(table, qcenter, qradius)
        source = "remote"
    table = cone_cut(finish_columns(table), center, radius_deg)
    table.meta["source"] = source
    return table


def settings_of(model: type[BaseModel], settings: Mapping[str, Any] | None) -> BaseModel:
    """Validate the keys of ``settings`` that ``model`` knows (others are ignored)."""
    from bhcore.errors import SettingsError
    settings = settings or {}
    known = {k: v for k, v in settings.items() if k in model.model_fields}
    try:
        return model(**known)
    except Exception as exc:  # pydantic.ValidationError, on one line
        raise SettingsError(f"invalid catalogue settings: {str(exc).splitlines()[:3]}") from None


def describe_cone(center: SkyCoord, radius_deg: float) -> str:
    c = center.icrs
    return f"RA {c.ra.deg:.4f} Dec {c.dec.deg:+.4f} r={radius_deg:.3f} deg"
