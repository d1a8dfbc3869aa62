"""bhcore backend 'phot_python': our own PSF photometry of every source, dense fields
included.

Background and noise from sep; matched-filter detection with deblending; an
empirical or analytic (Moffat/Gaussian) PSF that varies smoothly over the frame,
chosen by its residuals; all stars fitted simultaneously (x, y, flux, optionally a
local sky per blend group) with errors from the real noise model; detection again
on the residual image for the stars hidden in blends; aperture photometry with
local sky and the aperture correction; forced photometry at given positions
(:func:`forced_photometry`). The heavy modules are imported only when a frame is
measured, so listing plugins stays fast.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo

NAME = "phot_python"
__version__ = "1.0.0"


class Settings(BaseModel):
    """Settings accepted by this backend (defaults shown by `bhcore plugins list`)."""

    psf_model: Literal["auto", "moffat", "gaussian", "empirical"] = Field(
        "auto", description="PSF family; auto picks the best by residuals")
    psf_degree: int | None = Field(
        None, ge=0, le=4, description="polynomial degree of the PSF's variation over "
                                      "the frame (None: chosen by BIC)")
    max_psf_stars: int = Field(100, ge=5, description="PSF stars at most")
    fwhm: float | None = Field(None, gt=0, description="first guess of the FWHM in px "
                               "(the PSF is measured on the frame anyway)")
    detect_threshold: float = Field(3.5, gt=0, description="matched-filter S/N to detect")
    deblend_cont: float = Field(0.001, gt=0, le=1, description="sep deblending contrast")
    min_snr: float = Field(5.0, ge=0, description="keep fitted stars with flux/err >= this")
    max_passes: int = Field(3, ge=1, le=10, description="detect-fit-subtract passes")
    fit_sky: bool = Field(False, description="fit a constant local sky per blend group")
    fit_radius_fwhm: float = Field(3.0, ge=1.5, le=6, description="largest fit box half-"
                                                                 "size, in FWHM")
    aperture_radii_fwhm: list[float] = Field([1.0, 1.5, 2.0, 3.0],
                                             description="aperture radii, in FWHM")
    annulus_fwhm: list[float] = Field([4.0, 6.0], description="sky annulus, in FWHM")
    background_box: int = Field(64, ge=8, description="sep background mesh, px")
    psf_error_floor: float = Field(0.005, ge=0, description="fraction of a star's light "
                                   "treated as PSF error when detecting in residuals")
    saturation_grow: int = Field(0, ge=0,
                                 description="grow saturated pixels by this many px")
    flux_calibration: Literal["auto", "always", "never"] = Field(
        "auto", description="rescale PSF fluxes to the light in the largest aperture "
        "when the PSF model shares it out wrongly (auto: only when significant)")
    write_residual: bool = Field(True, description="write <stem>_residual.fits to the "
                                                   "products folder when given")


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="photometry", version=__version__,
        description="Pure-Python PSF photometry of every source, dense fields included",
        settings_model=Settings,
        executables=(),
        implemented=True,
    )


@hookimpl
def bh_measure_photometry(frame, settings):
    if settings.get("backend") != NAME:
        return None
    from .api import measure
    return measure(frame, settings)


def forced_photometry(frame, positions, settings=None, **kwargs):
    """PSF fluxes at given pixel (0-based) or sky positions; see :mod:`.forced`."""
    from .forced import forced_photometry as _forced
    return _forced(frame, positions, settings, **kwargs)


__all__ = ["NAME", "Settings", "bh_measure_photometry", "bh_plugin_info",
           "forced_photometry"]
