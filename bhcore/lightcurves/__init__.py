"""Light curves of every source in a run: cross-match, ensemble photometry, statistics.

Why every source and not only the target: comparison stars have to be chosen from
all stars, variables found among them must be excluded, and users look for
variables in the whole field. ``LightCurves`` holds frame-by-source arrays
(NaN where a source was not measured), the frames table (times, airmass, FWHM,
sky, zero point ...) and the sources table (mean position, variability statistics,
comparison and variable flags); ``lightcurve(j)`` and ``astrometry(j)`` give one
source's series as Tables, ready for the exports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from astropy.table import Table

from ..errors import BhError
from .crossmatch import crossmatch, tangent_plane
from .ensemble import (MAG_PER_FLUX, choose_comparisons, ensemble, flag_variables, quiet,
                       variability)
from .noise import gain_from_scatter, rebuilt_errors

CUBE_COLUMNS = ("flux", "flux_err", "mag", "mag_err", "mag_inst", "mag_inst_err", "ra",
                "dec", "pos_err", "flags", "x", "y", "fwhm", "id")
FRAME_COLUMNS = {"stem": "frame", "mjd": "mjd", "bjd": "bjd", "hjd": "hjd",
                 "airmass": "airmass", "fwhm": "fwhm_frame", "sky": "sky",
                 "filter": "filter", "zero_point": "zero_point", "lim_mag": "lim_mag",
                 "exptime": "exptime", "moon_dist": "moon_dist", "photflag": "photflag"}


class NoSuchSource(BhError):
    """No source of the run lies within the search radius."""


@dataclass
class LightCurves:
    frames: Table
    sources: Table
    cube: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    def find(self, ra: float, dec: float, radius_arcsec: float | None = None) -> int:
        """Index of the source nearest (ra, dec) within the radius (default: match radius)."""
        radius = radius_arcsec or self.meta.get("match_radius_arcsec", 2.0)
        if self.n_sources == 0:
            raise NoSuchSource("the run has no sources")
        x, y = tangent_plane(np.asarray(self.sources["ra"]), np.asarray(self.sources["dec"]),
                             ra, dec)
        d = np.hypot(x, y)
        j = int(np.argmin(d))
        if d[j] > radius:
            raise NoSuchSource(f"no source within {radius:.1f}\" of RA {ra:.6f} Dec "
                               f"{dec:+.6f} (nearest {d[j]:.1f}\")")
        return j

    def most_variable(self, n: int = 5) -> list[int]:
        """Source indices by decreasing Stetson J (flagged variables first)."""
        j = np.nan_to_num(np.asarray(self.sources["stetson_j"], float), nan=-np.inf)
        flagged = np.asarray(self.sources["is_variable"], bool)
        order = np.lexsort((-j, ~flagged))
        return [int(k) for k in order[:n] if np.isfinite(j[k])]

    @quiet
    def lightcurve(self, j: int, upper_limits: bool = True) -> Table:
        """One source's series: times, mags, fluxes, relative fluxes and conditions.

        Frames where the source was not measured but the frame was calibrated give
        an upper limit (the frame's 5-sigma limiting magnitude) when asked.
        """
        out = Table()
        for src, name in FRAME_COLUMNS.items():
            if src in self.frames.colnames:
                out[name] = self.frames[src]
        if "bjd" in out.colnames:
            out.rename_column("bjd", "bjd_tdb")
        for name in ("mag", "mag_err", "mag_inst", "mag_inst_err", "flux", "flux_err", "ra",
                     "dec", "x", "y", "flags", "fwhm", "pos_err"):
            if name in self.cube:
                out[name] = self.cube[name][:, j]
        out["rel_flux"] = self.cube["rel_flux"][:, j]
        out["rel_flux_err"] = self.cube["rel_flux_err"][:, j]
        if "flags" in out.colnames:
            out["flags"] = np.nan_to_num(out["flags"], nan=-1).astype(int)
        if "fwhm" in out.colnames and "fwhm_frame" in out.colnames:
            out["fwhm"] = np.where(np.isfinite(out["fwhm"]), out["fwhm"], out["fwhm_frame"])
        elif "fwhm_frame" in out.colnames:
            out["fwhm"] = out["fwhm_frame"]
        missing = ~np.isfinite(np.asarray(out["flux"], float))
        out["upper_limit"] = np.zeros(len(out), bool)
        if upper_limits and "lim_mag" in out.colnames:
            lim = missing & np.isfinite(np.asarray(out["lim_mag"], float))
            out["mag"] = np.where(lim, out["lim_mag"], out["mag"])
            out["mag_err"] = np.where(lim, -1.0, out["mag_err"])
            out["upper_limit"] = lim
            keep = ~missing | lim
        else:
            keep = ~missing
        out = out[keep]
        src = self.sources[j]
        out.meta.update(source_id=int(src["source_id"]), ra=float(src["ra"]),
                        dec=float(src["dec"]), time_scale="mjd: UTC mid-exposure; "
                        "bjd_tdb: JD (TDB) at the barycentre, for the frame's target")
        if "gain_measured" in self.meta:
            out.meta["gain_measured"] = dict(self.meta["gain_measured"], note=(
                "the camera's gain is unknown: flux errors rebuilt with the gain and "
                "noise floor measured from the comparison stars' scatter"))
        return out

    @quiet
    def astrometry(self, j: int) -> Table:
        """RA/Dec per epoch with errors and offsets from the source's mean position."""
        ra, dec = self.cube["ra"][:, j], self.cube["dec"][:, j]
        ok = np.isfinite(ra) & np.isfinite(dec)
        mean_ra, mean_dec = float(self.sources["ra"][j]), float(self.sources["dec"][j])
        dx, dy = tangent_plane(ra, dec, mean_ra, mean_dec)
        err = self.cube.get("pos_err", np.full_like(ra, np.nan))[:, j]
        out = Table({"frame": self.frames["stem"], "mjd": self.frames["mjd"],
                     "ra": ra, "dec": dec, "ra_err_arcsec": err, "dec_err_arcsec": err,
                     "dra_arcsec": dx, "ddec_arcsec": dy})[ok]
        out.meta.update(source_id=int(self.sources["source_id"][j]), ra=mean_ra, dec=mean_dec,
                        note="dra includes cos(dec); offsets from the mean position")
        return out


def build(frames: Table, meas: Table, *, radius_arcsec: float = 2.0,
          exclude: Iterable[tuple[float, float]] = (), exclude_radius_arcsec: float | None = None,
          min_coverage: float = 0.9, min_snr: float = 10.0, max_comp: int = 50,
          k: float = 5.0, z: float = 4.0) -> LightCurves:
    """Light curves from a frames table (one row each) and a long measurements table.

    Flagged measurements (``flags`` != 0: saturated, near an edge, blended ...)
    stay in the light curves but not in the statistics or the comparison choice.

    ``meas['frame']`` is the row index in ``frames``; ``frames`` needs ``mjd`` (and
    ``stem``); the other frame columns are optional. ``exclude``: (ra, dec) of
    targets kept out of the comparison ensemble.
    """
    order = np.argsort(np.asarray(frames["mjd"], float), kind="stable")
    frames = frames[order]
    new_index = np.empty(len(order), int)
    new_index[order] = np.arange(len(order))
    fidx = new_index[np.asarray(meas["frame"], int)]
    if "stem" not in frames.colnames:
        frames["stem"] = [str(i + 1) for i in range(len(frames))]
    src, ra, dec = crossmatch(fidx, meas["ra"], meas["dec"], radius_arcsec)
    n_f, n_s = len(frames), ra.size
    cube = {}
    hit = src >= 0
    for name in CUBE_COLUMNS:
        if name in meas.colnames:
            arr = np.full((n_f, n_s), np.nan)
            arr[fidx[hit], src[hit]] = np.asarray(meas[name], float)[hit]
            cube[name] = arr
    excluded = np.zeros(n_s, bool)
    for tra, tdec in exclude:
        x, y = tangent_plane(ra, dec, tra, tdec)
        excluded |= np.hypot(x, y) <= (exclude_radius_arcsec or radius_arcsec)
    flux, ferr = cube["flux"], cube["flux_err"]
    flags = cube.get("flags")
    options = dict(min_coverage=min_coverage, min_snr=min_snr, max_comp=max_comp)
    comps = choose_comparisons(flux, ferr, flags, excluded, **options)
    rel, rel_err, info = ensemble(flux, ferr, comps)
    noise = _measure_unknown_gain(frames, cube, rel, info["comparisons"])
    if noise is not None:                          # errors rebuilt: the ensemble again
        ferr = cube["flux_err"]
        rel, rel_err, info = ensemble(flux, ferr, comps)
    clean = np.ones(flux.shape, bool) if flags is None else (np.nan_to_num(flags) == 0)
    stats = variability(np.where(clean, rel, np.nan), rel_err, frames["mjd"])
    well = np.zeros(n_s, bool)
    well[choose_comparisons(flux, ferr, flags, None, min_coverage=min_coverage,
                            min_snr=min_snr, max_comp=n_s)] = True
    variable, thresholds = flag_variables(stats, k=k, z=z, candidates=well)
    if variable[comps].any():                     # again, without the variables
        comps = choose_comparisons(flux, ferr, flags, excluded | variable, **options)
        rel, rel_err, info = ensemble(flux, ferr, comps)
        stats = variability(np.where(clean, rel, np.nan), rel_err, frames["mjd"])
        variable, thresholds = flag_variables(stats, k=k, z=z, candidates=well)
    cube["rel_flux"], cube["rel_flux_err"] = rel, rel_err
    sources = _sources_table(ra, dec, cube, stats, variable, excluded, info)
    meta = {"match_radius_arcsec": radius_arcsec, "n_comparisons": int(info["comparisons"].size),
            "thresholds": thresholds, "ensemble": info["ensemble"]}
    if noise is not None:
        meta["gain_measured"] = {k: v for k, v in noise.items()
                                 if k not in ("rows", "assumed_inv")}
    return LightCurves(frames=frames, sources=sources, cube=cube, meta=meta)


@quiet
def _measure_unknown_gain(frames: Table, cube: dict, rel, comps) -> dict | None:
    """When frames carry an assumed gain, measure it (``noise``) and rebuild the errors
    of flux and magnitudes in ``cube``; returns the measurement, or None."""
    if not {"gain_used", "gain_known"} <= set(frames.colnames):
        return None
    known = np.asarray(frames["gain_known"], float)
    unknown = np.isfinite(known) & (known == 0)
    if not unknown.any():
        return None
    flux, old = cube["flux"], cube["flux_err"]
    fit = gain_from_scatter(flux, old, rel, comps, np.asarray(frames["gain_used"], float),
                            unknown)
    if fit is None or not np.isfinite(fit["gain"]):
        return None
    new = rebuilt_errors(flux, old, fit)
    cube["flux_err"] = new
    if "mag_inst_err" in cube:
        inst_new = MAG_PER_FLUX * new / flux
        if "mag_err" in cube:
            extra = np.clip(cube["mag_err"] ** 2 - cube["mag_inst_err"] ** 2, 0.0, None)
            cube["mag_err"] = np.sqrt(extra + inst_new ** 2)
        cube["mag_inst_err"] = inst_new
    return fit


@quiet
def _sources_table(ra, dec, cube, stats, variable, excluded, info) -> Table:
    n_s = ra.size
    table = Table({"source_id": np.arange(1, n_s + 1), "ra": ra, "dec": dec})
    table["n_obs"] = np.isfinite(cube["flux"]).sum(axis=0)
    mag = cube.get("mag")
    table["mean_mag"] = (np.nanmedian(mag, axis=0) if mag is not None
                         else np.full(n_s, np.nan))
    if mag is not None and "mag_inst" in cube:
        inst = np.nanmedian(cube["mag_inst"], axis=0)
        table["mean_mag"] = np.where(np.isfinite(table["mean_mag"]), table["mean_mag"], np.nan)
        table["mean_mag_inst"] = inst
    for name in ("rms", "expected_rms", "chi2_red", "stetson_j", "j_noise", "amplitude"):
        table[name] = stats[name]
    table["is_variable"] = variable
    table["excluded"] = excluded
    comp = np.zeros(n_s, bool)
    weight = np.full(n_s, np.nan)
    comp[info["comparisons"]] = True
    weight[info["comparisons"]] = info["weights"] / np.sum(info["weights"]) \
        if len(info["weights"]) else np.nan
    table["is_comparison"] = comp
    table["comp_weight"] = weight
    return table


def from_table(table: Table, frame_key: str, *, time_key: str = "mjd",
               frame_columns: Iterable[str] = (), **options) -> LightCurves:
    """Light curves from one long table of measurements (e.g. a stored photometry run).

    ``frame_key`` groups rows into frames; the table needs ``ra, dec, flux, flux_err``;
    ``time_key`` (MJD) and ``frame_columns`` are taken per frame from its first row.
    """
    keys = np.asarray(table[frame_key])
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    frames = Table({"stem": [str(u) for u in uniq],
                    "mjd": np.asarray(table[time_key], float)[first]})
    for name in frame_columns:
        frames[name] = np.asarray(table[name])[first]
    meas = table.copy(copy_data=False)
    meas["frame"] = inverse
    return build(frames, meas, **options)


def from_results(db, *, save: bool = False, **options) -> LightCurves:
    """Light curves of every calibrated or measured frame in a results database.

    The cross-match radius defaults to 2" or one pixel, whichever is larger. With
    ``save`` the sources and each measurement's source are written back.
    """
    from ..results.db import ResultsDB, frame_rows_table
    db = db if isinstance(db, ResultsDB) else ResultsDB(db)
    meas = db.measurements()
    if len(meas) == 0:
        raise NoSuchSource(f"the results database {db.url} holds no measurements")
    rows = [f for f in db.frames() if f.id in set(np.unique(meas["frame_id"]).tolist())]
    rows = [f for f in rows if f.mjd is not None]
    frames = frame_rows_table(rows)
    _gain_columns(frames, rows)
    index = {int(fid): k for k, fid in enumerate(frames["id"])}
    keep = np.array([int(f) in index for f in meas["frame_id"]])
    meas = meas[keep]
    meas["frame"] = [index[int(f)] for f in meas["frame_id"]]
    scale = np.asarray(frames["pixel_scale"], float)
    if "radius_arcsec" not in options and np.isfinite(scale).any():
        options["radius_arcsec"] = max(2.0, float(np.nanmedian(scale)))   # >= 1 px
    lcs = build(frames, meas, **options)
    if save:
        ids = lcs.cube["id"] if "id" in lcs.cube else None
        if ids is not None:
            mids = np.asarray(ids)
            f_idx, s_idx = np.nonzero(np.isfinite(mids))
            lcs.sources["n_obs"] = lcs.sources["n_obs"]
            db.set_sources(_db_sources(lcs.sources), mids[f_idx, s_idx].astype(int), s_idx)
    lcs.meta["results_url"] = db.url
    return lcs


def _gain_columns(frames: Table, rows) -> None:
    """``gain_used`` (e/ADU the engine assumed; 0: no photon term) and ``gain_known``
    (1/0) of each frame, from its stored quality figures (NaN when not recorded)."""
    import json
    used, known = [], []
    for row in rows:
        q = json.loads(row.quality_json or "{}")
        used.append(np.nan if q.get("gain_used") is None else float(q["gain_used"]))
        known.append(np.nan if q.get("gain_known") is None else float(bool(q["gain_known"])))
    frames["gain_used"], frames["gain_known"] = np.array(used, float), np.array(known, float)


def _db_sources(sources: Table) -> Table:
    table = sources.copy(copy_data=False)
    table["mean_mag"] = np.where(np.isfinite(table["mean_mag"]), table["mean_mag"],
                                 table["mean_mag_inst"] if "mean_mag_inst" in table.colnames
                                 else np.nan)
    return table


__all__ = ["LightCurves", "NoSuchSource", "build", "from_results", "from_table",
           "choose_comparisons", "ensemble", "variability", "flag_variables", "crossmatch"]
