"""Turn the fitted stars into the SourceTable: errors, flags, shape figures,
aperture fluxes and the aperture correction."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from bhcore.tables import SourceFlag, SourceTable

from . import solve_kernels
from .aperture import aperture_correction, aperture_photometry, own_light
from .engine import mag_from_flux


def star_flags(stars, fitter, ctx, keep):
    """Flag bits, sharpness and a convergence mask for the kept stars."""
    L = fitter.layout
    sel = np.flatnonzero(keep).astype(np.int64)
    n = len(stars.x)
    fw = L.fwhm
    out = np.zeros((n, 3))
    total = fitter.model if fitter.skyimg is None else fitter.model + fitter.skyimg
    rmax = np.maximum(fw, 1.5)
    solve_kernels.box_stats(sel, stars.x, stars.y, L.bx, L.by, stars.f, L.hf, L.foff, L.fP,
                            L.fPx, L.fPy,
                      fitter.scene.dsub, total, fitter.scene.varsky, fitter.scene.bad,
                      ctx.flagimg, fitter.scene.gain_inv, rmax, out)
    bits = out[:, 2].astype(np.int64)
    flags = np.zeros(n, np.int32)
    flags |= np.where(bits & 1, int(SourceFlag.SATURATED), 0).astype(np.int32)
    flags |= np.where(bits & 16, int(SourceFlag.MASKED_PIXELS), 0).astype(np.int32)
    ny, nx = ctx.data.shape
    edge = np.minimum.reduce([stars.x, stars.y, nx - 1 - stars.x, ny - 1 - stars.y])
    flags |= np.where(edge < L.hf, int(SourceFlag.NEAR_EDGE), 0).astype(np.int32)
    if sel.size > 1:
        pts = np.column_stack([stars.x[sel], stars.y[sel]])
        d, _ = cKDTree(pts).query(pts, k=2)
        nn = np.full(n, np.inf)
        nn[sel] = d[:, 1]
    else:
        nn = np.full(n, np.inf)
    flags |= np.where(nn < 2.0 * fw, int(SourceFlag.BLENDED), 0).astype(np.int32)
    failed = ~stars.converged | fitter.stalled
    flags |= np.where(failed, int(SourceFlag.NOT_CONVERGED), 0).astype(np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharp = np.where(out[:, 1] > 0, out[:, 0] / out[:, 1], np.nan)
    return flags, sharp, nn


def model_encircled(psf, x, y, radius):
    """Share of each star's model light inside ``radius`` (exact pixel overlap)."""
    half = int(np.ceil(radius)) + 2
    n = len(x)
    S = 2 * half + 1
    rvals = psf.stamps(x, y, half).ravel()
    out = np.zeros((n, 1))
    x, y = np.asarray(x, float), np.asarray(y, float)
    own_light(np.arange(n, dtype=np.int64), x, y, np.floor(x + 0.5).astype(np.int64),
              np.floor(y + 0.5).astype(np.int64),
              np.full(n, half, np.int64), np.arange(n, dtype=np.int64) * S * S, rvals,
              np.array([float(radius)]), out)
    return out[:, 0]


