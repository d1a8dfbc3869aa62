"""bhcore backend 'calibrate_builtin': photometric calibration of one frame.

Matches the measured sources to the reference catalogue, chooses the catalogue
band from the frame's filter (or BHTOM's calibration name, ``GaiaSP/any`` by
default), fits a zero point and, when the stars' colours span enough range, a
colour term, by weighted least squares with an intrinsic scatter term and
iterative outlier rejection. It refuses (``CalibrationError``) with fewer than
``min_stars`` stars or an outlier fraction above ``max_outlier_fraction``: BHTOM's
defaults (3 stars, 0.3, catalogue errors <= 0.3 mag). The result also carries the
5-sigma limiting magnitude and the target's magnitude or upper limit.

Re-runs on stored photometry: with ``reference=None`` the reference catalogue is
read from ``reference_path`` (setting, or the source table's meta), and the
filter from the ``filter`` setting or the table's meta.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo

NAME = "calibrate_builtin"
__version__ = "1.0.0"
METHOD_VERSION = f"{NAME}/{__version__} (weighted LSQ + intrinsic scatter, iterative clipping)"


class Settings(BaseModel):
    """Settings of the built-in calibration (BHTOM defaults where BHTOM has one)."""

    bhtom_filter: str = Field("GaiaSP/any", description="BHTOM calibration name: "
                              "GaiaSP/<band|any>, GaiaDR3/<G|GBP|GRP|any>, 2MASS/<J|H|K|any>, no")
    band: str | None = Field(None, description="force one catalogue column (e.g. V, sdss_r)")
    band_map: str | dict = Field("", description="filter -> band, e.g. 'Ha:GaiaSP/R, OIII:V'")
    filter: str | None = Field(None, description="filter name when there is no frame header")
    color: str | None = Field(None, description="colour index for the colour term, e.g. B-V")
    fit_color_term: Literal["auto", "always", "never"] = "auto"
    color_term: float = Field(0.0, description="colour term used when it is not fitted")
    min_color_range: float = Field(0.3, ge=0, description="10-90 % colour span needed, mag")
    min_stars: int = Field(3, ge=1)
    max_outlier_fraction: float = Field(0.3, ge=0, le=1)
    max_catalog_err: float = Field(0.3, gt=0, description="ignore catalogue stars above, mag")
    catalog_err_default: float = Field(0.03, gt=0, description="error of a star without one")
    max_inst_err: float = Field(0.1, gt=0, description="ignore measured stars above, mag "
                                "(S/N < 11 adds noise to the fit, not information)")
    exclude_flags: int = Field(31, ge=0, description="source flag bits that exclude a star")
    bright_limit: float | None = None
    faint_limit: float | None = None
    reject_crowded: bool = True
    clip_sigma: float = Field(3.0, gt=1)
    max_iter: int = Field(20, ge=1)
    match_radius_arcsec: float | None = Field(None, gt=0, description="None: 2 px, 1.5-10\"")
    limit_snr: float = Field(5.0, gt=0, description="S/N of the limiting magnitude")
    target_ra: float | None = None
    target_dec: float | None = None
    reference_path: str | None = Field(None, description="stored reference catalogue "
                                       "(ECSV) for re-runs without a frame")


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="calibration", version=__version__,
        description="Zero point and colour term against a reference catalogue: weighted, "
                    "robust, with intrinsic scatter; limiting magnitude; target or upper limit",
        settings_model=Settings, extra={"method_version": METHOD_VERSION})


@hookimpl
def bh_calibrate_photometry(frame, sources, reference, settings):
    if settings.get("backend") != NAME:
        return None
    from .calibrate import calibrate
    merged = Settings().model_dump()
    merged.update({k: v for k, v in settings.items() if v is not None or k in merged})
    reference = reference if reference is not None else _stored_reference(sources, merged)
    filter_name = merged.get("filter")
    if filter_name is None and frame is not None:
        filter_name = frame.header.get("FILTER")
    if filter_name is None:
        filter_name = sources.meta.get("filter")
    return calibrate(sources, reference, merged, filter_name=filter_name, backend=NAME,
                     version=METHOD_VERSION)


def _stored_reference(sources, settings):
    from pathlib import Path

    from astropy.table import Table

    from bhcore.errors import CalibrationError
    path = settings.get("reference_path") or sources.meta.get("reference_path")
    if not path:
        raise CalibrationError("no reference catalogue: pass one, or set reference_path "
                               "(stored frames keep theirs as <stem>_ref.ecsv)", backend=NAME)
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"reference catalogue {path} does not exist", backend=NAME)
    return Table.read(path, format="ascii.ecsv")


__all__ = ["NAME", "METHOD_VERSION", "Settings", "bh_calibrate_photometry", "bh_plugin_info"]
