"""The calibration-and-results stage of one frame, called by the runner after photometry.

Why one function with a fixed contract: the runner must not know about catalogues,
plots or the results database, and a failure here must never cost the products of
the earlier stages. So every product is written as soon as it exists, a failed
calibration is recorded (status and reason) instead of raised, and the frame still
enters the results database with its quality keywords and instrumental photometry.

Reserved (unscoped) keys of ``settings_overrides``: ``catalogs`` (names, in order,
instead of the observatory's list), ``results_url`` (database URL or file; default
``<out_folder>/../results.db``), ``target_ra``/``target_dec`` (deg), ``record``
(False: no database), ``plots`` (False: no calibration plot). Scoped keys
(``calibrate_builtin.band=V``, ``file.path=...``) go to their backends as everywhere
else.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from ..errors import BackendNotFound, BhError, CalibrationError, NotImplementedYet
from ..pipeline import camera_values, resolve_settings, write_table
from ..plugins import call_backend, load_plugins, plugin_info
from ..registry.settings import DEFAULT_BACKENDS
from . import quality as qa
from .exports import write_sextractor

log = logging.getLogger(__name__)
MAG_PER_FLUX = 2.5 / math.log(10.0)


def _names(value) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def field_cone(frame, table) -> tuple[SkyCoord, float] | None:
    """Centre and radius (deg, +10 %) covering the sources, else the frame's WCS."""
    if table is not None and len(table) and "ra" in table.colnames:
        ra, dec = np.asarray(table["ra"], float), np.asarray(table["dec"], float)
        ok = np.isfinite(ra) & np.isfinite(dec)
        if ok.sum() >= 1:
            pts = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg)
            vec = pts.cartesian.xyz.value.mean(axis=1)
            center = SkyCoord(*vec, representation_type="cartesian").spherical
            center = SkyCoord(center.lon, center.lat)
            radius = float(pts.separation(center).deg.max()) * 1.1 + 1.0 / 60
            return center, radius
    if frame is not None and frame.wcs is not None:
        ny, nx = frame.data.shape
        w = frame.wcs.celestial
        c = w.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
        corners = w.pixel_to_world([0, nx - 1, 0, nx - 1], [0, 0, ny - 1, ny - 1])
        return SkyCoord(c.ra, c.dec), float(c.separation(corners).deg.max()) * 1.1
    return None


def reference_catalogs(frame, table, obs, overrides, names):
    """Yield (name, table or None, note) for each catalogue backend, in order.

    Calibration never merges catalogues (the astrometry backends' ``catalog_merge``):
    a zero point and colour term need one catalogue's photometric system, so each
    catalogue is tried on its own, and a ``file`` catalogue with several files gives
    its first file that has stars in the cone (``catalog_merge`` is forced off).
    """
    cone = field_cone(frame, table)
    if cone is None:
        yield None, None, "no reference catalogue: the frame has no sky coordinates"
        return
    center, radius = cone
    mjd = qa.frame_time(frame.header) if frame is not None else None
    from astropy.time import Time
    epoch = Time(mjd, format="mjd", scale="utc") if mjd else None
    for name in names:
        try:
            pm = load_plugins([name])
            settings = resolve_settings(name, plugin_info(pm, name), obs, frame, overrides)
            settings["catalog_merge"] = False          # one catalogue's photometry
            ref = call_backend(pm, "catalog", name, name=name, center=center,
                               radius_deg=radius, epoch=epoch, settings=settings)
        except BhError as exc:
            yield name, None, f"catalogue {name}: {exc}"
            continue
        yield name, ref, f"catalogue {name}: {len(ref)} stars within {radius * 60:.1f}'"


