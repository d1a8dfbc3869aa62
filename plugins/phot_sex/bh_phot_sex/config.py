"""Write SExtractor and PSFEx configuration for one run from the resolved settings.

Every keyword the plugin relies on is written explicitly (nothing is left to the
defaults of a particular SExtractor build), camera values come from the pipeline's
common keys, and ``sextractor_overrides`` / ``psfex_overrides`` are applied last.
File names in the configuration are absolute paths (SExtractor resolves
``FILTER_NAME`` and ``STARNNW_NAME`` against the working folder otherwise).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bhcore.errors import SettingsError

SHARE = Path("/usr/share/source-extractor")
NO_KEYWORD = "BH_NOKEY"        # header keyword that never exists: config values rule
UNKNOWN_SATURATION = 1.0e20    # nothing is flagged saturated when the level is unknown

#: Output parameters every pass writes (the table is built from these).
BASE_PARAMS = (
    "NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE",
    "ERRAWIN_IMAGE", "ERRBWIN_IMAGE", "ERRTHETAWIN_IMAGE",
    "FLUX_AUTO", "FLUXERR_AUTO", "MAG_AUTO", "MAGERR_AUTO", "KRON_RADIUS",
    "FLUX_RADIUS", "FWHM_IMAGE", "ELONGATION", "ELLIPTICITY", "SNR_WIN",
    "CLASS_STAR", "BACKGROUND", "FLAGS", "FLAGS_WIN",
)
APER_PARAMS = ("FLUX_APER", "FLUXERR_APER", "MAG_APER", "MAGERR_APER")
FLAG_MAP_PARAMS = ("IMAFLAGS_ISO", "NIMAFLAGS_ISO")
PSF_PARAMS = ("XPSF_IMAGE", "YPSF_IMAGE", "FLUX_PSF", "FLUXERR_PSF", "MAG_PSF",
              "MAGERR_PSF", "NITER_PSF", "CHI2_PSF")
#: What the FWHM probe (pass 0) needs.
PROBE_PARAMS = ("NUMBER", "FWHM_IMAGE", "FLAGS", "SNR_WIN", "ELONGATION")

_PARAM_RE = re.compile(r"^([A-Z][A-Z0-9_]*)(\(\s*\d+(\s*,\s*\d+)*\s*\))?$")


def param_base(name: str) -> str:
    """``'FLUX_RADIUS(3)'`` -> ``'FLUX_RADIUS'``."""
    return name.split("(", 1)[0].strip().upper()


def check_param(name: str) -> str:
    text = name.strip().upper()
    if not _PARAM_RE.match(text):
        raise SettingsError(f"phot_sex: '{name}' is not a SExtractor output parameter")
    return text


def output_params(*, n_apertures: int, psf: bool, vignet: int | None, flag_map: bool,
                  extra: Iterable[str] = ()) -> list[str]:
    """The parameter list of one pass; ``extra`` entries replace same-named base ones."""
    extra = [check_param(p) for p in extra]
    replaced = {param_base(p) for p in extra}
    params: list[str] = []
    for name in BASE_PARAMS:
        if name not in replaced:
            params.append(name)
    for name in APER_PARAMS:
        if name not in replaced:
            params.append(f"{name}({n_apertures})")
    if flag_map:
        params += [p for p in FLAG_MAP_PARAMS if p not in replaced]
    if psf:
        params += [p for p in PSF_PARAMS if p not in replaced]
    if vignet:
        params.append(f"VIGNET({vignet},{vignet})")
    seen = set(params)
    params += [p for p in extra if p not in seen]
    return params


def write_params(path: Path, params: Iterable[str]) -> Path:
    path.write_text("\n".join(params) + "\n")
    return path


def resolve_filter(name: str) -> Path:
    """An absolute path for FILTER_NAME (bare names live in /usr/share/source-extractor)."""
    path = Path(name)
    if not path.is_absolute():
        path = SHARE / name
    if not path.is_file():
        raise SettingsError(f"phot_sex: filter file {path} does not exist")
    return path


def fmt(value: Any) -> str:
    """A SExtractor/PSFEx configuration value as text."""
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, (list, tuple)):
        return ",".join(fmt(v) for v in value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "0"
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise SettingsError(f"configuration value {text!r} must be non-empty without spaces")
    return text


def write_config(path: Path, options: Mapping[str, Any]) -> Path:
    """A configuration file of ``KEY value`` lines (later keys win)."""
    lines = [f"{key.upper():<18} {fmt(value)}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def merge_overrides(options: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(options)
    for key, value in overrides.items():
        merged[str(key).upper()] = value
    return merged


def sextractor_options(settings: Mapping[str, Any], *, catalog: Path, params: Path,
                       fwhm_px: float | None, diameters: list[float],
                       weight: Path | None = None, flags: Path | None = None,
                       psf: Path | None = None, check: tuple[str, Path] | None = None,
                       n_pixels: int = 0) -> dict[str, Any]:
    """Every SExtractor keyword of one pass, then the raw overrides."""
    scale = float(settings.get("pixel_scale_arcsec") or 1.0)
    gain = float(settings.get("gain") or 0.0)
    saturation = settings.get("saturation")
    detect = float(settings["detect_thresh"])
    analysis = settings.get("analysis_thresh") or detect
    opts: dict[str, Any] = {
        "CATALOG_NAME": catalog, "CATALOG_TYPE": "FITS_LDAC", "PARAMETERS_NAME": params,
        "DETECT_TYPE": "CCD", "THRESH_TYPE": "RELATIVE",
        "DETECT_MINAREA": int(settings["detect_minarea"]), "DETECT_MAXAREA": 0,
        "DETECT_THRESH": detect, "ANALYSIS_THRESH": float(analysis),
        "FILTER": bool(settings["filter"]),
        "FILTER_NAME": resolve_filter(settings["filter_name"]),
        "DEBLEND_NTHRESH": int(settings["deblend_nthresh"]),
        "DEBLEND_MINCONT": float(settings["deblend_mincont"]),
        "CLEAN": bool(settings["clean"]), "CLEAN_PARAM": float(settings["clean_param"]),
        "MASK_TYPE": "CORRECT",
        "WEIGHT_TYPE": "MAP_WEIGHT" if weight else "NONE",
        "PHOT_APERTURES": [round(d, 4) for d in diameters],
        "PHOT_AUTOPARAMS": [float(settings["kron_factor"]), float(settings["kron_min_radius"])],
        "PHOT_FLUXFRAC": 0.5,
        "SATUR_LEVEL": float(saturation) if saturation else UNKNOWN_SATURATION,
        "SATUR_KEY": NO_KEYWORD, "GAIN": gain, "GAIN_KEY": NO_KEYWORD,
        "MAG_ZEROPOINT": float(settings["zeropoint"]),
        "PIXEL_SCALE": scale,
        "SEEING_FWHM": round(fwhm_px * scale, 4) if fwhm_px else 1.2,
        "STARNNW_NAME": SHARE / "default.nnw",
        "BACK_TYPE": "AUTO", "BACK_SIZE": int(settings["back_size"]),
        "BACK_FILTERSIZE": int(settings["back_filtersize"]),
        "BACKPHOTO_TYPE": settings["backphoto_type"],
        "BACKPHOTO_THICK": int(settings["backphoto_thick"]),
        "CHECKIMAGE_TYPE": check[0] if check else "NONE",
        "MEMORY_OBJSTACK": max(3000, n_pixels // 500),
        "MEMORY_PIXSTACK": max(300000, n_pixels // 4),
        "MEMORY_BUFSIZE": 1024,
        "VERBOSE_TYPE": "QUIET", "WRITE_XML": False, "NTHREADS": 1,
    }
    if weight:
        opts["WEIGHT_IMAGE"] = weight
    if flags:
        opts["FLAG_IMAGE"] = flags
        opts["FLAG_TYPE"] = "OR"
    if check:
        opts["CHECKIMAGE_NAME"] = check[1]
    if psf:
        opts["PSF_NAME"] = psf
        opts["PSF_NMAX"] = int(settings["psf_nmax"])
    return merge_overrides(opts, settings.get("sextractor_overrides") or {})


def psfex_options(settings: Mapping[str, Any], *, psf_size: int, fwhm_px: float,
                  norm_index: int, degrees: int, outdir: Path) -> dict[str, Any]:
    """Every PSFEx keyword of one run, then the raw overrides."""
    opts: dict[str, Any] = {
        "BASIS_TYPE": "PIXEL_AUTO", "BASIS_NUMBER": 20,
        "PSF_SAMPLING": 0.0, "PSF_ACCURACY": 0.01, "PSF_SIZE": [psf_size, psf_size],
        "CENTER_KEYS": ["XWIN_IMAGE", "YWIN_IMAGE"],
        "PHOTFLUX_KEY": f"FLUX_APER({norm_index})",
        "PHOTFLUXERR_KEY": f"FLUXERR_APER({norm_index})",
        "PSFVAR_KEYS": ["X_IMAGE", "Y_IMAGE"], "PSFVAR_GROUPS": [1, 1],
        "PSFVAR_DEGREES": int(degrees),
        "SAMPLE_AUTOSELECT": True, "SAMPLEVAR_TYPE": "SEEING",
        "SAMPLE_FWHMRANGE": [round(max(0.5, 0.5 * fwhm_px), 3), round(3.0 * fwhm_px, 3)],
        "SAMPLE_VARIABILITY": 0.2, "SAMPLE_MINSN": float(settings["psf_min_snr"]),
        "SAMPLE_MAXELLIP": 0.3, "SAMPLE_FLAGMASK": "0x00fe",
        "CHECKPLOT_TYPE": "NONE", "CHECKPLOT_DEV": "NULL", "CHECKIMAGE_TYPE": "NONE",
        "OUTCAT_TYPE": "NONE", "PSF_DIR": outdir, "PSF_SUFFIX": ".psf",
        "VERBOSE_TYPE": "QUIET", "WRITE_XML": False, "NTHREADS": 1,
    }
    return merge_overrides(opts, settings.get("psfex_overrides") or {})


def aperture_label(radius: float) -> str:
    """Column suffix of an aperture radius: 3 -> '3', 4.5 -> '4p5'."""
    return f"{radius:g}".replace(".", "p").replace("-", "m")


def psf_size_for(fwhm_px: float, requested: int | None) -> int:
    if requested:
        return int(requested) | 1
    size = math.ceil(8.0 * fwhm_px)
    return min(max(size, 25), 101) | 1


def psfvar_degrees_for(requested: int, n_candidates: int) -> int:
    """Lower PSFVAR_DEGREES until there are ~8 candidate stars per coefficient."""
    degree = int(requested)
    while degree > 0 and n_candidates < 8 * (degree + 1) * (degree + 2) // 2:
        degree -= 1
    return degree
