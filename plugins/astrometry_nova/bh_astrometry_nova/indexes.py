"""Which astrometry.net index files to use: the installed Tycho-2 ones for wide fields,
and for small fields indexes built on the fly from the reference catalogue cone.

Quads must be smaller than the field: Debian's Tycho-2 indexes start at 30'
(``-08``; ``-07`` would reach 22'), so fields under ~25' get their own indexes,
built from the catalogue layer's cone with quad sizes of 15-60 % of the field
(preset P covers 2 * sqrt(2)**P arcmin). Built indexes are cached under
``$BHCORE_HOME/cache/anet_index/<key>`` keyed by the stars and presets, so later
frames of the same field reuse them.
"""
from __future__ import annotations

import glob
import hashlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
from astropy.table import Table

from bhcore.errors import AstrometryNotSolved, ExternalToolError
from bhcore.external import private_workdir

from .local import build_index

TYCHO_DIRS = ("/usr/share/astrometry",)
TYCHO_SMALLEST_QUAD_ARCMIN = {7: 22.0, 8: 30.0, 9: 44.0, 10: 60.0}


def cache_root() -> Path:
    from bhcore.pipeline import home
    return home() / "cache" / "anet_index"


def tycho_indexes(dirs=()) -> list[Path]:
    files = []
    for folder in (tuple(dirs) or TYCHO_DIRS):
        files += [Path(p) for p in sorted(glob.glob(os.path.join(folder, "index-tycho2-*.fits")))]
    return files


def tycho_usable(files, field_arcmin: float) -> list[Path]:
    """The Tycho-2 index files whose smallest quads still fit in the field."""
    out = []
    for path in files:
        try:
            scale = int(path.name.split("-")[2][:2])
        except (IndexError, ValueError):
            continue
        smallest = TYCHO_SMALLEST_QUAD_ARCMIN.get(scale, 2.0 * math.sqrt(2) ** scale)
        if smallest <= 0.9 * field_arcmin:
            out.append(path)
    return out


def presets_for(field_arcmin: float, low: float = 0.15, high: float = 0.6) -> list[int]:
    """Presets whose quad-size band [2 sqrt2^P, 2 sqrt2^(P+1)] meets [low, high] x field."""
    out = []
    for preset in range(-5, 20):
        q_lo, q_hi = 2.0 * math.sqrt(2) ** preset, 2.0 * math.sqrt(2) ** (preset + 1)
        if q_hi > low * field_arcmin and q_lo < high * field_arcmin:
            out.append(preset)
    return out


def thin_to_detections(ref: Table, mags, center, n_sources: int, shape, scale_arcsec: float,
                       factor: float = 2.0) -> np.ndarray:
    """Indices of the brightest reference stars, at most ``factor`` x as dense as the
    detections where the catalogue has stars.

    solve-field's verification counts index stars without a detected counterpart
    against a solution: a catalogue much deeper than the frame (a Gaia or RefCat
    cone on a shallow or binned frame) never reaches the odds to solve.
    """
    ny, nx = shape
    field_radius = 0.5 * math.hypot(nx, ny) * scale_arcsec / 3600.0
    sep = center.separation(_coords(ref)).deg
    inside = sep <= field_radius
    if not inside.any() or n_sources <= 0:
        return np.arange(len(ref))
    radius = min(field_radius, float(np.max(sep[inside])))
    det_density = n_sources / (nx * ny * (scale_arcsec / 3600.0) ** 2)
    cat_density = inside.sum() / (math.pi * max(radius, 1e-6) ** 2)
    fraction = min(1.0, factor * det_density / cat_density)
    n_keep = max(int(round(fraction * len(ref))), min(len(ref), 20))
    order = np.argsort(np.where(np.isfinite(mags), mags, np.inf), kind="stable")
    return np.sort(order[:n_keep])


def _coords(ref: Table):
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    return SkyCoord(np.asarray(ref["ra"], float) * u.deg, np.asarray(ref["dec"], float) * u.deg)


def built_indexes(ref: Table, mags, field_arcmin: float, timeout: float = 300.0,
                  max_stars: int = 5000) -> list[Path]:
    """Index files over the catalogue cone ``ref`` (built once, then from the cache)."""
    mags = np.asarray(mags, float)
    order = np.argsort(np.where(np.isfinite(mags), mags, np.inf), kind="stable")[:max_stars]
    ra = np.round(np.asarray(ref["ra"], float)[order], 7)
    dec = np.round(np.asarray(ref["dec"], float)[order], 7)
    mag = np.where(np.isfinite(mags[order]), mags[order], 99.0)
    presets = presets_for(field_arcmin)
    digest = hashlib.sha1(ra.tobytes() + dec.tobytes() + np.round(mag, 3).tobytes()
                          + repr(presets).encode()).hexdigest()[:16]
    folder = cache_root() / digest
    wanted = {p: folder / f"index-bh-{p:+03d}.fits" for p in presets}
    empty = {p: path.with_suffix(".none") for p, path in wanted.items()}   # no quads possible
    if all(wanted[p].exists() or empty[p].exists() for p in presets):
        return [wanted[p] for p in presets if wanted[p].exists()]
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    with private_workdir(prefix="bh-anet-index-") as work:
        catalog = work / "cone.fits"
        Table({"RA": ra, "DEC": dec, "MAG": mag}).write(catalog, overwrite=True)
        base_id = int(digest[:6], 16) % 9000 * 100 + 100000     # unique per cone
        for i, preset in enumerate(presets):
            try:
                built = build_index(catalog, work / wanted[preset].name, preset, base_id + i,
                                    work, timeout)
            except ExternalToolError as exc:     # e.g. quads larger than the cone
                failures.append(f"P{preset}: {exc}")
                empty[preset].write_text(str(exc) + "\n")
                continue
            tmp = wanted[preset].with_name(f".{wanted[preset].name}.part")
            shutil.copyfile(built, tmp)             # atomic: copy, then rename
            os.replace(tmp, wanted[preset])
    out = [wanted[p] for p in presets if wanted[p].exists()]
    if not out:
        first = failures[0].split(": ", 1)[-1] if failures else "unknown reason"
        raise AstrometryNotSolved(f"no index could be built from the {len(ra)} catalogue "
                                  f"stars of the cone for presets {presets} ({first})")
    return out
