"""Run SCAMP against a local reference LDAC and read back its solution and QA.

SCAMP writes the solution as ``<catalogue>.head`` (FITS cards as text; TAN with PV
terms = TPV) and its quality figures into the XML ``Fields`` table. The .head holds
non-ASCII COMMENT cards, so COMMENT/HISTORY lines are dropped before parsing.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from bhcore.errors import AstrometryNotSolved
from bhcore.external import run


@dataclass(frozen=True)
class ScampRun:
    wcs: WCS
    header: fits.Header
    qa: dict


def command(catalog: Path, reference: Path, xml: Path, *, degree: int, position_maxerr: float,
            posangle_maxerr: float, pixscale_maxerr: float, crossid_radius: float) -> list[str]:
    """The SCAMP command line (every option explicit; no configuration file)."""
    return ["scamp", str(catalog), "-c", "/dev/null",
            "-ASTREF_CATALOG", "FILE", "-ASTREFCAT_NAME", str(reference),
            "-ASTREFCENT_KEYS", "X_WORLD,Y_WORLD",
            "-ASTREFERR_KEYS", "ERRA_WORLD,ERRB_WORLD,ERRTHETA_WORLD",
            "-ASTREFMAG_KEY", "MAG", "-ASTREFMAGERR_KEY", "MAGERR",
            "-ASTREFOBSDATE_KEY", "OBSDATE",
            "-MATCH", "Y", "-MATCH_RESOL", "1.0", "-MATCH_FLIPPED", "N",
            "-POSITION_MAXERR", f"{position_maxerr:g}", "-POSANGLE_MAXERR", f"{posangle_maxerr:g}",
            "-PIXSCALE_MAXERR", f"{pixscale_maxerr:g}", "-CROSSID_RADIUS", f"{crossid_radius:g}",
            "-DISTORT_DEGREES", str(int(degree)), "-SOLVE_PHOTOM", "N",
            "-SN_THRESHOLDS", "10.0,50.0", "-FLAGS_MASK", "0x00f0",
            "-CHECKPLOT_TYPE", "NONE", "-CHECKPLOT_DEV", "NULL",
            "-WRITE_XML", "Y", "-XML_NAME", str(xml), "-HEADER_SUFFIX", ".head",
            "-AHEADER_SUFFIX", ".none", "-VERBOSE_TYPE", "QUIET", "-NTHREADS", "1"]


def read_head(path: Path) -> fits.Header:
    """SCAMP's .head as a Header (COMMENT/HISTORY dropped; latin-1 tolerated)."""
    if not path.exists():
        raise AstrometryNotSolved(f"SCAMP wrote no solution ({path.name} missing)")
    text = path.read_bytes().decode("latin-1")
    cards = [line for line in text.splitlines()
             if line.strip() and not line.startswith(("COMMENT", "HISTORY"))]
    header = fits.Header.fromstring("\n".join(cards), sep="\n")
    if any(key.startswith(("PV1_", "PV2_")) for key in header):
        header["CTYPE1"] = "RA---TPV"                     # make the TPV convention explicit
        header["CTYPE2"] = "DEC--TPV"
    return header


def read_xml(path: Path) -> dict:
    """QA numbers of the first field in SCAMP's XML ``Fields`` table."""
    from astropy.io.votable import parse
    if not path.exists():
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vot = parse(str(path))
    for table in vot.iter_tables():
        if table.name == "Fields" and table.array is not None and len(table.array):
            row = table.array[0]
            names = table.array.dtype.names

            def get(key, default=np.nan):
                return row[key] if key in names else default

            sigma = np.atleast_1d(np.asarray(get("AstromSigma_Reference_HighSN"), float))
            sigma_all = np.atleast_1d(np.asarray(get("AstromSigma_Reference"), float))
            return {
                "xy_contrast": float(get("XY_Contrast")),
                "as_contrast": float(get("AS_Contrast")),
                "n_reference": int(get("NDeg_Reference", 0)),
                "n_reference_highsn": int(get("NDeg_Reference_HighSN", 0)),
                "sigma_arcsec": [float(v) for v in sigma_all],
                "sigma_highsn_arcsec": [float(v) for v in sigma],
                "chi2_reference": float(get("Chi2_Reference")),
                "chi2_reference_highsn": float(get("Chi2_Reference_HighSN")),
                "dx_arcsec": float(get("DX")) * 3600.0 if np.isfinite(get("DX")) else np.nan,
                "dy_arcsec": float(get("DY")) * 3600.0 if np.isfinite(get("DY")) else np.nan,
                "dposangle_deg": float(get("DPosAngle")),
                "dpixelscale": float(get("DPixelScale")),
            }
    return {}


def solve(catalog: Path, reference: Path, workdir: Path, *, degree: int, position_maxerr: float,
          posangle_maxerr: float, pixscale_maxerr: float, crossid_radius: float,
          timeout: float) -> ScampRun:
    """One SCAMP run; the caller judges the result (SCAMP exits 0 on wrong matches too)."""
    xml = workdir / f"scamp_d{degree}.xml"
    head = catalog.with_suffix(".head")
    head.unlink(missing_ok=True)
    run(command(catalog, reference, xml, degree=degree, position_maxerr=position_maxerr,
                posangle_maxerr=posangle_maxerr, pixscale_maxerr=pixscale_maxerr,
                crossid_radius=crossid_radius), cwd=workdir, timeout=timeout,
        apt_package="scamp")
    header = read_head(head)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        wcs = WCS(header)
    return ScampRun(wcs=wcs, header=header, qa=read_xml(xml))
