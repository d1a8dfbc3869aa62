"""Settings of the ``phot_daophot`` backend (IRAF DAOPHOT through irafcl).

Radii are in pixels (``datapars.scale`` is fixed to 1). Settings named ``*_fwhm``
are multiples of the FWHM. Camera values come from the pipeline beside these
settings: ``gain`` (e/ADU -> ``datapars.epadu``), ``read_noise_adu`` (converted to
electrons for ``datapars.readnoise``), ``saturation`` (ADU -> ``datapars.datamax``).
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bhcore.plugins import ApertureRadii

FUNCTIONS = ("auto", "gauss", "moffat15", "moffat25", "lorentz", "penny1", "penny2")


class Settings(BaseModel):
    """Settings accepted by ``phot_daophot`` (defaults shown by ``bhcore plugins list``)."""

    model_config = ConfigDict(extra="forbid")

    fwhm: float | None = Field(
        None, gt=0, description="datapars.fwhmpsf in pixels; None = measured (Moffat "
        "fits to bright isolated stars)")
    sigma: float | None = Field(
        None, gt=0, description="datapars.sigma (sky noise, ADU); None = measured with sep")
    threshold: float = Field(
        3.0, gt=0, description="findpars.threshold in sigma. 3 finds ~94 % of the stars "
        "with S/N >= 10 on a sparse synthetic frame (4: 85 %); the noise peaks it also "
        "finds are removed by min_snr")
    min_snr: float = Field(
        5.0, ge=0, description="drop sources whose final flux / flux_err is below this, "
        "or whose flux is undefined (0 keeps every source); saturated stars are kept")
    sharplo: float = Field(0.2, description="findpars.sharplo")
    sharphi: float = Field(1.0, description="findpars.sharphi")
    roundlo: float = Field(-1.0, description="findpars.roundlo")
    roundhi: float = Field(1.0, description="findpars.roundhi")
    aperture_radii: ApertureRadii = Field(
        [3.0, 5.0, 8.0], description="photpars aperture RADII in pixels (columns "
        "mag_aper_<r>, e.g. mag_aper_4p5)")
    psf_norm_radius_fwhm: float = Field(
        3.0, gt=0, description="radius of the first photpars aperture, which sets the "
        "PSF (and so the ALLSTAR magnitude) normalisation, in FWHM")
    annulus_fwhm: float = Field(4.0, gt=0, description="fitskypars.annulus, in FWHM")
    dannulus_fwhm: float = Field(3.0, gt=0, description="fitskypars.dannulus, in FWHM")
    sky_algorithm: Literal["mode", "median", "centroid", "mean"] = Field(
        "mode", description="fitskypars.salgorithm")
    cbox_fwhm: float = Field(2.0, gt=0, description="centerpars.cbox, in FWHM (>= 5 px)")
    function: str = Field(
        "moffat25", description="daopars.function: one of auto, gauss, moffat15, "
        "moffat25, lorentz, penny1, penny2, or a comma list of them")
    varorder: int = Field(
        1, ge=-1, le=2, description="daopars.varorder (PSF variation across the field); "
        "lowered automatically when there are too few PSF stars")
    nclean: int = Field(3, ge=0, le=10, description="daopars.nclean (3-6 recommended)")
    psfrad_fwhm: float = Field(4.0, gt=0, description="daopars.psfrad, in FWHM")
    fitrad_fwhm: float = Field(
        1.5, gt=0, description="daopars.fitrad, in FWHM (1.5 measured closer to the "
        "Cramér-Rao bound than 1.0 on isolated stars)")
    max_psf_stars: int = Field(60, ge=3, le=1000, description="pstselect maxnpsf")
    psf_min_snr: float = Field(
        20.0, ge=0, description="PSF stars need at least this S/N in the normalisation "
        "aperture (pstselect takes the brightest stars, noise peaks included, when a "
        "frame has few stars)")
    min_psf_stars: int = Field(
        3, ge=1, description="fewer PSF stars than this: no PSF fit, aperture photometry "
        "in the normalisation aperture instead (meta['psf_fallback'] says so)")
    min_lenuserarea: int = Field(
        400000, ge=28800, description="IRAF min_lenuserarea (room for many PSF stars)")
    maxiter: int = Field(50, ge=1, le=100, description="daopars.maxiter")
    maxgroup: int = Field(60, ge=1, le=100, description="daopars.maxgroup")
    critsnratio: float = Field(1.0, ge=0, description="daopars.critsnratio")
    fitsky: bool = Field(False, description="daopars.fitsky")
    recenter: bool = Field(True, description="daopars.recenter")
    second_pass: bool = Field(
        False, description="after ALLSTAR: find stars on the residual image, add them and "
        "run ALLSTAR again (dense fields)")
    zmag: float = Field(25.0, description="photpars.zmag; flux = 10**(-0.4 (mag - zmag))")
    timeout: float = Field(900.0, gt=0, description="seconds allowed for each irafcl run")

    @field_validator("function")
    @classmethod
    def _function(cls, value: str) -> str:
        names = [v.strip().lower() for v in re.split(r"[,\s]+", value) if v.strip()]
        if not names or any(n not in FUNCTIONS for n in names):
            raise ValueError(f"function must be one or more of {', '.join(FUNCTIONS)}")
        return ",".join(names)
