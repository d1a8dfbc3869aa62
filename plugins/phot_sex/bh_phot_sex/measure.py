"""The SExtractor (+ PSFEx + SExtractor) photometry of one frame.

mode 'aperture': one SExtractor pass (FLUX_AUTO, FLUX_APER, windowed positions).
mode 'psf':      pass 0 measures the FWHM when it is not given (skipped otherwise);
                 pass 1 adds a large normalisation aperture and VIGNETs to a FITS_LDAC
                 catalogue; PSFEx builds a (spatially varying) PSF normalised to that
                 aperture; pass 2 fits it (PSF_NMAX stars together) -> FLUX_PSF.
                 When no PSF can be built (too few stars) the table falls back to
                 FLUX_AUTO and says so in ``meta['flux_type']`` and ``meta['psf_fallback']``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from bhcore.errors import BhError, PhotometryError
from bhcore.external import private_workdir
from bhcore.frame import file_stem, write_residual
from bhcore.tables import SourceTable

from . import config as cfg
from .parse import build_table
from .runner import run_psfex, run_sextractor, write_inputs

log = logging.getLogger(__name__)

DEFAULT_FWHM_PX = 3.0


def measure(frame, settings: Mapping[str, Any], *, name: str, version: str) -> SourceTable:
    radii = list(settings["aperture_radii"])
    mode = settings["mode"]
    timeout = float(settings["timeout"])
    meta: dict[str, Any] = {"backend": name, "backend_version": version, "mode": mode,
                            "aperture_radii_px": radii, "zeropoint": settings["zeropoint"],
                            "gain": float(settings.get("gain") or 0.0)}   # 0: no photon term
    if frame.data.ndim != 2 or frame.data.size == 0:
        raise PhotometryError("frame has no 2-D pixel data", path=frame.path, backend=name)
    with private_workdir(prefix="bh-phot-sex-") as work:
        image, weight, flags, bad = write_inputs(frame, work)
        bad_or_none = bad if bad.any() else None
        common = {"weight": weight, "flags": flags, "n_pixels": int(frame.data.size)}
        extra = list(settings.get("param_list") or [])
        fwhm = settings.get("fwhm")

        if mode == "psf" and not fwhm:
            fwhm, n_probe = _probe_fwhm(image, settings, work, common, timeout)
            meta["fwhm_source"] = "measured"
            if n_probe == 0:
                meta["flux_type"] = "psf"
                return _finish(SourceTable.empty(meta=meta), frame, settings)
        elif fwhm:
            meta["fwhm_source"] = "settings"
        meta["fwhm_px"] = float(fwhm) if fwhm else None

        if mode == "aperture":
            table = _single_pass(image, settings, work, common, radii, extra, fwhm,
                                 bad_or_none, frame, meta, timeout, "aperture")
            return _finish(table, frame, settings)

        norm_radius = float(settings.get("psf_norm_radius") or 3.0 * fwhm)
        diameters = [2 * r for r in radii] + [2 * norm_radius]
        size = cfg.psf_size_for(fwhm, settings.get("psf_size"))
        params1 = cfg.output_params(n_apertures=len(diameters), psf=False, vignet=size,
                                    flag_map=flags is not None, extra=extra)
        cat1 = work / "pass1.ldac"
        opts1 = cfg.sextractor_options(
            settings, catalog=cat1, params=cfg.write_params(work / "pass1.param", params1),
            fwhm_px=fwhm, diameters=diameters, **common)
        pass1 = run_sextractor(image, opts1, work, "pass1", timeout)
        meta.update(psf_norm_radius_px=norm_radius, psf_size_px=size)
        if len(pass1) == 0:
            meta["flux_type"] = "psf"
            return _finish(SourceTable.empty(meta=meta), frame, settings)

        n_cand = _psf_candidates(pass1, float(settings["psf_min_snr"]))
        degrees = cfg.psfvar_degrees_for(int(settings["psfvar_degrees"]), n_cand)
        psf_path, info = None, {"psfex_message": f"only {n_cand} PSF candidate stars"}
        if n_cand >= 3:
            popts = cfg.psfex_options(settings, psf_size=size, fwhm_px=fwhm,
                                      norm_index=len(diameters), degrees=degrees,
                                      outdir=work)
            psf_path, info = run_psfex(cat1, popts, work, timeout)
        meta.update({k: v for k, v in info.items() if k != "psfex_message"})
        meta["psf_candidates"] = n_cand
        if psf_path is None:
            reason = info.get("psfex_message") or "PSFEx built no PSF"
            log.warning("%s: no PSF model (%s); using FLUX_AUTO", frame.name, reason)
            meta["psf_fallback"] = reason
            table = build_table(pass1, radii=radii, psf=False,
                                extra_params=extra,
                                bad=bad_or_none, mask_radius=_mask_radius(fwhm),
                                wcs=frame.wcs, meta={**meta, "flux_type": "auto"})
            return _finish(table, frame, settings)

        products = settings.get("products_dir")
        residual = work / "residual.fits" if products else None
        params2 = cfg.output_params(n_apertures=len(diameters), psf=True, vignet=None,
                                    flag_map=flags is not None, extra=extra)
        param_file = cfg.write_params(work / "pass2.param", params2)
        opts2 = cfg.sextractor_options(
            settings, catalog=work / "pass2.ldac", params=param_file, fwhm_px=fwhm,
            diameters=diameters, psf=psf_path,
            check=("-MODELS", residual) if residual else None, **common)
        pass2 = run_sextractor(image, opts2, work, "pass2", timeout)
        if int(settings["psf_nmax"]) > 1 and settings.get("psf_nmax_blends_only", True):
            single = {**settings, "psf_nmax": 1}
            opts3 = cfg.sextractor_options(
                single, catalog=work / "pass2s.ldac", params=param_file, fwhm_px=fwhm,
                diameters=diameters, psf=psf_path, **common)
            pass2 = _isolated_from_single(pass2, run_sextractor(image, opts3, work,
                                                                "pass2s", timeout))
            meta["psf_nmax_applied_to"] = "blends"
        meta["flux_type"] = "psf"
        table = build_table(pass2, radii=radii, psf=True,
                            extra_params=extra, bad=bad_or_none,
                            mask_radius=_mask_radius(fwhm), wcs=frame.wcs, meta=meta)
        if residual is not None and residual.exists():
            table.meta["residual_image"] = str(write_residual(
                frame, fits.getdata(residual).astype(np.float64), products,
                "phot_sex: PSF-fitted stars subtracted (SExtractor check image)"))
        return _finish(table, frame, settings)


def _isolated_from_single(multi, single):
    """Combine the PSF_NMAX > 1 pass with the PSF_NMAX = 1 pass.

    With PSF_NMAX > 1 SExtractor writes one row per fitted component (a detection
    split into several stars gives several rows with the same isophotal X_IMAGE,
    Y_IMAGE). For a detection that stays one star and is not flagged as blended
    (FLAGS 1|2), the flux of its trial multi-component fit is kept even when the
    extra component is rejected, which roughly doubles the flux error: those rows
    take their PSF columns from the single-PSF pass. Blends keep the joint fit.
    """
    def keys(cat):
        return list(zip(np.asarray(cat["X_IMAGE"], dtype=float).tolist(),
                        np.asarray(cat["Y_IMAGE"], dtype=float).tolist()))

    multi_keys = keys(multi)
    counts: dict[tuple[float, float], int] = {}
    for key in multi_keys:
        counts[key] = counts.get(key, 0) + 1
    single_index = {key: i for i, key in enumerate(keys(single))}
    blended = (np.asarray(multi["FLAGS"]) & 3) != 0
    out = multi.copy()
    replaced = 0
    for row, key in enumerate(multi_keys):
        j = single_index.get(key)
        if j is None or counts[key] > 1 or blended[row]:
            continue
        for name in cfg.PSF_PARAMS:
            if name in out.colnames and name in single.colnames:
                out[name][row] = single[name][j]
        replaced += 1
    log.debug("%d of %d sources took the single-PSF fit", replaced, len(out))
    return out


def _single_pass(image, settings, work, common, radii, extra, fwhm, bad, frame, meta,
                 timeout, name):
    diameters = [2 * r for r in radii]
    params = cfg.output_params(n_apertures=len(diameters), psf=False, vignet=None,
                               flag_map=common["flags"] is not None, extra=extra)
    opts = cfg.sextractor_options(
        settings, catalog=work / f"{name}.ldac",
        params=cfg.write_params(work / f"{name}.param", params), fwhm_px=fwhm,
        diameters=diameters, **common)
    cat = run_sextractor(image, opts, work, name, timeout)
    if fwhm is None and len(cat):
        fwhm = _median_fwhm(cat) or None
        meta["fwhm_px"] = fwhm
        meta["fwhm_source"] = "measured" if fwhm else None
    meta["flux_type"] = "auto"
    return build_table(cat, radii=radii, psf=False,
                       extra_params=extra, bad=bad,
                       mask_radius=_mask_radius(fwhm or DEFAULT_FWHM_PX),
                       wcs=frame.wcs, meta=meta)


def _probe_fwhm(image, settings, work, common, timeout) -> tuple[float, int]:
    """Pass 0: a quick detection run whose point sources give the FWHM (px)."""
    params = cfg.write_params(work / "probe.param", cfg.PROBE_PARAMS)
    opts = cfg.sextractor_options(settings, catalog=work / "probe.ldac", params=params,
                                  fwhm_px=None, diameters=[10.0], **common)
    cat = run_sextractor(image, opts, work, "probe", timeout)
    return (_median_fwhm(cat) or DEFAULT_FWHM_PX), len(cat)


def _median_fwhm(cat) -> float | None:
    if len(cat) == 0:
        return None
    fwhm = np.asarray(cat["FWHM_IMAGE"], dtype=float)
    good = ((np.asarray(cat["FLAGS"]) == 0) & (np.asarray(cat["SNR_WIN"]) > 30)
            & (np.asarray(cat["ELONGATION"]) < 1.3) & (fwhm > 0.5))
    if good.sum() < 3:
        good = (fwhm > 0.5) & (np.asarray(cat["FLAGS"]) & 4 == 0)
    if not good.any():
        return None
    # point sources are the compact end of the distribution
    values = np.sort(fwhm[good])
    core = values[: max(3, int(np.ceil(0.7 * len(values))))]
    return float(np.median(core))


def _psf_candidates(cat, min_snr: float) -> int:
    good = ((np.asarray(cat["FLAGS"]) & 0xFE) == 0) & (np.asarray(cat["SNR_WIN"]) > min_snr) \
        & (np.asarray(cat["ELONGATION"]) < 1.0 / 0.7)
    return int(good.sum())


def _mask_radius(fwhm: float) -> float:
    return max(2.0 * float(fwhm), 3.0)


def _finish(table: SourceTable, frame, settings) -> SourceTable:
    table.meta["n_sources"] = len(table)
    products = settings.get("products_dir")
    if products and settings.get("write_bhtom_catalog") and frame.wcs is not None:
        from .bhtom import write_bhtom_catalog
        try:
            out = write_bhtom_catalog(frame, Path(products) / f"{file_stem(frame.path)}.cat",
                                      settings=settings)
            table.meta["bhtom_catalog"] = str(out)
        except BhError as exc:
            log.warning("%s: BHTOM catalogue not written: %s", frame.name, exc)
    return table.check()
