"""bhcore backend 'phot_daophot': IRAF DAOPHOT daofind/phot/psf/allstar, headless through irafcl.

Every DAOPHOT parameter is set from the settings and the camera values (gain in
e/ADU -> ``epadu``, read noise converted to electrons, saturation -> ``datamax``);
the sky noise and FWHM are measured on the frame unless given. ALLSTAR magnitudes
become fluxes with the zero point set (``flux = 10**(-0.4 (mag - zmag))``);
positions are returned 0-based. With ``products_dir`` the ALLSTAR residual image is
kept as ``<stem>_residual.fits`` (``meta['residual_image']``).

Also: ``run_iraf_task(task_lines, frame_path, timeout)`` runs any IRAF CL task lines
on a copy of a frame with an isolated HOME and a checked log.
"""
from __future__ import annotations

from bhcore.hookspecs import hookimpl
from bhcore.plugins import Executable, PluginInfo

from .iraf import run_iraf_task
from .measure import measure
from .settings import Settings

NAME = "phot_daophot"
__version__ = "0.1.0"

__all__ = ["NAME", "Settings", "bh_measure_photometry", "bh_plugin_info", "run_iraf_task"]


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="photometry", version=__version__,
        description="IRAF DAOPHOT daofind/phot/psf/allstar run headless through irafcl",
        settings_model=Settings,
        executables=(
            Executable("irafcl", apt_package="iraf", version_args=()),
        ),
        implemented=True,
    )


@hookimpl
def bh_measure_photometry(frame, settings):
    if settings.get("backend") != NAME:
        return None
    merged = {**Settings().model_dump(), **dict(settings)}
    return measure(frame, merged, name=NAME, version=__version__)
