"""Per-frame quality keywords: what CCDPhot records for BHTOM, measured here.

Why measured on the pixels and not taken from the photometry table: every engine
reports (or omits) FWHM differently, while users compare frames across engines
and nights. FWHM along x and y and the ellipticity come from elliptical Moffat
fits of bright isolated stars; sky and its noise are sigma-clipped statistics of
the image.

PHOTFLAG is a bit mask (0 = good): 1 not calibrated, 2 fewer than 10 calibration
stars, 4 calibration scatter > 0.1 mag, 8 outlier fraction > 0.2, 16 no WCS,
32 Sun above -12 deg, 64 poor image (seeing above 6" and FWHM above 5 px).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from astropy.stats import sigma_clipped_stats

FLAG_NOT_CALIBRATED, FLAG_FEW_STARS, FLAG_SCATTER, FLAG_OUTLIERS = 1, 2, 4, 8
FLAG_NO_WCS, FLAG_TWILIGHT, FLAG_BAD_SEEING = 16, 32, 64

# FITS keyword -> (quality key, comment); the header-derived ones are copied.
CARDS = {
    "FWHM_X": ("fwhm_x", "[px] FWHM along x"), "FWHM_Y": ("fwhm_y", "[px] FWHM along y"),
    "FWHM": ("fwhm", "[px] mean FWHM"), "SEEING": ("seeing", "[arcsec] FWHM on the sky"),
    "ELLIPTIC": ("ellipticity", "1 - b/a of the PSF"), "SKYLEVEL": ("sky", "[ADU] sky level"),
    "SKYNOISE": ("sky_noise", "[ADU] sky noise per pixel"),
    "NUMSTARS": ("numstars", "sources measured"),
    "ASTRRMS": ("astrom_rms", "[arcsec] astrometric rms"),
    "PIXSCALE": ("pixel_scale", "[arcsec/px] pixel scale"),
    "ZEROPNT": ("zero_point", "[mag] zero point (1 ADU, colour 0)"),
    "ZPERR": ("zero_point_err", "[mag] zero point error"),
    "COLTERM": ("color_term", "colour term"), "COLTERR": ("color_term_err", "colour term error"),
    "ZPSCATR": ("scatter", "[mag] calibration scatter"),
    "NCALSTAR": ("n_cal_stars", "calibration stars used"),
    "OUTLFRAC": ("outlier_fraction", "calibration outlier fraction"),
    "CALCAT": ("catalog", "calibration catalogue"), "CALBAND": ("bhtom_band", "band calibrated to"),
    "MATCHRAD": ("match_radius", "[arcsec] calibration match radius"),
    "LIMMAG": ("lim_mag", "[mag] 5-sigma limiting magnitude (CALBAND)"),
    "GLIM": ("glim", "[mag] 5-sigma limiting magnitude in Gaia G"),
    "PHOTFLAG": ("photflag", "photometric quality bits, 0 = good"),
    "TARGINFD": ("target_in_field", "target of interest in the field"),
    "CALIBVER": ("calib_version", "calibration method version"),
}
HEADER_KEYS = {   # FrameRow field -> header keyword written by the FITS manager
    "object": "OBJECT", "filter": "FILTER", "oname": "ONAME", "date_obs": "DATE-OBS",
    "mjd": "MJD", "jd": "JD", "hjd": "HJD", "bjd": "BJD", "exptime": "EXPTIME",
    "airmass": "AIRMASS", "ra": "RA", "dec": "DEC", "alt": "OBJALT", "az": "OBJAZ",
    "moon_alt": "MOONALT", "moon_az": "MOONAZ", "moon_dist": "MOONDIST",
    "moon_illum": "MOONILLU", "sun_alt": "SUNALT", "sun_az": "SUNAZ", "sun_dist": "SUNDIST",
    "astrom_rms": "ASTRRMS", "pipeline_version": "BHCORE", "filename": "FILENAME",
    "binning": "BIN", "observer": "OBSERVER", "observatory": "OBSERVAT", "origin": "ORIGIN",
    "telescope": "TELESCOP", "instrument": "INSTRUME",
}
TEXT_KEYS = {"object", "filter", "oname", "date_obs", "pipeline_version", "filename", "binning",
             "observer", "observatory", "origin", "telescope", "instrument"}


def _num(value):
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def frame_time(header) -> float | None:
    """MJD (UTC) at mid-exposure: MJD card, else MJD-OBS/DATE-OBS + EXPTIME/2."""
    if _num(header.get("MJD")) is not None:
        return _num(header.get("MJD"))
    half = (_num(header.get("EXPTIME")) or 0.0) / 2.0 / 86400.0
    if _num(header.get("MJD-OBS")) is not None:
        return _num(header.get("MJD-OBS")) + half
    if header.get("DATE-OBS"):
        from astropy.time import Time
        try:
            return float(Time(str(header["DATE-OBS"]), scale="utc").mjd) + half
        except ValueError:
            return None
    return None


def sky_stats(data, mask=None) -> tuple[float | None, float | None]:
    """Sigma-clipped median and standard deviation of the image (every 2nd pixel)."""
    sub = np.asarray(data, float)[::2, ::2]
    good = np.isfinite(sub)
    if mask is not None:
        good &= ~np.asarray(mask, bool)[::2, ::2]
    if not good.any():
        return None, None
    _, median, std = sigma_clipped_stats(sub[good], sigma=3.0, maxiters=5)
    return float(median), float(std)


def _moffat(p, dx, dy):
    amp, x0, y0, a, b, c, beta, bg = p
    u, v = dx - x0, dy - y0
    base = np.maximum(1.0 + a * u * u + 2.0 * b * u * v + c * v * v, 1e-6)  # b^2 > ac mid-fit
    return amp * base ** (-beta) + bg


def _fit_star(cut, dx, dy, fwhm_guess):
    """Elliptical Moffat fit of one star: (fwhm_x, fwhm_y, b/a) or None."""
    from scipy.optimize import least_squares
    beta0 = 3.0
    a0 = (2.0 * math.sqrt(2.0 ** (1.0 / beta0) - 1.0) / fwhm_guess) ** 2
    p0 = [float(cut.max()), 0.0, 0.0, a0, 0.0, a0, beta0, 0.0]
    lo = [0.0, -2.0, -2.0, 1e-4, -1.0, 1e-4, 1.1, -np.inf]
    hi = [np.inf, 2.0, 2.0, 10.0, 1.0, 10.0, 20.0, np.inf]
    try:
        fit = least_squares(lambda p: (_moffat(p, dx, dy) - cut).ravel(), p0,
                            bounds=(lo, hi), x_scale="jac", max_nfev=200)
    except ValueError:
        return None
    amp, _x, _y, a, b, c, beta, _bg = fit.x
    if not fit.success or a * c - b * b <= 0 or amp <= 0:
        return None
    k = 2.0 ** (1.0 / beta) - 1.0
    eig = np.linalg.eigvalsh(np.array([[a, b], [b, c]]))
    return 2.0 * math.sqrt(k / a), 2.0 * math.sqrt(k / c), math.sqrt(eig[0] / eig[1])


def psf_shape(data, x, y, flux, sky: float, fwhm_guess: float = 3.0, n_max: int = 15,
              saturation: float | None = None, noise: float | None = None,
              min_peak_snr: float = 20.0) -> dict[str, float]:
    """FWHM along x and y, their mean and the ellipticity of bright isolated stars.

    Each star (peak above ``min_peak_snr`` times the sky ``noise``) is fitted with an
    elliptical Moffat profile (free beta), whose FWHM is exact for Moffat and
    Gaussian stars alike (second moments overestimate it for any profile with
    wings); the medians over the stars are returned.
    """
    data = np.asarray(data, float)
    ny, nx = data.shape
    x, y, flux = (np.asarray(v, float) for v in (x, y, flux))
    order = np.argsort(-np.where(np.isfinite(flux), flux, -np.inf))
    results = []
    half = int(max(4, math.ceil(2 * fwhm_guess)))
    for k in order[: 6 * n_max]:
        if len(results) >= n_max or not np.isfinite(flux[k]) or flux[k] <= 0:
            break
        cx, cy = x[k], y[k]
        if not (half <= cx < nx - half - 1 and half <= cy < ny - half - 1):
            continue
        d = np.hypot(x - cx, y - cy)
        if np.any((d > 0) & (d < 2.5 * half) & (flux > 0.02 * flux[k])):
            continue
        ix, iy = int(round(cx)), int(round(cy))
        cut = data[iy - half: iy + half + 1, ix - half: ix + half + 1]
        if not np.all(np.isfinite(cut)) or (saturation is not None
                                            and cut.max() >= 0.9 * saturation):
            continue
        if noise and cut.max() - sky < min_peak_snr * noise:
            break                              # fainter stars give biased shapes
        yy, xx = np.mgrid[-half: half + 1, -half: half + 1]
        got = _fit_star(cut - sky, xx - (cx - ix), yy - (cy - iy), fwhm_guess)
        if got is not None and all(0.5 < v < 4 * half for v in got[:2]):
            results.append(got)
    if not results:
        return {}
    arr = np.array(results)
    fx, fy = float(np.median(arr[:, 0])), float(np.median(arr[:, 1]))
    return {"fwhm_x": fx, "fwhm_y": fy, "fwhm": float(math.sqrt(fx * fy)),
            "ellipticity": float(1.0 - np.median(arr[:, 2])), "n_psf_stars": len(results)}


def frame_quality(frame, table, pixel_scale: float | None = None) -> dict[str, Any]:
    """Quality figures of one measured frame (no calibration figures yet)."""
    header = frame.header
    q: dict[str, Any] = {}
    for field, key in HEADER_KEYS.items():
        if key in header:
            value = header[key]
            q[field] = str(value) if field in TEXT_KEYS else _num(value)
    q["mjd"] = frame_time(header)
    q["numstars"] = int(len(table)) if table is not None else 0
    q["pixel_scale"] = pixel_scale
    q["sky"], q["sky_noise"] = sky_stats(frame.data, frame.mask)
    if table is not None and len(table) and q["sky"] is not None:
        guess = float(np.nanmedian(table["fwhm"])) if "fwhm" in table.colnames else 3.0
        guess = guess if np.isfinite(guess) and guess > 0.5 else 3.0
        q.update(psf_shape(frame.data, table["x"], table["y"], table["flux"], q["sky"],
                           guess, saturation=_num(header.get("SATURATE")),
                           noise=q["sky_noise"]))
    if q.get("fwhm") is not None and pixel_scale:
        q["seeing"] = q["fwhm"] * pixel_scale
    q["has_wcs"] = frame.wcs is not None
    # the gain the photometry assumed, and whether the camera's gain is known: light
    # curves measure it from the night when it is not (bhcore.lightcurves.noise)
    gain = _num(header.get("GAIN"))
    q["gain_known"] = gain is not None and gain > 0
    used = table.meta.get("gain") if table is not None else None
    q["gain_used"] = _num(used) if used is not None else gain
    return q


def add_calibration(q: dict, result, notes: Mapping | None = None) -> dict:
    """Fold a CalibrationResult (or None) into the quality dict and set PHOTFLAG."""
    if result is not None:
        q.update(zero_point=result.zero_point, zero_point_err=result.zero_point_err,
                 color_term=result.color_term, color_term_err=result.color_term_err,
                 scatter=result.scatter, n_cal_stars=result.n_stars,
                 outlier_fraction=result.outlier_fraction, catalog=result.catalog,
                 band=result.band, match_radius=result.match_radius_arcsec,
                 calib_version=result.method_version)
        notes = result.notes
        q["bhtom_band"] = notes.get("bhtom_band")
        q["lim_mag"] = notes.get("limiting_mag")
        if result.band == "G":
            q["glim"] = notes.get("limiting_mag")
        if "target" in notes:
            q["target_in_field"] = bool(notes["target"].get("detected"))
            q["target"] = notes["target"]
    q["photflag"] = photflag(q, result)
    return q


def photflag(q: Mapping, result) -> int:
    flag = 0
    if result is None:
        flag |= FLAG_NOT_CALIBRATED
    else:
        if result.n_stars < 10:
            flag |= FLAG_FEW_STARS
        if result.scatter > 0.1:
            flag |= FLAG_SCATTER
        if result.outlier_fraction > 0.2:
            flag |= FLAG_OUTLIERS
    if not q.get("has_wcs", True):
        flag |= FLAG_NO_WCS
    sun = q.get("sun_alt")
    if sun is not None and sun > -12.0:
        flag |= FLAG_TWILIGHT
    if (q.get("seeing") or 0) > 6.0 and (q.get("fwhm") or 0) > 5.0:
        flag |= FLAG_BAD_SEEING
    return flag


def quality_cards(q: Mapping) -> dict[str, tuple[Any, str]]:
    """FITS cards ``{KEY: (value, comment)}`` of the quality dict (known values only)."""
    out = {}
    for key, (name, comment) in CARDS.items():
        value = q.get(name)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        out[key] = (round(value, 6) if isinstance(value, float) else value, comment)
    return out
