"""Cross-match measurements of many frames into sources by sky position.

Why not a catalogue match per frame: every source must be followed, not only the
catalogue's, and positions scatter from frame to frame (seeing, WCS errors). The
frame with most detections seeds the list; each further frame is matched to the
running mean positions one-to-one (nearest first), unmatched detections start new
sources; a second pass against the final mean positions fixes early choices.
Positions are projected on a tangent plane (arcsec), fine for fields of a few deg.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def tangent_plane(ra, dec, ra0: float, dec0: float):
    """Gnomonic projection (arcsec) about (ra0, dec0); all angles in degrees."""
    ra, dec = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def field_centre(ra, dec) -> tuple[float, float]:
    ra, dec = np.radians(ra), np.radians(dec)
    v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    return (float(np.degrees(np.arctan2(v[1], v[0])) % 360.0),
            float(np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1])))))


def _assign(points, centres, radius):
    """One-to-one nearest assignment of points to centres within radius (-1: none)."""
    out = np.full(len(points), -1)
    if len(centres) == 0 or len(points) == 0:
        return out
    dist, idx = cKDTree(centres).query(points, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    order = np.argsort(np.where(ok, dist, np.inf))
    taken = set()
    for k in order:
        if not ok[k]:
            break
        if idx[k] not in taken:
            taken.add(idx[k])
            out[k] = idx[k]
    return out


def crossmatch(frame_index, ra, dec, radius_arcsec: float = 2.0):
    """Source index per measurement and the sources' mean (ra, dec).

    ``frame_index``: which frame each measurement belongs to. Measurements without a
    finite position get -1. Sources are numbered by first appearance in the seed
    order (the fullest frame first).
    """
    frame_index = np.asarray(frame_index)
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    ok = np.isfinite(ra) & np.isfinite(dec)
    result = np.full(ra.size, -1)
    if not ok.any():
        return result, np.zeros(0), np.zeros(0)
    ra0, dec0 = field_centre(ra[ok], dec[ok])
    x, y = tangent_plane(ra, dec, ra0, dec0)
    pts = np.column_stack([x, y])
    frames, counts = np.unique(frame_index[ok], return_counts=True)
    sums = np.zeros((0, 2))
    nums = np.zeros(0)
    for f in frames[np.argsort(-counts, kind="stable")]:
        sel = np.flatnonzero(ok & (frame_index == f))
        centres = sums / nums[:, None] if nums.size else sums
        got = _assign(pts[sel], centres, radius_arcsec)
        new = got < 0
        start = nums.size
        got[new] = start + np.arange(new.sum())
        sums = np.vstack([sums, np.zeros((new.sum(), 2))])
        nums = np.concatenate([nums, np.zeros(new.sum())])
        np.add.at(sums, got, pts[sel])
        np.add.at(nums, got, 1)
        result[sel] = got
    centres = sums / nums[:, None]
    final = np.full(ra.size, -1)           # second pass against the final means
    extra = nums.size
    for f in frames:
        sel = np.flatnonzero(ok & (frame_index == f))
        got = _assign(pts[sel], centres, radius_arcsec)
        lost = got < 0                     # too far from every mean: a source of its own
        got[lost] = extra + np.arange(lost.sum())
        extra += int(lost.sum())
        final[sel] = got
    used = np.unique(final[final >= 0])
    remap = np.full(extra, -1)
    remap[used] = np.arange(used.size)
    final = np.where(final >= 0, remap[np.maximum(final, 0)], -1)
    mean_ra = np.zeros(used.size)
    mean_dec = np.zeros(used.size)
    for name, values, out in (("ra", ra, mean_ra), ("dec", dec, mean_dec)):
        vals = values
        if name == "ra":                   # average RA around the centre (wrap-safe)
            vals = ((values - ra0 + 180.0) % 360.0) - 180.0
        s = np.bincount(final[final >= 0], weights=vals[final >= 0], minlength=used.size)
        n = np.bincount(final[final >= 0], minlength=used.size)
        out[:] = s / np.maximum(n, 1)
    mean_ra = (mean_ra + ra0) % 360.0
    return final, mean_ra, mean_dec
