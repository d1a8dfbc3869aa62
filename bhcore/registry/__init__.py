"""The observatory registry: obs.info files in, resolved camera settings out.

``registry/`` at the repository root holds one obs.info per camera (the reviewed
source of truth); ``Registry`` stores them in a database (SQLite by default) and
hands stages an ``ObservatorySettings`` per ONAME.
"""
from __future__ import annotations

from bhcore.registry.db import Registry, builtin_dir, default_home, default_url, make_engine
from bhcore.registry.obsinfo import (ObsInfo, ObsInfoEntry, ObsInfoLine, format_obsinfo,
                                     parse_obsinfo, read_obsinfo, settings_from_obsinfo,
                                     validate_obsinfo, write_obsinfo)
from bhcore.registry.settings import ObservatorySettings

__all__ = [
    "Registry", "builtin_dir", "default_home", "default_url", "make_engine",
    "ObsInfo", "ObsInfoEntry", "ObsInfoLine", "ObservatorySettings", "format_obsinfo",
    "parse_obsinfo", "read_obsinfo", "settings_from_obsinfo", "validate_obsinfo",
    "write_obsinfo",
]
