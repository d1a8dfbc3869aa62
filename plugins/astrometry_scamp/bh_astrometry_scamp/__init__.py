"""bhcore backend 'astrometry_scamp': SExtractor + SCAMP against a local reference catalogue (Gaia DR3, URAT-1, UCAC-4, NOMAD-1, 2MASS).

Not implemented yet: the plugin is installed and discoverable, and says so
clearly instead of returning a fake result.
"""
from __future__ import annotations

from pydantic import BaseModel

from bhcore.errors import NotImplementedYet
from bhcore.hookspecs import hookimpl
from bhcore.plugins import Executable, PluginInfo

NAME = "astrometry_scamp"
__version__ = "0.1.0"


class Settings(BaseModel):
    """Settings accepted by this backend (defaults shown by `bhcore plugins list`)."""


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="astrometry", version=__version__,
        description="SExtractor + SCAMP against a local reference catalogue (Gaia DR3, URAT-1, UCAC-4, NOMAD-1, 2MASS)",
        settings_model=Settings,
        executables=(
            Executable("source-extractor", apt_package="source-extractor", version_args=('--version',)),
            Executable("scamp", apt_package="scamp", version_args=('-v',)),
        ),
        implemented=False,
    )


@hookimpl
def bh_solve_astrometry(frame, sources, settings):
    if settings.get("backend") != NAME:
        return None
    raise NotImplementedYet(f"{NAME}: astrometry is not implemented yet")
