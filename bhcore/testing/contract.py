"""The photometry contract: checks every ``bh_measure_photometry`` backend must pass.

Usable by third-party plugin authors::

    from bhcore.testing.contract import check_photometry_backend
    report = check_photometry_backend("my_backend")     # raises ContractFailure

or one check at a time (for ``pytest.mark.parametrize``)::

    @pytest.mark.parametrize("check", CONTRACT_CHECKS)
    def test_contract(check):
        run_check("my_backend", check)

The checks run the backend through ``bhcore.pipeline.run_photometry`` on synthetic
frames made by ``bhcore.testing.synthetic`` (truth known, 512x512 px):

``columns``     leading columns ``id, x, y, flux, flux_err, flags`` in that order, unique
                ids, integer flags, units (pixels, ADU/counts, mag) when units are set,
                ``mag``/``mag_err`` together and consistent with ``flux`` when present;
``positions``   bright isolated stars found within 0.05 px of the truth (0-based);
``linearity``   measured vs true flux: slope 1 in log-log within errors (any scale);
``empty``       a sky-only frame gives an empty table (not None, no exception);
``saturated``   the saturated star is flagged SATURATED, unsaturated stars are not;
``masked``      NaN and masked pixels on star cores: no crash, those stars flagged
                MASKED_PIXELS, no NaN positions;
``unmodified``  the input frame's data, mask and header are unchanged afterwards.

It also offers ``scatter_vs_floor`` to compare an engine's magnitude scatter with its
noise floor (the aperture-photometry noise or the Cramér-Rao bound of the truth).
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy import units as u
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from scipy.spatial import cKDTree

from ..tables import LEADING_COLUMNS, SourceFlag, SourceTable

SHAPE = (512, 512)
FWHM = 3.0
SKY = 600.0
GAIN = 1.6
READ_NOISE_E = 9.0
SATURATION = 60000.0
SEED = 20240815
POSITION_TOLERANCE_PX = 0.05
MATCH_RADIUS_PX = 1.0


class ContractFailure(AssertionError):
    """A backend broke the photometry contract; the message says how."""


# --- frames --------------------------------------------------------------------------
@functools.cache
def _grid_catalogue() -> Table:
    """36 isolated stars on a 6x6 grid (fluxes 2e3..4e5 ADU) and one saturated star."""
    rng = np.random.default_rng(SEED)
    centres = 76.0 + 70.0 * np.arange(6)
    gx, gy = np.meshgrid(centres, centres)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    flux = np.geomspace(2e3, 4e5, x.size)
    rng.shuffle(flux)
    x = np.append(x, 41.3)                  # the saturated star, in the free margin
    y = np.append(y, 470.6)
    flux = np.append(flux, 3.0e6)
    return Table({"id": np.arange(1, x.size + 1), "x": x, "y": y, "flux": flux})


@functools.cache
def star_field(kind: str = "clean"):
    """The contract frames: 'clean', 'defects' (NaN and masked star cores), 'empty'."""
    from .synthetic import make_star_field

    common = {"fwhm": FWHM, "sky": SKY, "gain": GAIN, "read_noise": READ_NOISE_E,
              "saturation": SATURATION, "seed": SEED, "blends": False}
    if kind == "empty":
        return make_star_field(SHAPE, 0, **common)
    field = make_star_field(SHAPE, stars=_grid_catalogue(), **common)
    if kind == "clean":
        return field
    if kind != "defects":
        raise ValueError(f"unknown contract frame {kind!r}")
    nan_star, masked_star = defect_stars(field.truth)
    image = field.image.copy()
    mask = np.zeros(SHAPE, dtype=bool)
    x_nan, y_nan = (int(np.rint(truth_value)) for truth_value in
                    (field.truth["x"][nan_star], field.truth["y"][nan_star]))
    image[y_nan - 1:y_nan + 2, x_nan - 1:x_nan + 2] = np.nan
    x_bad, y_bad = (int(np.rint(truth_value)) for truth_value in
                    (field.truth["x"][masked_star], field.truth["y"][masked_star]))
    mask[y_bad - 1:y_bad + 1, x_bad - 1:x_bad + 1] = True
    image[mask] = 5.0e4                      # a hot spot: only harmless if the mask is used
    field.image = image
    field.mask = mask
    return field


def defect_stars(truth: Table) -> tuple[int, int]:
    """Rows of the truth whose cores get NaN pixels and masked pixels."""
    order = np.argsort(np.asarray(truth["flux"][:36]))
    return int(order[24]), int(order[27])     # bright, well-measured grid stars


def camera_overrides() -> dict[str, Any]:
    return {"gain": GAIN, "read_noise_adu": READ_NOISE_E / GAIN, "saturation": SATURATION}


# --- running -------------------------------------------------------------------------
def _key(overrides: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(overrides or {}), sort_keys=True, default=str)


@functools.lru_cache(maxsize=32)
def _cached_run(backend: str, kind: str, overrides_key: str):
    from ..pipeline import run_photometry

    frame = star_field(kind).to_frame()
    before = (frame.data.copy(), None if frame.mask is None else frame.mask.copy(),
              frame.header.tostring())
    overrides = {**camera_overrides(), **json.loads(overrides_key)}
    table = run_photometry(frame, backend, overrides=overrides)
    after = (frame.data, frame.mask, frame.header.tostring())
    unchanged = (np.array_equal(before[0], after[0], equal_nan=True)
                 and ((before[1] is None and after[1] is None)
                      or (before[1] is not None and after[1] is not None
                          and np.array_equal(before[1], after[1])))
                 and before[2] == after[2])
    return table, unchanged


def run_backend(backend: str, kind: str = "clean",
                overrides: Mapping[str, Any] | None = None) -> Table:
    """Run ``backend`` on a contract frame (results cached per process; a copy)."""
    table, _ = _cached_run(backend, kind, _key(overrides))
    return table.copy(copy_data=True)


def match(table: Table, truth: Table, radius: float = MATCH_RADIUS_PX):
    """(row index into table or -1, distance) for every truth star (nearest source)."""
    index = np.full(len(truth), -1)
    dist = np.full(len(truth), np.inf)
    if len(table) == 0 or len(truth) == 0:
        return index, dist
    xy = np.column_stack([np.asarray(table["x"], float), np.asarray(table["y"], float)])
    ok = np.all(np.isfinite(xy), axis=1)
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return index, dist
    d, k = cKDTree(xy[ok]).query(np.column_stack([truth["x"], truth["y"]]))
    hit = d <= radius
    index[hit] = rows[k[hit]]
    dist[hit] = d[hit]
    return index, dist


def _fail(check: str, message: str):
    raise ContractFailure(f"[{check}] {message}")


# --- checks --------------------------------------------------------------------------
FLUX_UNITS = (u.adu, u.ct, u.electron)


def check_columns(backend: str, overrides=None) -> dict[str, Any]:
    table = run_backend(backend, "clean", overrides)
    if not isinstance(table, SourceTable):
        _fail("columns", f"returned {type(table).__name__}, not a SourceTable")
    names = tuple(table.colnames[:len(LEADING_COLUMNS)])
    if names != LEADING_COLUMNS:
        _fail("columns", f"leading columns are {names}, expected {LEADING_COLUMNS}")
    if len(table) == 0:
        _fail("columns", "no source found on a frame with 37 stars")
    if len(np.unique(table["id"])) != len(table):
        _fail("columns", "ids are not unique")
    if not np.issubdtype(table["flags"].dtype, np.integer):
        _fail("columns", f"flags have dtype {table['flags'].dtype}, not an integer")
    for name in ("x", "y", "flux", "flux_err"):
        if not np.issubdtype(table[name].dtype, np.floating):
            _fail("columns", f"{name} has dtype {table[name].dtype}, not a float")
    for name in ("x", "y"):
        unit = table[name].unit
        if unit is not None and unit != u.pix:
            _fail("columns", f"{name} has unit {unit}, expected pix")
    for name in ("flux", "flux_err"):
        unit = table[name].unit
        if unit is not None and unit not in FLUX_UNITS:
            _fail("columns", f"{name} has unit {unit}, expected ADU or counts")
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        _fail("columns", "some positions are not finite")
    if np.any((x < -0.5) | (y < -0.5) | (x > SHAPE[1] - 0.5) | (y > SHAPE[0] - 0.5)):
        _fail("columns", "positions outside the image (0-based pixel centres expected)")
    flux, err = np.asarray(table["flux"], float), np.asarray(table["flux_err"], float)
    good = np.isfinite(flux)
    if np.any(~(err[good] > 0)):
        _fail("columns", "flux_err must be positive where flux is finite")
    out: dict[str, Any] = {"n_rows": len(table)}
    if ("mag" in table.colnames) != ("mag_err" in table.colnames):
        _fail("columns", "mag and mag_err must come together")
    if "mag" in table.colnames:
        for name in ("mag", "mag_err"):
            unit = table[name].unit
            if unit is not None and unit != u.mag:
                _fail("columns", f"{name} has unit {unit}, expected mag")
        mag = np.asarray(table["mag"], float)
        both = good & (flux > 0) & np.isfinite(mag)
        if both.sum() >= 3:
            zp = mag[both] + 2.5 * np.log10(flux[both])
            if np.ptp(zp) > 0.01:
                _fail("columns", f"mag and flux disagree (zero point spread {np.ptp(zp):.4f})")
            out["zeropoint"] = float(np.median(zp))
    return out


def check_positions(backend: str, overrides=None) -> dict[str, Any]:
    field_ = star_field("clean")
    truth = field_.truth
    table = run_backend(backend, "clean", overrides)
    crlb = np.maximum(np.asarray(truth["crlb_x"]), np.asarray(truth["crlb_y"]))
    bright = (~np.asarray(truth["saturated"])) & (4.0 * crlb < POSITION_TOLERANCE_PX)
    index, dist = match(table, truth)
    if bright.sum() < 5:
        _fail("positions", "the contract frame has too few bright stars (generator changed?)")
    missing = bright & (index < 0)
    if missing.any():
        _fail("positions", f"{missing.sum()} of {bright.sum()} bright isolated stars not "
                           f"found within {MATCH_RADIUS_PX} px")
    worst = float(np.max(dist[bright]))
    if worst > POSITION_TOLERANCE_PX:
        _fail("positions", f"bright star offset {worst:.3f} px > {POSITION_TOLERANCE_PX} px "
                           "(0-based pixel centres expected)")
    dx = np.asarray(table["x"])[index[bright]] - np.asarray(truth["x"])[bright]
    dy = np.asarray(table["y"])[index[bright]] - np.asarray(truth["y"])[bright]
    return {"n_bright": int(bright.sum()), "max_offset_px": worst,
            "median_dx": float(np.median(dx)), "median_dy": float(np.median(dy))}


def check_linearity(backend: str, overrides=None) -> dict[str, Any]:
    field_ = star_field("clean")
    truth = field_.truth
    table = run_backend(backend, "clean", overrides)
    index, _ = match(table, truth)
    ok = (index >= 0) & (~np.asarray(truth["saturated"])) & (np.asarray(truth["snr"]) >= 20)
    rows = index[ok]
    flux = np.asarray(table["flux"], float)[rows]
    err = np.asarray(table["flux_err"], float)[rows]
    flags = np.asarray(table["flags"])[rows]
    good = np.isfinite(flux) & (flux > 0) & np.isfinite(err) & (err > 0) & (flags == 0)
    if good.sum() < 10:
        _fail("linearity", f"only {good.sum()} unflagged stars with SNR >= 20 measured")
    true = np.asarray(truth["flux"], float)[ok][good]
    meas, sig = flux[good], err[good] / (flux[good] * math.log(10))
    xv, yv = np.log10(true), np.log10(meas)
    w = 1.0 / sig ** 2
    xm = np.sum(w * xv) / np.sum(w)
    slope = np.sum(w * (xv - xm) * (yv - np.sum(w * yv) / np.sum(w))) / np.sum(w * (xv - xm) ** 2)
    intercept = np.sum(w * (yv - slope * xv)) / np.sum(w)
    resid = yv - intercept - slope * xv
    chi2 = float(np.sum(w * resid ** 2) / max(good.sum() - 2, 1))
    slope_err = math.sqrt(max(chi2, 1.0) / np.sum(w * (xv - xm) ** 2))
    scale = float(np.median(meas / true))
    if abs(slope - 1.0) > max(3.0 * slope_err, 0.005):
        _fail("linearity", f"log-log slope {slope:.4f} +- {slope_err:.4f} is not 1")
    if not 0.2 < scale < 5.0:
        _fail("linearity", f"flux scale {scale:.3f} is implausible (ADU expected)")
    return {"slope": float(slope), "slope_err": slope_err, "scale": scale,
            "n_stars": int(good.sum()), "reduced_chi2": chi2,
            "dynamic_range": float(true.max() / true.min())}


def check_empty(backend: str, overrides=None) -> dict[str, Any]:
    table = run_backend(backend, "empty", overrides)
    if table is None:
        _fail("empty", "returned None for a sky-only frame")
    if not isinstance(table, Table):
        _fail("empty", f"returned {type(table).__name__}, not a table")
    if len(table) != 0:
        _fail("empty", f"found {len(table)} sources on a sky-only frame")
    names = tuple(table.colnames[:len(LEADING_COLUMNS)])
    if names != LEADING_COLUMNS:
        _fail("empty", f"the empty table's leading columns are {names}")
    return {"n_rows": 0}


def check_saturated(backend: str, overrides=None) -> dict[str, Any]:
    truth = star_field("clean").truth
    table = run_backend(backend, "clean", overrides)
    saturated = np.asarray(truth["saturated"])
    if not saturated.any():
        _fail("saturated", "the contract frame has no saturated star (generator changed?)")
    index, _ = match(table, truth, radius=2.0)
    flags = np.asarray(table["flags"]) if len(table) else np.zeros(0, int)
    found = saturated & (index >= 0)
    if not found.any():
        _fail("saturated", "the saturated star was not reported at all")
    unflagged = found & ((flags[np.maximum(index, 0)] & SourceFlag.SATURATED) == 0)
    if unflagged.any():
        _fail("saturated", "a saturated star is not flagged SATURATED")
    clean = (~saturated) & (index >= 0)
    false = clean & ((flags[np.maximum(index, 0)] & SourceFlag.SATURATED) != 0)
    if false.any():
        _fail("saturated", f"{false.sum()} unsaturated stars are flagged SATURATED")
    return {"n_saturated_found": int(found.sum())}


def check_masked(backend: str, overrides=None) -> dict[str, Any]:
    field_ = star_field("defects")
    truth = field_.truth
    table = run_backend(backend, "defects", overrides)
    if len(table) and not (np.all(np.isfinite(np.asarray(table["x"], float)))
                           and np.all(np.isfinite(np.asarray(table["y"], float)))):
        _fail("masked", "NaN positions in the output")
    nan_star, masked_star = defect_stars(truth)
    index, _ = match(table, truth, radius=2.0)
    flags = np.asarray(table["flags"]) if len(table) else np.zeros(0, int)
    reported = 0
    for star, what in ((nan_star, "NaN"), (masked_star, "masked")):
        if index[star] < 0:
            continue
        reported += 1
        if not flags[index[star]] & SourceFlag.MASKED_PIXELS:
            _fail("masked", f"the star with {what} pixels on its core is not flagged "
                            "MASKED_PIXELS")
    far = np.ones(len(truth), dtype=bool)
    for star in (nan_star, masked_star):
        far &= np.hypot(truth["x"] - truth["x"][star], truth["y"] - truth["y"][star]) > 20
    found_far = far & (index >= 0)
    wrong = found_far & ((flags[np.maximum(index, 0)] & SourceFlag.MASKED_PIXELS) != 0)
    if wrong.any():
        _fail("masked", f"{wrong.sum()} stars far from bad pixels are flagged MASKED_PIXELS")
    return {"defect_stars_reported": reported}


def check_unmodified(backend: str, overrides=None) -> dict[str, Any]:
    for kind in ("defects", "clean"):
        _, unchanged = _cached_run(backend, kind, _key(overrides))
        if not unchanged:
            _fail("unmodified", f"the input frame ({kind}) was modified by the backend")
    return {}


CONTRACT_CHECKS: dict[str, Callable[..., dict[str, Any]]] = {
    "columns": check_columns,
    "positions": check_positions,
    "linearity": check_linearity,
    "empty": check_empty,
    "saturated": check_saturated,
    "masked": check_masked,
    "unmodified": check_unmodified,
}


def run_check(backend: str, check: str, overrides: Mapping[str, Any] | None = None):
    """Run one named contract check; raises ``ContractFailure``; returns its figures."""
    return CONTRACT_CHECKS[check](backend, overrides)


@dataclass
class ContractReport:
    backend: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def check_photometry_backend(backend_name: str, overrides: Mapping[str, Any] | None = None,
                             checks=None, raise_on_failure: bool = True) -> ContractReport:
    """Run every contract check (or ``checks``) on one backend.

    :param backend_name: the installed backend (entry point) name.
    :param overrides: extra settings for the backend (camera values are supplied).
    :raises ContractFailure: listing every failed check, unless ``raise_on_failure``
        is False (then see ``report.failures``).
    """
    report = ContractReport(backend_name)
    for name in checks or CONTRACT_CHECKS:
        try:
            report.results[name] = run_check(backend_name, name, overrides)
        except ContractFailure as exc:
            report.failures[name] = str(exc)
    if report.failures and raise_on_failure:
        raise ContractFailure(f"{backend_name} broke the photometry contract:\n  "
                              + "\n  ".join(report.failures.values()))
    return report


# --- precision against the noise floor -----------------------------------------------
@dataclass(frozen=True)
class ScatterReport:
    n_stars: int
    scatter_mag: float
    floor_mag: float
    median_offset_mag: float

    @property
    def ratio(self) -> float:
        return self.scatter_mag / self.floor_mag


def bright_isolated(truth: Table, shape, fwhm: float, min_snr: float = 50.0,
                    min_sep_fwhm: float = 5.0, margin: float = 20.0) -> np.ndarray:
    """Truth rows that are bright, isolated, unsaturated and away from the edges."""
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    return ((np.asarray(truth["snr"]) >= min_snr)
            & (np.asarray(truth["nn_dist"]) >= min_sep_fwhm * fwhm)
            & (~np.asarray(truth["saturated"]))
            & (x > margin) & (y > margin)
            & (x < shape[1] - 1 - margin) & (y < shape[0] - 1 - margin))


def scatter_vs_floor(table: Table, truth: Table, column: str, floor: str, *,
                     aperture_radius: float | None = None, select=None,
                     zeropoint: float | None = None) -> ScatterReport:
    """Magnitude scatter of ``column`` against the truth, and its noise floor.

    ``floor='psf'``: the Cramér-Rao bound of each star (truth ``crlb_flux``).
    ``floor='aperture'``: the noise of aperture photometry of radius
    ``aperture_radius`` from the truth's sky, gain and read noise (the star's own
    photon noise plus the aperture area times the sky and read noise per pixel).
    The scatter is the 5-sigma-clipped standard deviation of measured minus true
    magnitude after removing the median offset; the floor is the RMS of the
    per-star floors. ``select``: boolean mask over ``truth`` (default: all).
    """
    index, _ = match(table, truth)
    use = index >= 0 if select is None else (np.asarray(select) & (index >= 0))
    rows = index[use]
    mag = np.asarray(table[column], float)[rows]
    flags = np.asarray(table["flags"])[rows]
    good = np.isfinite(mag) & (flags == 0)
    true_flux = np.asarray(truth["flux"], float)[use][good]
    mag = mag[good]
    zp = 25.0 if zeropoint is None else zeropoint
    delta = mag - (zp - 2.5 * np.log10(true_flux))
    _, median, std = sigma_clipped_stats(delta, sigma=5.0, maxiters=5)
    if floor == "psf":
        sigma_flux = np.asarray(truth["crlb_flux"], float)[use][good]
        per_star = 2.5 / math.log(10) * sigma_flux / true_flux
    elif floor == "aperture":
        if not aperture_radius:
            raise ValueError("floor='aperture' needs aperture_radius")
        gain = float(truth.meta["gain"])
        read_noise = float(truth.meta["read_noise_e"]) / gain
        sky = float(truth.meta["sky_adu"])
        in_aperture = true_flux * 10 ** (-0.4 * median)   # scale: flux inside the aperture
        area = math.pi * aperture_radius ** 2
        variance = in_aperture / gain + area * (sky / gain + read_noise ** 2)
        per_star = 2.5 / math.log(10) * np.sqrt(variance) / in_aperture
    else:
        raise ValueError("floor must be 'psf' or 'aperture'")
    return ScatterReport(n_stars=int(good.sum()), scatter_mag=float(std),
                         floor_mag=float(np.sqrt(np.mean(per_star ** 2))),
                         median_offset_mag=float(median))
