"""bhcore backend 'astrometry_nova': astrometry.net: local solve-field on the source list; the remote service as the last chance.

Not implemented yet: the plugin is installed and discoverable, and says so
clearly instead of returning a fake result.
"""
from __future__ import annotations

from pydantic import BaseModel

from bhcore.errors import NotImplementedYet
from bhcore.hookspecs import hookimpl
from bhcore.plugins import Executable, PluginInfo

NAME = "astrometry_nova"
__version__ = "0.1.0"


class Settings(BaseModel):
    """Settings accepted by this backend (defaults shown by `bhcore plugins list`)."""


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="astrometry", version=__version__,
        description="astrometry.net: local solve-field on the source list; the remote service as the last chance",
        settings_model=Settings,
        executables=(
            Executable("solve-field", apt_package="astrometry.net", version_args=('--version',)),
            Executable("build-astrometry-index", apt_package="astrometry.net", version_args=()),
        ),
        implemented=False,
    )


@hookimpl
def bh_solve_astrometry(frame, sources, settings):
    if settings.get("backend") != NAME:
        return None
    raise NotImplementedYet(f"{NAME}: astrometry is not implemented yet")
