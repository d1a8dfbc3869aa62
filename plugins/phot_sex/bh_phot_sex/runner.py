"""Run SExtractor and PSFEx in a private working folder and read what they write."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning

from bhcore.errors import ExternalToolError
from bhcore.external import run, tail

from .config import write_config

log = logging.getLogger(__name__)

SEXTRACTOR = "source-extractor"
PSFEX = "psfex"
APT = {SEXTRACTOR: "source-extractor", PSFEX: "psfex"}


def write_inputs(frame, workdir: Path) -> tuple[Path, Path | None, Path | None, np.ndarray]:
    """Write the pixels (float32), and a weight and a flag map when pixels are bad.

    Bad pixels are ``frame.mask`` (True = bad) and non-finite values; they get weight
    0 (SExtractor interpolates over them for detection and leaves them out of the
    photometry) and flag 1 (reported per source in IMAFLAGS_ISO). Returns the image,
    weight and flag paths and the boolean bad-pixel array.
    """
    data = np.asarray(frame.data, dtype=np.float64)
    bad = ~np.isfinite(data)
    if frame.mask is not None:
        bad |= np.asarray(frame.mask, dtype=bool)
    pixels = np.array(data, dtype=np.float32)          # a copy: the frame is untouched
    if bad.any():
        good = pixels[~bad]
        pixels[bad] = np.median(good) if good.size else 0.0
    header = _wcs_header(frame)
    image = workdir / "image.fits"
    _write(image, pixels, header)
    weight = flags = None
    if bad.any():
        weight = workdir / "weight.fits"
        _write(weight, (~bad).astype(np.float32), header)
        flags = workdir / "flags.fits"
        _write(flags, bad.astype(np.int16), header)
    return image, weight, flags, bad


def _wcs_header(frame) -> fits.Header:
    """Only the celestial WCS of the frame (its other cards could confuse the engine)."""
    if frame.wcs is None:
        return fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        return frame.wcs.celestial.to_header(relax=True)


def _write(path: Path, data: np.ndarray, header: fits.Header) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=True)


def run_sextractor(image: Path, options: Mapping[str, Any], workdir: Path, name: str,
                   timeout: float) -> Table:
    """One SExtractor pass; returns the LDAC_OBJECTS table (possibly empty)."""
    return read_ldac(run_sextractor_file(image, options, workdir, name, timeout))


def run_sextractor_file(image: Path, options: Mapping[str, Any], workdir: Path, name: str,
                        timeout: float) -> Path:
    """One SExtractor pass; returns the path of the catalogue it wrote."""
    config = write_config(workdir / f"{name}.sex", options)
    catalog = Path(options["CATALOG_NAME"])
    catalog.unlink(missing_ok=True)
    proc = run([SEXTRACTOR, image, "-c", config], cwd=workdir, timeout=timeout,
               apt_package=APT[SEXTRACTOR])
    if not catalog.exists():
        raise ExternalToolError(f"{SEXTRACTOR} wrote no catalogue ({name})",
                                command=[SEXTRACTOR, str(image), "-c", str(config)],
                                returncode=proc.returncode, stderr_tail=tail(proc.stderr))
    return catalog


def read_ldac(path: Path) -> Table:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul["LDAC_OBJECTS"]
            return Table(hdu.data) if hdu.data is not None else Table(
                names=[c.name for c in hdu.columns],
                dtype=[np.float64] * len(hdu.columns))


def run_psfex(catalog: Path, options: Mapping[str, Any], workdir: Path,
              timeout: float) -> tuple[Path | None, dict[str, Any]]:
    """Build the PSF model; returns (path or None when no star was usable, header info)."""
    config = write_config(workdir / "psfex.conf", options)
    psf = workdir / (catalog.stem + ".psf")
    psf.unlink(missing_ok=True)
    proc = run([PSFEX, catalog, "-c", config], cwd=workdir, timeout=timeout,
               apt_package=APT[PSFEX])
    if not psf.exists():
        return None, {"psfex_message": tail(proc.stderr, 3)}
    with fits.open(psf, memmap=False) as hdul:
        header = hdul[1].header
        info = {"psf_accepted": int(header.get("ACCEPTED", 0)),
                "psf_loaded": int(header.get("LOADED", 0)),
                "psf_chi2": float(header.get("CHI2", np.nan)),
                "psf_fwhm_px": float(header.get("PSF_FWHM", np.nan)),
                "psfvar_degrees": int(header.get("POLDEG1", 0))}
    if info["psf_accepted"] <= 0:
        info["psfex_message"] = tail(proc.stderr, 3) or "no star accepted for the PSF"
        return None, info
    return psf, info
