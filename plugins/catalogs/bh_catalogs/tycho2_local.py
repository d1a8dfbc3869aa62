"""Catalogue backend 'tycho2_local': Tycho-2 read straight from astrometry.net index files.

The offline default: Debian's ``astrometry-data-tycho2-*`` packages already hold
~1-2 million Tycho-2 stars inside their index files, so no download is needed. In
each file the HDU ``kdtree_range_stars`` holds 7 doubles (3 lows, 3 highs, a
scale) and ``kdtree_data_stars`` holds uint32 triplets; a star's unit vector is
``low + u32 / scale``. The tag-along HDU ``MAG_VT`` gives the VT magnitude in the
same order. The files overlap (each is a uniform subset at its own density), so
the union is de-duplicated by position.

The index files carry no proper motions: positions are the catalogue's J2000 ones,
and the quoted errors grow with the time from 2000 by a typical Tycho-2 proper
motion (25 mas/yr) so that a fit can weight them honestly.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree

from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo

from . import __version__
from .common import (CatalogSettings, CatalogUnavailable, brightest, cone_cut, epoch_year,
                     finish_columns, propagate, settings_of, unit_vectors)

NAME = "tycho2_local"
DEFAULT_DIRS = ("/usr/share/astrometry",)
CONFIG = "/etc/astrometry.cfg"
POSITION_ERR_MAS = 60.0           # Tycho-2 at its mean epoch
TYPICAL_PM_MAS_YR = 25.0          # stands in for the proper motions the files lack
DEDUP_ARCSEC = 1.0


class Settings(CatalogSettings):
    """Where the index files are (empty: Debian's folder and astrometry.cfg's add_path)."""

    index_dirs: list[str] = []
    pattern: str = "index-tycho2-*.fits"


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="catalog", version=__version__,
        description="Tycho-2 (VT) decoded offline from astrometry.net index files",
        settings_model=Settings,
        data_files=tuple(f"{d}/index-tycho2-*.fits" for d in DEFAULT_DIRS))


def index_dirs(s: Settings) -> list[str]:
    if s.index_dirs:
        return list(s.index_dirs)
    dirs = list(DEFAULT_DIRS)
    try:
        for line in Path(CONFIG).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "add_path" and parts[1] not in dirs:
                dirs.append(parts[1])
    except OSError:
        pass
    return dirs


def index_files(s: Settings) -> list[Path]:
    files = []
    for folder in index_dirs(s):
        files += sorted(Path(p) for p in glob.glob(os.path.join(folder, s.pattern)))
    return files


def _hdu_numbers(hdul) -> dict[str, int]:
    out = {}
    for i, hdu in enumerate(hdul):
        name = hdu.header.get("TTYPE1") if i else None
        if name:
            out[str(name)] = i
    return out


def read_index_stars(path: Path, axis: np.ndarray, cos_radius: float):
    """(ra, dec, vt) of the stars of one index file inside a cone (unit-vector test)."""
    with fits.open(path, memmap=True) as hdul:
        numbers = _hdu_numbers(hdul)
        missing = {"kdtree_range_stars", "kdtree_data_stars"} - set(numbers)
        if missing:
            raise CatalogUnavailable(f"tycho2_local: {path} is not an astrometry.net star "
                                     f"index (no {', '.join(sorted(missing))})")
        big = str(hdul[0].header.get("ENDIAN", "04:03:02:01")).startswith("01")
        info_r = hdul.fileinfo(numbers["kdtree_range_stars"])
        info_d = hdul.fileinfo(numbers["kdtree_data_stars"])
        n = int(hdul[numbers["kdtree_data_stars"]].header["NAXIS2"])
        width = int(hdul[numbers["kdtree_data_stars"]].header["NAXIS1"])
        if width != 12:
            raise CatalogUnavailable(f"tycho2_local: {path}: unexpected star record width "
                                     f"{width} (expected 3 x uint32)")
        mag_hdu = numbers.get("MAG_VT")
        mags = (np.asarray(hdul[mag_hdu].data["MAG_VT"], dtype=float) if mag_hdu is not None
                else np.full(n, np.nan))
        index_id = int(hdul[0].header.get("INDEXID", -1))
    order = ">" if big else "<"
    rng = np.fromfile(path, dtype=f"{order}f8", count=7, offset=info_r["datLoc"])
    data = np.memmap(path, dtype=f"{order}u4", mode="r", offset=info_d["datLoc"], shape=(n, 3))
    xyz = rng[:3] + data / rng[6]
    keep = xyz @ axis >= cos_radius * np.linalg.norm(xyz, axis=1)
    xyz = xyz[keep]
    xyz /= np.linalg.norm(xyz, axis=1)[:, None]
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0)))
    return ra, dec, mags[keep], np.full(len(ra), index_id)


def read_cone(center, radius_deg: float, s: Settings) -> Table:
    files = index_files(s)
    if not files:
        raise CatalogUnavailable(
            "tycho2_local: no Tycho-2 index files found in "
            f"{', '.join(index_dirs(s))}; install them with: apt-get install -y "
            "astrometry-data-tycho2-10-19-littleendian (and -08, -09 for fields under 1 deg)")
    c = center.icrs
    axis = unit_vectors([c.ra.deg], [c.dec.deg])[0]
    cos_r = np.cos(np.radians(min(radius_deg * 1.001, 180.0)))
    parts = [read_index_stars(f, axis, cos_r) for f in files]
    ra, dec, vt, ids = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((ids, vt))                     # brightest, densest index first
    ra, dec, vt, ids = ra[order], dec[order], vt[order], ids[order]
    keep = _dedup(ra, dec)
    table = Table({"ra": ra[keep], "dec": dec[keep], "VT": vt[keep],
                   "anet_index_id": ids[keep]})
    table["source_id"] = np.arange(1, len(table) + 1)
    table["ref_epoch"] = np.full(len(table), 2000.0)
    table["ra_err"] = np.full(len(table), POSITION_ERR_MAS)
    table["dec_err"] = np.full(len(table), POSITION_ERR_MAS)
    return cone_cut(finish_columns(table), center, radius_deg)


def _dedup(ra, dec) -> np.ndarray:
    """Indices of the rows kept: of two rows within DEDUP_ARCSEC the later one goes."""
    if len(ra) == 0:
        return np.zeros(0, dtype=int)
    chord = 2 * np.sin(np.radians(DEDUP_ARCSEC / 3600.0) / 2)
    pairs = cKDTree(unit_vectors(ra, dec)).query_pairs(chord, output_type="ndarray")
    drop = np.zeros(len(ra), dtype=bool)
    if len(pairs):
        drop[pairs.max(axis=1)] = True
    return np.flatnonzero(~drop)


@hookimpl
def bh_reference_catalog(name, center, radius_deg, epoch, settings):
    if name != NAME:
        return None
    s = settings_of(Settings, settings)
    if not (np.isfinite(radius_deg) and 0 < radius_deg <= 90):
        raise CatalogUnavailable(f"tycho2_local: invalid cone radius {radius_deg!r} deg")
    table = read_cone(center, radius_deg, s)
    if s.mag_limit is not None:
        table = table[~(np.asarray(table["VT"]) > s.mag_limit)]
    table = propagate(table, epoch)
    year = epoch_year(epoch)
    if year is not None:
        grow = np.hypot(POSITION_ERR_MAS, TYPICAL_PM_MAS_YR * abs(year - 2000.0))
        table["ra_err"][:] = grow
        table["dec_err"][:] = grow
    table = brightest(table, "VT", s.row_limit)
    table.meta.update(catalog="Tycho-2 (astrometry.net index files)", backend=NAME,
                      mag_band="VT", source="index files", radius_deg=float(radius_deg),
                      ra_center=float(center.icrs.ra.deg), dec_center=float(center.icrs.dec.deg))
    return table
