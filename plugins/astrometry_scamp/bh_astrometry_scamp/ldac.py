"""FITS-LDAC catalogues for SCAMP, and SExtractor runs that make them.

SCAMP reads the image header (size and starting WCS) from the ``LDAC_IMHEAD`` HDU
and the detections from ``LDAC_OBJECTS``; the reference catalogue is an
``LDAC_OBJECTS`` table in degrees (errors in degrees too). SExtractor is 1-based:
the conversion to bhcore's 0-based pixels happens here and nowhere else.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning

from bhcore.external import run

SEX_PARAMS = ("NUMBER", "XWIN_IMAGE", "YWIN_IMAGE", "ERRAWIN_IMAGE", "ERRBWIN_IMAGE",
              "ERRTHETAWIN_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "FLUX_RADIUS", "FLAGS",
              "ELONGATION")
SEX_SHARE = Path("/usr/share/source-extractor")


def imhead_hdu(header: fits.Header) -> tuple[fits.BinTableHDU, bytes]:
    """The ``LDAC_IMHEAD`` HDU (the image header as one string of 80-char cards) and
    the exact bytes of its record."""
    text = header.tostring(sep="", endcard=True, padding=False).encode("ascii")
    record = np.zeros(1, dtype=[("Field Header Card", f"S{len(text)}")])
    record["Field Header Card"][0] = text
    hdu = fits.BinTableHDU(record)
    hdu.header["TDIM1"] = f"(80, {len(text) // 80})"    # as SExtractor writes it
    hdu.header["EXTNAME"] = "LDAC_IMHEAD"
    return hdu, text


def write_ldac(path: Path, objects: Table, image_header: fits.Header | None = None) -> Path:
    """Write an LDAC file (IMHEAD optional, then OBJECTS).

    astropy writes string columns with trailing blanks turned into NULs; the END
    card's blanks matter to SCAMP (it reads past a NUL-padded header and crashes),
    so the IMHEAD record is written back byte for byte afterwards.
    """
    hdus = [fits.PrimaryHDU()]
    raw = None
    if image_header is not None:
        imhead, raw = imhead_hdu(image_header)
        hdus.append(imhead)
    table = fits.BinTableHDU(objects)
    table.header["EXTNAME"] = "LDAC_OBJECTS"
    hdus.append(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        fits.HDUList(hdus).writeto(path, overwrite=True)
    if raw is not None:
        with fits.open(path) as hdul:
            offset = hdul.fileinfo(1)["datLoc"]
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(raw)
    return path


def image_header(shape, wcs=None, extra: dict | None = None) -> fits.Header:
    """A minimal image header (size, WCS, extra cards) for LDAC_IMHEAD and SExtractor."""
    ny, nx = shape
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = -32
    h["NAXIS"] = 2
    h["NAXIS1"] = nx
    h["NAXIS2"] = ny
    if wcs is not None:
        h.update(wcs.to_header(relax=True))
    for key, value in (extra or {}).items():
        h[key] = value
    return h


def reference_ldac(path: Path, ref: Table, mags: np.ndarray, obsdate: float) -> Path:
    """The SCAMP reference catalogue from a bhcore catalogue table."""
    n = len(ref)
    err_mas = np.hypot(np.nan_to_num(np.asarray(ref["ra_err"], float), nan=30.0),
                       np.nan_to_num(np.asarray(ref["dec_err"], float), nan=30.0)) / np.sqrt(2)
    err_deg = np.clip(err_mas, 1.0, None) / 3.6e6
    mags = np.where(np.isfinite(mags), mags, 99.0)
    epochs = np.asarray(ref["epoch"], float) if "epoch" in ref.colnames else np.full(n, obsdate)
    objects = Table({
        "X_WORLD": np.asarray(ref["ra"], float), "Y_WORLD": np.asarray(ref["dec"], float),
        "ERRA_WORLD": err_deg, "ERRB_WORLD": err_deg, "ERRTHETA_WORLD": np.zeros(n, np.float32),
        "MAG": mags.astype(np.float32), "MAGERR": np.full(n, 0.05, np.float32),
        "OBSDATE": np.where(np.isfinite(epochs), epochs, obsdate),
        "FLAGS": np.zeros(n, np.int16)})
    return write_ldac(path, objects)


def sources_ldac(path: Path, sources: Table, header: fits.Header) -> Path:
    """An LDAC detection catalogue from a bhcore SourceTable (0-based -> 1-based)."""
    n = len(sources)
    flux = np.asarray(sources["flux"], float)
    flux_err = np.asarray(sources["flux_err"], float)
    fwhm = np.asarray(sources["fwhm"], float) if "fwhm" in sources.colnames else np.full(n, 3.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where((flux > 0) & np.isfinite(flux_err),
                         fwhm / 2.3548 * flux_err / flux * np.sqrt(2.0), 0.5)
    sigma = np.clip(np.nan_to_num(sigma, nan=0.5), 0.001, 5.0)
    objects = Table({
        "NUMBER": np.arange(1, n + 1, dtype=np.int32),
        "XWIN_IMAGE": np.asarray(sources["x"], float) + 1.0,
        "YWIN_IMAGE": np.asarray(sources["y"], float) + 1.0,
        "ERRAWIN_IMAGE": sigma.astype(np.float32), "ERRBWIN_IMAGE": sigma.astype(np.float32),
        "ERRTHETAWIN_IMAGE": np.zeros(n, np.float32),
        "FLUX_AUTO": flux.astype(np.float32), "FLUXERR_AUTO": flux_err.astype(np.float32),
        "FLAGS": np.asarray(sources["flags"], np.int16) & 0x7fff})
    return write_ldac(path, objects, header)


def run_sextractor(image_path: Path, workdir: Path, *, gain: float | None,
                   saturation: float | None, thresh: float = 5.0, timeout: float = 300.0) -> Path:
    """Detect with SExtractor into ``<workdir>/sex.ldac`` (FITS_LDAC with LDAC_IMHEAD)."""
    params = workdir / "sex.param"
    params.write_text("\n".join(SEX_PARAMS) + "\n")
    catalog = workdir / "sex.ldac"
    conv = SEX_SHARE / "default.conv"
    cmd = ["source-extractor", str(image_path), "-c", str(SEX_SHARE / "default.sex"),
           "-CATALOG_NAME", str(catalog), "-CATALOG_TYPE", "FITS_LDAC",
           "-PARAMETERS_NAME", str(params), "-DETECT_THRESH", f"{thresh:g}",
           "-ANALYSIS_THRESH", f"{thresh:g}", "-DETECT_MINAREA", "5",
           "-FILTER", "Y" if conv.exists() else "N", "-FILTER_NAME", str(conv),
           "-STARNNW_NAME", str(SEX_SHARE / "default.nnw"), "-CHECKIMAGE_TYPE", "NONE",
           "-VERBOSE_TYPE", "QUIET", "-NTHREADS", "1",
           "-GAIN", f"{gain or 0.0:g}", "-SATUR_LEVEL", f"{saturation or 1e9:g}"]
    run(cmd, cwd=workdir, timeout=timeout, apt_package="source-extractor")
    return catalog


def read_objects(path: Path) -> Table:
    """The LDAC_OBJECTS table of an LDAC file."""
    with fits.open(path) as hdul:
        return Table(hdul["LDAC_OBJECTS"].data)
