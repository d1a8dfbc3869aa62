"""bhcore backend 'phot_sex': SExtractor aperture/Kron photometry and PSFEx profile photometry.

``mode='psf'`` (default): SExtractor -> PSFEx -> SExtractor with PSF fitting
(``flux`` = FLUX_PSF); ``mode='aperture'``: one SExtractor pass (``flux`` =
FLUX_AUTO). Aperture settings are RADII in pixels (SExtractor's PHOT_APERTURES are
diameters; the plugin converts). Positions are returned 0-based.

Also: ``write_bhtom_catalog(frame, out_path)`` writes the SExtractor ASCII_HEAD
catalogue that BHTOM accepts.
"""
from __future__ import annotations

from bhcore.hookspecs import hookimpl
from bhcore.plugins import Executable, PluginInfo

from .bhtom import write_bhtom_catalog
from .measure import measure
from .settings import Settings

NAME = "phot_sex"
__version__ = "0.1.0"

__all__ = [
    "NAME",
    "Settings",
    "bh_measure_photometry",
    "bh_plugin_info",
    "write_bhtom_catalog",
]


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="photometry", version=__version__,
        description="SExtractor aperture/Kron photometry and PSFEx profile photometry",
        settings_model=Settings,
        executables=(
            Executable("source-extractor", apt_package="source-extractor",
                       version_args=("--version",)),
            Executable("psfex", apt_package="psfex", version_args=("--version",)),
        ),
        implemented=True,
    )


@hookimpl
def bh_measure_photometry(frame, settings):
    if settings.get("backend") != NAME:
        return None
    merged = {**Settings().model_dump(), **dict(settings)}
    return measure(frame, merged, name=NAME, version=__version__)
