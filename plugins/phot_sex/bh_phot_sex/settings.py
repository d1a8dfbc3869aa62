"""Settings of the ``phot_sex`` backend (SExtractor + PSFEx).

Camera values (``gain`` e/ADU, ``read_noise_adu``, ``saturation`` ADU,
``pixel_scale_arcsec``) are not fields here: the pipeline passes them beside these
settings, and the plugin writes them into SExtractor's GAIN, SATUR_LEVEL and
PIXEL_SCALE. ``sextractor_overrides`` is applied last, so it can set any
SExtractor keyword (a whole configuration can be reproduced through it).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bhcore.plugins import ApertureRadii


class Settings(BaseModel):
    """Settings accepted by ``phot_sex`` (defaults shown by ``bhcore plugins list``)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["psf", "aperture"] = Field(
        "psf", description="'psf': SExtractor -> PSFEx -> SExtractor with PSF fitting; "
        "flux = FLUX_PSF. 'aperture': one SExtractor pass; flux = FLUX_AUTO.")
    aperture_radii: ApertureRadii = Field(
        [3.0, 5.0, 8.0], description="circular aperture RADII in pixels (SExtractor's "
        "PHOT_APERTURES takes diameters: the plugin doubles these). Columns "
        "mag_aper_<r>, e.g. mag_aper_4p5 for r = 4.5 px.")
    fwhm: float | None = Field(
        None, gt=0, description="stellar FWHM in pixels; None = measured on the frame "
        "(median FWHM_IMAGE of bright point sources from the first pass)")
    detect_thresh: float = Field(2.0, gt=0, description="DETECT_THRESH, sigma per pixel")
    analysis_thresh: float | None = Field(
        None, gt=0, description="ANALYSIS_THRESH; None = same as detect_thresh")
    detect_minarea: int = Field(5, ge=1, description="DETECT_MINAREA, pixels")
    filter: bool = Field(True, description="FILTER: smooth before detection")
    filter_name: str = Field(
        "default.conv", description="FILTER_NAME; a bare name is looked up in "
        "/usr/share/source-extractor/")
    deblend_nthresh: int = Field(32, ge=1, description="DEBLEND_NTHRESH")
    deblend_mincont: float = Field(0.005, ge=0, le=1, description="DEBLEND_MINCONT")
    clean: bool = Field(True, description="CLEAN spurious detections near bright ones")
    clean_param: float = Field(1.0, gt=0, description="CLEAN_PARAM")
    back_size: int = Field(64, ge=4, description="BACK_SIZE, pixels")
    back_filtersize: int = Field(3, ge=1, description="BACK_FILTERSIZE")
    backphoto_type: Literal["GLOBAL", "LOCAL"] = Field("GLOBAL", description="BACKPHOTO_TYPE")
    backphoto_thick: int = Field(24, ge=1, description="BACKPHOTO_THICK (LOCAL only)")
    kron_factor: float = Field(2.5, gt=0, description="PHOT_AUTOPARAMS Kron factor")
    kron_min_radius: float = Field(3.5, ge=0, description="PHOT_AUTOPARAMS minimum radius")
    psf_nmax: int = Field(3, ge=1, le=11, description="PSF_NMAX: stars fitted together "
                          "in a blend")
    psf_nmax_blends_only: bool = Field(
        True, description="fit sources SExtractor did not flag as blended (FLAGS 1/2) "
        "with one PSF (an extra pass): with PSF_NMAX > 1 SExtractor also fits extra "
        "components to isolated stars, which roughly doubles their flux error")
    psfvar_degrees: int = Field(
        2, ge=0, le=4, description="PSFEx PSFVAR_DEGREES (PSF varying across the field); "
        "lowered automatically when there are too few PSF stars")
    psf_size: int | None = Field(
        None, ge=9, description="PSF model and VIGNET size in pixels (odd); None = from FWHM")
    psf_norm_radius: float | None = Field(
        None, gt=0, description="radius (px) of the aperture PSFEx normalises the PSF to "
        "(PHOTFLUX_KEY); None = 3 FWHM. Large, so MAG_PSF is close to a total magnitude")
    psf_min_snr: float = Field(20.0, gt=0, description="PSFEx SAMPLE_MINSN")
    zeropoint: float = Field(25.0, description="MAG_ZEROPOINT of the instrumental magnitudes")
    sextractor_overrides: dict[str, Any] = Field(
        default_factory=dict, description="raw SExtractor keywords applied last to every "
        "pass, e.g. {'MASK_TYPE': 'NONE'}")
    psfex_overrides: dict[str, Any] = Field(
        default_factory=dict, description="raw PSFEx keywords applied last")
    param_list: list[str] = Field(
        default_factory=list, description="extra SExtractor output parameters, kept as "
        "columns 'sex_<NAME>' (e.g. 'FLUX_RADIUS(3)' -> sex_FLUX_RADIUS)")
    write_bhtom_catalog: bool = Field(
        False, description="also write '<stem>.cat' (BHTOM ASCII_HEAD catalogue) into "
        "products_dir when the frame has a WCS")
    timeout: float = Field(600.0, gt=0, description="seconds allowed for each engine run")

    @field_validator("psf_size")
    @classmethod
    def _odd(cls, value: int | None) -> int | None:
        if value is not None and value % 2 == 0:
            value += 1
        return value