def apply_calibration(table: Table, result, pixel_scale: float | None = None,
                      fwhm: float | None = None) -> Table:
    """A copy of ``table`` with mag_inst(_err), mag(_err) (NaN uncalibrated) and pos_err.

    Matched stars use their catalogue colour in the colour term; the others sit at
    the pivot colour of the fit (their colour is unknown).
    """
    out = table.copy()
    flux = np.asarray(out["flux"], float)
    ferr = np.asarray(out["flux_err"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        good = flux > 0
        out["mag_inst"] = np.where(good, -2.5 * np.log10(np.where(good, flux, 1.0)), np.nan)
        out["mag_inst_err"] = np.where(good, MAG_PER_FLUX * ferr / flux, np.nan)
        snr = flux / ferr
    if result is not None:
        notes = result.notes
        colour = np.full(len(out), float(notes.get("color_pivot", 0.0)))
        stars = notes.get("stars") or {}
        for row, value in zip(stars.get("row", []), stars.get("colour", [])):
            if value is not None:
                colour[row] = value
        out["mag"] = out["mag_inst"] + result.zero_point + (result.color_term or 0.0) * colour
        zp_err = notes.get("zero_point_at_pivot_err", result.zero_point_err)
        out["mag_err"] = np.hypot(out["mag_inst_err"], zp_err)
    else:
        out["mag"] = np.full(len(out), np.nan)
        out["mag_err"] = np.full(len(out), np.nan)
    if {"x_err", "y_err"} <= set(out.colnames) and pixel_scale:
        out["pos_err"] = 0.5 * (np.asarray(out["x_err"], float)
                                + np.asarray(out["y_err"], float)) * pixel_scale
    elif pixel_scale:
        width = (np.asarray(out["fwhm"], float) if "fwhm" in out.colnames
                 else np.full(len(out), fwhm or np.nan))
        with np.errstate(divide="ignore", invalid="ignore"):
            out["pos_err"] = width / (2.3548 * snr) * pixel_scale
    return out


def stars_table(result) -> Table:
    """The matched stars of a calibration (used and rejected) as a Table."""
    stars = result.notes.get("stars") or {}
    return Table({k: np.array([np.nan if v is None else v for v in vals])
                  for k, vals in stars.items()})


def calibration_fields(result, status: str = "success", reason: str = "",
                       settings: Mapping | None = None) -> dict[str, Any]:
    """A CalibrationRow dict (the matched-star list stays in its own product file)."""
    if result is None:
        return {"status": status, "reason": reason,
                "settings_json": json.dumps(_jsonable(settings or {}))}
    notes = {k: v for k, v in result.notes.items() if k != "stars"}
    return {"status": status, "reason": reason, "backend": result.backend,
            "method_version": result.method_version, "zero_point": result.zero_point,
            "zero_point_err": result.zero_point_err, "color_term": result.color_term,
            "color_term_err": result.color_term_err, "n_stars": result.n_stars,
            "outlier_fraction": result.outlier_fraction, "scatter": result.scatter,
            "catalog": result.catalog, "band": result.band,
            "match_radius_arcsec": result.match_radius_arcsec,
            "notes_json": json.dumps(_jsonable(notes)),
            "settings_json": json.dumps(_jsonable(settings or {}))}


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _calibrate(frame, table, obs, overrides, folder, stem, products, notes):
    """Try each catalogue until one calibrates; returns (result, settings, reason)."""
    names = _names(overrides.pop("catalogs", None)) or list(
        obs.backends_for("catalog") if obs is not None else DEFAULT_BACKENDS["catalog"])
    backend = (obs.backends_for("calibration") or ("calibrate_builtin",))[0] if obs is not None \
        else "calibrate_builtin"
    try:
        pm = load_plugins([backend])
        info = plugin_info(pm, backend)
    except (BackendNotFound, NotImplementedYet) as exc:
        return None, {}, f"calibration skipped: {exc}"
    reasons = []
    for name, ref, said in reference_catalogs(frame, table, obs, overrides, names):
        notes.append(said)
        if ref is None or len(ref) == 0:
            reasons.append(said)
            continue
        ref_path = write_table(ref, folder / f"{stem}_ref.ecsv")
        products["reference"] = ref_path
        settings = resolve_settings(backend, info, obs, frame,
                                    {**overrides, f"{backend}.reference_path": str(ref_path)})
        try:
            result = call_backend(pm, "calibration", backend, frame=frame, sources=table,
                                  reference=ref, settings=settings)
        except CalibrationError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        return result, settings, ""
    return None, {}, "calibration failed: " + ("; ".join(reasons) or "no catalogue")


def calibrate_and_record(frame, table, obs, out_folder, settings_overrides=None):
    """Calibrate one measured frame, write its products, record it in the results DB.

    Returns ``(CalibrationResult or None, {kind: path}, [notes])``. Never raises for
    a calibration that cannot be made (no catalogue, too few stars, too many
    outliers): the frame is recorded as ``calibration_failed`` with the reason.
    """
    folder = Path(out_folder)
    stem = folder.name
    overrides = dict(settings_overrides or {})
    db_spec = overrides.pop("results_url", None) or folder.parent
    record = bool(overrides.pop("record", True))
    plots = bool(overrides.pop("plots", True))
    for key in ("target_ra", "target_dec"):
        if overrides.get(key) is None:
            overrides.pop(key, None)
    products: dict[str, Path] = {}
    notes: list[str] = []
    scale = camera_values(frame, obs).get("pixel_scale_arcsec")
    q = qa.frame_quality(frame, table, scale)

    result, settings, reason = None, {}, ""
    if table is None or len(table) == 0 or "ra" not in table.colnames:
        reason = "calibration skipped: no sources with sky coordinates"
    else:
        result, settings, reason = _calibrate(frame, table, obs, overrides, folder, stem,
                                              products, notes)
    if reason:
        notes.append(reason)
    qa.add_calibration(q, result)
    if table is not None:
        cal = apply_calibration(table, result, scale, q.get("fwhm"))
        cal.meta.update(stem=stem, filter=q.get("filter"), mjd=q.get("mjd"),
                        pixel_scale_arcsec=scale, calibrated=result is not None)
        if "reference" in products:
            cal.meta["reference_path"] = str(products["reference"])
        products["calibrated"] = write_table(cal, folder / f"{stem}_cal.ecsv")
        products["sextractor"] = write_sextractor(cal, folder / f"{stem}_bhtom.cat")
    if result is not None:
        stars = stars_table(result)
        products["calibration_stars"] = write_table(stars, folder / f"{stem}_calstars.ecsv")
        if plots:
            try:
                from .plots import calibration_plot
                products["calibration_plot"] = calibration_plot(
                    result, result.notes["stars"], folder / f"{stem}_calib.png")
            except (ValueError, RuntimeError, OSError) as exc:   # never costs a frame
                notes.append(f"calibration plot not written: {exc}")
        notes.append(f"calibration: {result.backend} {result.notes.get('bhtom_band')} ZP "
                     f"{result.zero_point:.3f} ± {result.zero_point_err:.3f}, "
                     f"{result.n_stars} stars, scatter {result.scatter:.3f}")
    for kind in ("reference", "calibration_stars", "calibration_plot"):
        if kind not in products:          # a stale product of an earlier run must go
            (folder / f"{stem}{PRODUCT_FILES[kind]}").unlink(missing_ok=True)
    from ..frame import atomic_write_text
    status = "done" if result is not None else (
        "not_calibrated" if "skipped" in reason else "calibration_failed")
    q.update(status=status, status_reason=reason, input_path=str(frame.path or ""))
    products["quality"] = atomic_write_text(folder / f"{stem}_quality.json",
                                            json.dumps(_jsonable(q), indent=1) + "\n")
    calibration = calibration_fields(result, "success" if result else "error", reason,
                                     settings)
    products["calibration"] = atomic_write_text(folder / f"{stem}_calibration.json",
                                                json.dumps(calibration, indent=1) + "\n")
    if record:
        try:
            record_products(folder, db_spec)
        except BhError as exc:
            notes.append(f"results database not updated: {exc}")
    return result, products, notes


def record_products(folder, db_spec=None) -> int:
    """Record one frame folder's products in the results database (default
    ``<folder>/../results.db``); what ``calibrate_and_record`` does, and how a database
    is rebuilt from the products of a parallel or cluster run."""
    from .db import ResultsDB
    folder = Path(folder)
    stem = folder.name
    q = json.loads((folder / f"{stem}_quality.json").read_text())
    calibration = json.loads((folder / f"{stem}_calibration.json").read_text())
    products = {**_earlier_products(folder, stem)}
    for kind, suffix in PRODUCT_FILES.items():
        if (folder / f"{stem}{suffix}").exists():
            products[kind] = folder / f"{stem}{suffix}"
    cal_path = products.get("calibrated")
    table = Table.read(cal_path, format="ascii.ecsv") if cal_path else None
    info = {**q, "folder": str(folder), "quality_json": json.dumps(q)}
    db = ResultsDB(db_spec if db_spec is not None else folder.parent)
    return db.record_frame(stem, info, table, products, calibration)


def ingest(out_dir, db_spec=None) -> int:
    """Record every frame folder under ``out_dir`` that has a quality file; returns
    how many were recorded."""
    count = 0
    for quality in sorted(Path(out_dir).glob("*/*_quality.json")):
        folder = quality.parent
        if quality.name == f"{folder.name}_quality.json":
            record_products(folder, db_spec if db_spec is not None else out_dir)
            count += 1
    return count


PRODUCT_FILES = {"reference": "_ref.ecsv", "calibrated": "_cal.ecsv",
                 "sextractor": "_bhtom.cat", "calibration_stars": "_calstars.ecsv",
                 "calibration_plot": "_calib.png", "quality": "_quality.json",
                 "calibration": "_calibration.json"}


def _earlier_products(folder: Path, stem: str) -> dict[str, Path]:
    """Products the earlier stages left in the folder (by the runner's names)."""
    names = {"header": "_std.fits", "astrometry": "_wcs.fits", "photometry": "_phot.ecsv",
             "residual": "_residual.fits"}
    return {k: folder / f"{stem}{suffix}" for k, suffix in names.items()
            if (folder / f"{stem}{suffix}").exists()}


def quality_cards(out_folder) -> dict:
    """FITS cards of a frame's quality keywords, for the runner to stamp on its frame."""
    folder = Path(out_folder)
    path = folder / f"{folder.name}_quality.json"
    return qa.quality_cards(json.loads(path.read_text())) if path.exists() else {}
