"""The DAOPHOT photometry of one frame: daofind -> phot -> pstselect -> psf -> allstar.

Three irafcl runs in one private folder with one private HOME:
  A  daofind, phot in the normalisation aperture (3 FWHM: it sets the PSF and so the
     ALLSTAR magnitude scale), pstselect, phot in the requested apertures;
  B  psf (varorder lowered when there are few PSF stars), allstar -> residual image;
     with ``second_pass``: daofind on the residual;
  C  (``second_pass`` and new stars only) phot of the new stars, pfmerge, allstar again.
When no PSF star can be selected the table falls back to PHOT's magnitudes in the
normalisation aperture (the same scale ALLSTAR uses) and says so in
``meta['flux_type']`` and ``meta['psf_fallback']``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from bhcore.errors import ExternalToolError, PhotometryError
from bhcore.external import private_workdir
from bhcore.frame import write_residual
from bhcore.tables import SourceFlag, SourceTable, pixels_near

from . import script as cl
from .estimate import frame_stats
from .iraf import run_cl, setup_lines, write_iraf_image
from .parse import aperture_columns, build_table, count_stars, read_daophot

log = logging.getLogger(__name__)

IMAGE = "image.fits"
VARORDER_TERMS = {-1: 0, 0: 1, 1: 3, 2: 6}


def measure(frame, settings: Mapping[str, Any], *, name: str, version: str) -> SourceTable:
    data = np.asarray(frame.data, dtype=np.float64)
    if data.ndim != 2 or data.size == 0:
        raise PhotometryError("frame has no 2-D pixel data", path=frame.path, backend=name)
    bad = ~np.isfinite(data)
    if frame.mask is not None:
        bad |= np.asarray(frame.mask, dtype=bool)
    if bad.all():
        raise PhotometryError("every pixel is masked or not finite", path=frame.path,
                              backend=name)
    saturation = settings.get("saturation")
    stats = frame_stats(data, bad, saturation, settings.get("fwhm"))
    sigma = float(settings.get("sigma") or stats.sigma)
    pixels = data.copy()                      # the frame's own arrays stay untouched
    datamin = None
    if bad.any():
        good_min = float(np.min(data[~bad]))
        datamin = good_min - 1.0
        pixels[bad] = good_min - 1000.0 * sigma - 1000.0
    g = cl.geometry(settings, fwhm=stats.fwhm, sigma=sigma, datamin=datamin,
                    n_pixels=data.size)
    zmag = float(settings["zmag"])
    timeout = float(settings["timeout"])
    meta: dict[str, Any] = {
        "backend": name, "backend_version": version, "fwhm_px": round(stats.fwhm, 4),
        "fwhm_source": "measured" if stats.fwhm_measured else
        ("settings" if settings.get("fwhm") else "default"),
        "sky_sigma_adu": round(sigma, 4), "zeropoint": zmag, "gain": g.epadu,
        "aperture_radii_px": list(settings["aperture_radii"]),
        "psf_norm_radius_px": g.norm_radius, "psfrad_px": g.psfrad, "fitrad_px": g.fitrad,
        "function": settings["function"],
    }
    saturated = data >= float(saturation) if saturation else None
    with private_workdir(prefix="bh-phot-daophot-") as work:
        home = work / "home"
        write_iraf_image(work / IMAGE, pixels)
        setup = setup_lines(min_lenuserarea=int(settings["min_lenuserarea"]))
        varorder = int(settings["varorder"])

        run_cl(setup + cl.parameter_lines(settings, g, varorder)
               + cl.find_and_phot(IMAGE, "image.coo", "image.mag")
               + cl.when_exists("image.mag", cl.select_psf_stars(
                   IMAGE, "image.mag", "image.pst", int(settings["max_psf_stars"]))
                   + cl.aperture_phot(IMAGE, "image.coo", "image.apmag", g)),
               work, home, timeout, "find.log")
        n_found = count_stars(work / "image.coo")
        if n_found and not (work / "image.mag").exists():
            raise PhotometryError("PHOT wrote no output", path=frame.path, backend=name)
        meta["n_detected"] = n_found
        common = {"zmag": zmag, "fwhm": g.fwhm, "fitrad": g.fitrad, "psfrad": g.psfrad,
                  "shape": data.shape, "saturated_pixels": saturated,
                  "bad_pixels": bad if bad.any() else None, "wcs": frame.wcs}
        if n_found == 0:
            meta["flux_type"] = "psf"
            empty = build_table(read_daophot(work / "image.coo"), apertures={}, meta=meta,
                                **common)
            return _finish(settings, empty)
        norm_mag = read_daophot(work / "image.mag")
        mags = [read_daophot(work / "image.apmag")]
        n_psf = _filter_psf_stars(work / "image.pst", norm_mag,
                                  float(settings["psf_min_snr"]))
        meta["psf_stars_selected"] = n_psf
        if n_psf < int(settings["min_psf_stars"]):
            return _finish(settings, _aperture_fallback(
                norm_mag, mags, settings, common, meta,
                f"{n_psf} PSF star(s) selected, fewer than min_psf_stars"))
        while varorder > 0 and n_psf < 5 * VARORDER_TERMS[varorder]:
            varorder -= 1
        meta["varorder"] = varorder

        lines = setup + cl.parameter_lines(settings, g, varorder) + cl.psf_and_allstar(
            IMAGE, "image.mag", "image.pst", "image.psf.fits", "image.als", "image.sub.fits")
        if settings["second_pass"]:
            lines.append(cl.daofind("image.sub.fits", "pass2.coo"))
        try:
            run_cl(lines, work, home, timeout, "psf.log")
        except ExternalToolError as exc:
            if not (work / "image.psf.fits").exists():
                log.warning("%s: DAOPHOT psf failed (%s)", frame.name, exc)
                return _finish(settings, _aperture_fallback(
                    norm_mag, mags, settings, common, meta, f"psf failed: {exc}"))
            raise
        final_als, final_sub = work / "image.als", work / "image.sub.fits"
        if not final_als.exists():
            raise PhotometryError("ALLSTAR wrote no output", path=frame.path, backend=name)
        meta["psf_stars_used"] = _psf_star_count(work / "image.psf.fits")

        if settings["second_pass"]:
            n_new = count_stars(work / "pass2.coo")
            meta["second_pass_new"] = n_new
            if n_new:
                offset = _max_id(read_daophot(work / "image.coo"))
                run_cl(setup + cl.parameter_lines(settings, g, varorder)
                       + cl.merge_and_refit(IMAGE, "image.als", "pass2.coo", "pass2.mag",
                                            "pass2.apmag", "merged.mag", "image.psf.fits",
                                            "final.als", "final.sub.fits", offset, g),
                       work, home, timeout, "pass2.log")
                final_als, final_sub = work / "final.als", work / "final.sub.fits"
                mags.append(read_daophot(work / "pass2.apmag"))

        rejects = final_als.with_suffix(".arj")
        als = _with_rejects(read_daophot(final_als),
                            read_daophot(rejects) if rejects.exists() else Table(),
                            saturated, max(g.fitrad, 1.5))
        meta["flux_type"] = "psf"
        ids = np.asarray(als["ID"], dtype=np.int64) if len(als) else np.zeros(0, int)
        apertures = aperture_columns(mags, ids, list(settings["aperture_radii"]), zmag)
        table = build_table(als, apertures=apertures, meta=meta, **common)
        products = settings.get("products_dir")
        if products and final_sub.exists():
            table.meta["residual_image"] = str(write_residual(
                frame, fits.getdata(final_sub).astype(np.float64), products,
                "phot_daophot: ALLSTAR-fitted stars subtracted"))
        return _finish(settings, table)


def _with_rejects(als: Table, arj: Table, saturated: np.ndarray | None,
                  radius: float) -> Table:
    """ALLSTAR's fitted stars plus the saturated stars it rejected (flux INDEF).

    ALLSTAR leaves saturated pixels out of the fit, and rejects a saturated star
    when too few pixels remain: such a star stays in the table (flagged SATURATED and
    NOT_CONVERGED) instead of disappearing. Other rejects (merged, too faint) are
    dropped, as ALLSTAR intends.
    """
    if len(arj) == 0 or saturated is None or not saturated.any():
        return als
    keep = pixels_near(saturated, np.asarray(arj["XCENTER"], float) - 1.0,
                       np.asarray(arj["YCENTER"], float) - 1.0, radius)
    keep &= np.asarray([str(e).strip().lower() != "merged" for e in arj["PERROR"]])
    if not keep.any():
        return als
    from astropy.table import vstack
    if len(als) == 0:
        return arj[keep]
    return vstack([als, arj[keep]], join_type="inner", metadata_conflicts="silent")


def _aperture_fallback(mag: Table, apmags, settings, common, meta,
                       reason: str) -> SourceTable:
    """PHOT results in the normalisation aperture, shaped like ALLSTAR output."""
    log.warning("DAOPHOT: %s; using aperture photometry", reason)
    meta = {**meta, "flux_type": "aperture", "psf_fallback": reason}
    rows = Table()
    if len(mag):
        suffix = "" if "MAG" in mag.colnames else "1"
        rows["ID"] = mag["ID"]
        rows["XCENTER"] = mag["XCENTER"]
        rows["YCENTER"] = mag["YCENTER"]
        rows["MAG"] = mag[f"MAG{suffix}"]
        rows["MERR"] = mag[f"MERR{suffix}"]
        rows["MSKY"] = mag["MSKY"]
        rows["PIER"] = mag[f"PIER{suffix}"]
        rows["PERROR"] = mag[f"PERROR{suffix}"]
    rows = _dedupe(rows, 0.5 * common["fwhm"])
    ids = np.asarray(rows["ID"], dtype=np.int64) if len(rows) else np.zeros(0, int)
    apertures = aperture_columns(apmags, ids, list(settings["aperture_radii"]),
                                 common["zmag"])
    return build_table(rows, apertures=apertures, meta=meta, **common)


def _filter_psf_stars(pst: Path, mag: Table, min_snr: float) -> int:
    """Drop PSF stars whose S/N in the normalisation aperture is below ``min_snr``
    (rewriting the .pst file); returns how many remain."""
    if not pst.exists():
        return 0
    if len(mag) == 0 or min_snr <= 0:
        return count_stars(pst)
    suffix = "" if "MERR" in mag.colnames else "1"
    merr = np.ma.filled(np.ma.asarray(mag[f"MERR{suffix}"], dtype=float), np.inf)
    good = {int(i) for i, e in zip(np.asarray(mag["ID"]), merr)
            if np.isfinite(e) and e > 0 and 1.0857 / e >= min_snr}
    lines, kept = [], 0
    for line in pst.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            lines.append(line)
        elif int(line.split()[0]) in good:
            lines.append(line)
            kept += 1
    pst.write_text("\n".join(lines) + "\n")
    return kept


def _dedupe(rows: Table, radius: float) -> Table:
    """One row per star: daofind can find two peaks in one star, which PHOT's centring
    then puts on the same centroid (ALLSTAR merges them; PHOT does not)."""
    if len(rows) < 2:
        return rows
    from scipy.spatial import cKDTree
    xy = np.column_stack([np.asarray(rows["XCENTER"], float),
                          np.asarray(rows["YCENTER"], float)])
    merr = np.ma.filled(np.ma.asarray(rows["MERR"], dtype=float), np.inf)
    keep = np.ones(len(rows), dtype=bool)
    for i, j in sorted(cKDTree(xy).query_pairs(radius)):
        if keep[i] and keep[j]:
            keep[j if merr[j] >= merr[i] else i] = False
    return rows[keep]


def _max_id(table) -> int:
    return int(np.max(table["ID"])) if len(table) else 0


def _psf_star_count(psf_path: Path) -> int | None:
    try:
        return int(fits.getheader(psf_path).get("NPSFSTAR"))
    except (OSError, TypeError, ValueError):
        return None


def _finish(settings, table: SourceTable) -> SourceTable:
    """Drop sources below ``min_snr`` (keeping saturated stars), renumber nothing."""
    min_snr = float(settings.get("min_snr") or 0.0)
    if min_snr > 0 and len(table):
        flux = np.asarray(table["flux"], float)
        err = np.asarray(table["flux_err"], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = flux / err
        keep = (np.isfinite(snr) & (snr >= min_snr)) | (
            (np.asarray(table["flags"]) & SourceFlag.SATURATED) != 0)
        table.meta["n_below_min_snr"] = int((~keep).sum())
        table = table[keep]
    table.meta["n_sources"] = len(table)
    return table.check()