def flux_calibration(flux, own_light, ap_flux, ap_err, good, radius, apply="auto"):
    """Does the PSF model put the right share of light inside a large aperture?

    For clean bright stars the aperture flux (neighbours subtracted, local sky)
    over the PSF model's light in the same aperture is 1 when the model's profile
    is right. A PSF family that does not describe the real profile (a halo, say)
    fits the core but shares the light out wrongly, and every PSF flux is off by
    the same factor: then (|factor - 1| > 3 sigma, or ``apply`` is "always") the
    fluxes are rescaled, so that a flux is the aperture flux extrapolated to
    infinity with the model's own wings, and the factor's error is added.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = ap_flux / own_light
        snr = ap_flux / ap_err
    ok = good & np.isfinite(ratio) & (snr > 50) & (own_light > 0)
    out = {"radius_px": round(float(radius), 3), "n_stars": int(ok.sum()),
           "applied": False}
    if ok.sum() < 5:
        return out
    vals = ratio[ok]
    med = float(np.median(vals))
    err = float(1.2533 * 1.4826 * np.median(np.abs(vals - med)) / np.sqrt(vals.size))
    out.update({"factor": round(med, 6), "factor_err": round(err, 6)})
    if apply == "always" or (apply == "auto" and abs(med - 1.0) > 3.0 * err):
        out["applied"] = True
    return out


def build_table(frame, stars, fitter, ctx, psf, cfg, report, keep) -> SourceTable:
    """The SourceTable of the kept stars, with aperture photometry and meta."""
    sel = np.flatnonzero(keep)
    flags, sharp, nn = star_flags(stars, fitter, ctx, keep)
    cov = stars.cov
    with np.errstate(invalid="ignore"):
        ferr = np.sqrt(np.clip(cov[:, 0, 0], 0, None))
        xerr = np.sqrt(np.clip(cov[:, 1, 1], 0, None))
        yerr = np.sqrt(np.clip(cov[:, 2, 2], 0, None))
    L = fitter.layout
    fw = L.fwhm
    fwhm_med = float(np.median(fw[sel])) if sel.size else float(np.median(fw))
    radii = np.array([r * fwhm_med for r in cfg.aperture_radii_fwhm])
    annulus = (cfg.annulus_fwhm[0] * fwhm_med, cfg.annulus_fwhm[1] * fwhm_med)
    own = np.zeros((len(stars.x), radii.size))
    own_light(sel.astype(np.int64), stars.x, stars.y, L.bx, L.by, L.hr, L.roff, L.rvals,
              radii, own)
    own *= stars.f[:, None]
    total = fitter.model if fitter.skyimg is None else fitter.model + fitter.skyimg
    resid = fitter.scene.dsub - total
    ap_flux, ap_err, local = aperture_photometry(resid, fitter.model, fitter.scene.varsky,
                                                 fitter.scene.gain_inv, ctx.bad,
                                                 stars.x[sel], stars.y[sel], own[sel],
                                                 radii, annulus)
    ix = np.clip(np.floor(stars.x + 0.5).astype(int), 0, ctx.data.shape[1] - 1)
    iy = np.clip(np.floor(stars.y + 0.5).astype(int), 0, ctx.data.shape[0] - 1)
    sky = ctx.bg.sky[iy, ix] + stars.sky_offset
    dof = np.maximum(stars.npix - (3 if fitter.npar == 3 else 1), 1)
    good = (flags[sel] == 0) & (stars.group_size[sel] == 1)
    flux = stars.f.copy()
    model_in = np.zeros(sel.size)
    if good.any():
        model_in[good] = flux[sel][good] * model_encircled(psf, stars.x[sel][good],
                                                           stars.y[sel][good], radii[-1])
    calib = flux_calibration(flux[sel], model_in, ap_flux[:, -1], ap_err[:, -1], good,
                             radii[-1], apply=cfg.flux_calibration)
    if calib.get("applied"):
        c, dc = calib["factor"], calib["factor_err"]
        ferr = np.sqrt((c * ferr) ** 2 + (dc * flux) ** 2)
        flux = c * flux
    mag, mag_err = mag_from_flux(flux, ferr)
    apcorr = aperture_correction(flux[sel], ferr[sel], ap_flux, ap_err, good, radii)
    extra = {
        "x_err": xerr[sel], "y_err": yerr[sel], "mag": mag[sel], "mag_err": mag_err[sel],
        "sky": sky[sel], "sky_annulus": sky[sel] + local,
        "chi2": stars.chi2[sel], "rchi2": stars.chi2[sel] / dof[sel],
        "npix": stars.npix[sel], "sharpness": sharp[sel], "fwhm": fw[sel],
        "group_id": stars.group[sel], "group_size": stars.group_size[sel],
        "nn_dist": nn[sel], "cov_flux_x": cov[sel, 0, 1], "cov_flux_y": cov[sel, 0, 2],
        "cov_x_y": cov[sel, 1, 2],
    }
    for k, r in enumerate(cfg.aperture_radii_fwhm):
        extra[f"flux_aper_{r:g}"] = ap_flux[:, k]
        extra[f"flux_aper_{r:g}_err"] = ap_err[:, k]
    if frame.wcs is not None and sel.size:
        try:
            ra, dec = frame.wcs.all_pix2world(stars.x[sel], stars.y[sel], 0)
            extra["ra"], extra["dec"] = np.asarray(ra), np.asarray(dec)
        except Exception:  # a WCS that cannot be inverted leaves ra/dec out
            pass
    meta = {
        "backend": "phot_python",
        "psf": psf.describe() if psf is not None else {},
        "aperture_radii_px": [round(float(r), 3) for r in radii],
        "annulus_px": [round(float(a), 3) for a in annulus],
        "aperture_correction": apcorr,
        "flux_calibration": calib,
        "gain": ctx.gain, "gain_known": ctx.gain_known,
        "sky_rms_median": round(ctx.bg.global_rms, 4),
        "noise_scale_vs_sep": round(ctx.bg.noise_scale, 4),
        "report": report, **ctx.notes,
    }
    table = SourceTable.build(stars.x[sel], stars.y[sel], flux[sel], ferr[sel],
                              flags[sel], meta=meta, **extra)
    from astropy import units as u
    for name, unit in (("x", u.pix), ("y", u.pix), ("x_err", u.pix), ("y_err", u.pix),
                       ("flux", u.adu), ("flux_err", u.adu), ("mag", u.mag),
                       ("mag_err", u.mag), ("sky", u.adu), ("sky_annulus", u.adu),
                       ("fwhm", u.pix), ("nn_dist", u.pix)):
        table[name].unit = unit
    table["x"].description = "0-based column of the PSF centre"
    table["y"].description = "0-based row of the PSF centre"
    table["flux"].description = "PSF-fit total flux (ADU, sky subtracted)"
    table["mag"].description = "instrumental -2.5 log10(flux)"
    table["sharpness"].description = "fractional width excess over the PSF"
    return table
