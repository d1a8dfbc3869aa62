"""Local astrometry.net: detection with sep, the xylist, solve-field, and its outputs.

solve-field is given our own source list (faster and more accurate than its own
extractor on our frames) and a configuration that names exactly the index folders
to use. Its outputs: ``<base>.wcs`` (a header with the TAN-SIP solution),
``<base>.solved`` (exists when solved) and ``<base>.corr`` (matched stars).
astrometry.net pixels are 1-based; bhcore's are 0-based: converted here.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from bhcore.errors import AstrometryNotSolved
from bhcore.external import run
from bhcore.tables import SourceTable


def detect(frame, thresh: float = 5.0, max_sources: int = 1000) -> SourceTable:
    """Bright sources with sep (windowed centroids), brightest first."""
    import sep
    data = np.ascontiguousarray(frame.data, dtype=np.float64)
    mask = frame.mask if frame.mask is not None else ~np.isfinite(data)
    data = np.where(np.isfinite(data), data, 0.0)
    try:
        bkg = sep.Background(data, mask=mask)
        sub = data - bkg.back()
        objects = sep.extract(sub, thresh, err=bkg.globalrms, mask=mask, minarea=5)
    except Exception as exc:  # sep raises plain Exceptions for buffer overflows etc.
        raise AstrometryNotSolved(f"source detection failed: {exc}", path=frame.path) from None
    objects = objects[(objects["flag"] & sep.OBJ_TRUNC) == 0]   # cut by the image edge
    if len(objects) == 0:
        return SourceTable.empty(meta={"backend": "sep"})
    objects = objects[np.argsort(-objects["flux"])][:max_sources]
    sigma = np.clip(2.0 * np.sqrt(objects["a"] * objects["b"]) / 2.3548, 0.5, 10.0)
    x, y, _flag = sep.winpos(sub, objects["x"], objects["y"], sigma)
    bad = ~np.isfinite(x) | ~np.isfinite(y)
    x, y = np.where(bad, objects["x"], x), np.where(bad, objects["y"], y)
    flux = np.asarray(objects["flux"], float)
    npix = np.asarray(objects["npix"], float)
    flux_err = np.sqrt(np.abs(flux) + npix * bkg.globalrms**2)
    fwhm = 2.3548 * np.sqrt(objects["a"] * objects["b"])
    return SourceTable.build(x, y, flux, flux_err, flags=np.asarray(objects["flag"], int),
                             fwhm=fwhm, meta={"backend": "sep"})


def write_xylist(path: Path, sources, max_sources: int) -> Path:
    """FITS table X, Y (1-based), FLUX, brightest first."""
    flux = np.asarray(sources["flux"], float)
    order = np.argsort(-np.nan_to_num(flux, nan=-np.inf))[:max_sources]
    table = Table({"X": np.asarray(sources["x"], float)[order] + 1.0,
                   "Y": np.asarray(sources["y"], float)[order] + 1.0,
                   "FLUX": flux[order]})
    table.write(path, overwrite=True)
    return path


def write_config(path: Path, index_dirs, index_files=()) -> Path:
    lines = ["inparallel", "cpulimit 300"]
    lines += [f"add_path {d}" for d in index_dirs]
    lines += [f"index {f}" for f in index_files]
    if index_dirs:
        lines.append("autoindex")
    path.write_text("\n".join(lines) + "\n")
    return path


def solve_field(xylist: Path, config: Path, workdir: Path, shape, *, scale_low: float | None,
                scale_high: float | None, center=None, radius_deg: float | None = None,
                tweak_order: int = 2, cpulimit: float = 60.0, odds_to_solve: float | None = None,
                timeout: float = 300.0) -> WCS | None:
    """Run solve-field on an xylist; the WCS, or None when it found no solution."""
    ny, nx = shape
    base = workdir / "solve"
    cmd = ["solve-field", str(xylist), "--config", str(config), "--dir", str(workdir),
           "--out", base.name, "--width", str(nx), "--height", str(ny),
           "--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX",
           "--no-plots", "--overwrite", "--no-verify", "--crpix-center",
           "--tweak-order", str(int(tweak_order)), "--cpulimit", f"{cpulimit:g}",
           "--temp-dir", str(workdir), "--new-fits", "none", "--index-xyls", "none",
           "--rdls", "none", "--axy", str(workdir / "solve.axy")]
    if scale_low and scale_high:
        cmd += ["--scale-units", "arcsecperpix", "--scale-low", f"{scale_low:.6g}",
                "--scale-high", f"{scale_high:.6g}"]
    if center is not None and radius_deg:
        cmd += ["--ra", f"{center.icrs.ra.deg:.6f}", "--dec", f"{center.icrs.dec.deg:.6f}",
                "--radius", f"{radius_deg:.4f}"]
    if odds_to_solve:
        cmd += ["--odds-to-solve", f"{odds_to_solve:g}"]
    run(cmd, cwd=workdir, timeout=timeout, apt_package="astrometry.net")
    if not base.with_suffix(".solved").exists() or not base.with_suffix(".wcs").exists():
        return None
    header = fits.getheader(base.with_suffix(".wcs"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        return WCS(header)


def build_index(catalog_fits: Path, out: Path, preset: int, unique_id: int, workdir: Path,
                timeout: float = 300.0) -> Path:
    """One index file over a small-area catalogue (``-E``) for one quad-size preset."""
    run(["build-astrometry-index", "-i", str(catalog_fits), "-e", "1", "-o", str(out),
         "-P", str(int(preset)), "-S", "MAG", "-A", "RA", "-D", "DEC", "-E", "-M",
         "-j", "0.1", "-I", str(int(unique_id)), "-t", str(workdir)],
        cwd=workdir, timeout=timeout, apt_package="astrometry.net")
    if not out.exists():
        raise AstrometryNotSolved(f"build-astrometry-index wrote no {out.name}")
    return out
