"""Resolved, read-only observatory settings handed to stages and plugins.

Plugins never open the registry: they get an ``ObservatorySettings`` built from an
obs.info entry (``ObsInfo``) plus the backend choice and plugin settings. This
module knows how camera modes (``|`` lists on ``*`` fields) and translation lists
(image type, filters) are resolved against a frame's raw header.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

STAGES = ("header", "astrometry", "photometry", "calibration", "catalog")
TRANSLATED = ("FILTER", "OBSTYPE")
DEFAULT_BACKENDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "astrometry": ("astrometry_scamp", "astrometry_nova"),
    "photometry": ("phot_python",),
    "calibration": ("calibrate_builtin",),
    "catalog": ("gaia", "tycho2_local"),
})


def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


@dataclass(frozen=True)
class ObservatorySettings:
    """One camera's settings; ``obsinfo`` is the parsed obs.info (``ObsInfo``)."""

    oname: str
    obsinfo: Any
    backends: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_BACKENDS)
    plugin_settings: Mapping[str, Any] = field(default_factory=dict)

    # --- site -----------------------------------------------------------------------
    def literal(self, std_keyword: str):
        """The literal value of a line (field 5), or None when it is ``-``/absent."""
        entry = self.obsinfo.get(std_keyword)
        if entry is None or entry.value_is_dash:
            return None
        return entry.value

    @property
    def observatory(self) -> str | None:
        return self.literal("OBSERVAT")

    @property
    def lon_east_deg(self) -> float | None:
        """East-positive longitude in (-180, 180]; obs.info stores West-positive."""
        west = self.literal("LONGITUD")
        if west is None:
            return None
        east = -float(west) % 360.0
        return east - 360.0 if east > 180.0 else east

    @property
    def lat_deg(self) -> float | None:
        value = self.literal("LATITUDE")
        return None if value is None else float(value)

    @property
    def alt_m(self) -> float | None:
        value = self.literal("ALTITUDE")
        return None if value is None else float(value)

    # --- camera modes ---------------------------------------------------------------
    def mode_index(self, lookup: Callable[[str], Any] | None = None) -> int:
        """Index of the camera mode, from the READTIME line's raw keyword.

        ``lookup(keyword)`` returns the raw header value or None. Without a lookup,
        or when the keyword is absent or matches no listed mode, mode 0 is used.
        """
        entry = self.obsinfo.get("READTIME")
        if entry is None or lookup is None or entry.raw_keyword is None:
            return 0
        options = entry.mode_values()
        if len(options) < 2:
            return 0
        raw = lookup(entry.raw_keyword)
        if raw is None:
            return 0
        for index, option in enumerate(options):
            if _same_value(raw, option):
                return index
        return 0

    def value(self, std_keyword: str, lookup: Callable[[str], Any] | None = None,
              mode: int | None = None):
        """The value of a standard keyword for a frame.

        A literal in field 5 wins over the raw keyword (it is the maintainer's
        override); ``-`` means "read the raw keyword". Mode-dependent fields pick
        the value of the frame's camera mode. Returns None when nothing is known.
        """
        entry = self.obsinfo.get(std_keyword)
        if entry is None:
            return None
        if not entry.value_is_dash:
            values = entry.mode_values()
            if len(values) > 1:
                index = self.mode_index(lookup) if mode is None else mode
                return values[min(index, len(values) - 1)]
            return values[0] if values else entry.value
        if entry.raw_keyword and lookup is not None:
            return lookup(entry.raw_keyword)
        return None

    @property
    def gain(self) -> float | None:
        v = self.value("GAIN")
        return None if v is None else float(v)

    @property
    def read_noise_adu(self) -> float | None:
        v = self.value("RDNOISE")
        return None if v is None else float(v)

    @property
    def saturation(self) -> float | None:
        v = self.value("SATURATE")
        return None if v is None else float(v)

    # --- translation lists ----------------------------------------------------------
    def translate(self, std_keyword: str, raw_value) -> str | None:
        """Map a raw filter / image-type value to its standard name, or None."""
        entry = self.obsinfo.get(std_keyword)
        if entry is None or raw_value is None:
            return None
        table = entry.translation()
        return table.get(_norm(raw_value))

    def backends_for(self, stage: str) -> tuple[str, ...]:
        return tuple(self.backends.get(stage, DEFAULT_BACKENDS.get(stage, ())))


def _same_value(raw, option: str) -> bool:
    try:
        return abs(float(raw) - float(option)) < 1e-9 * max(1.0, abs(float(option)))
    except (TypeError, ValueError):
        return _norm(raw) == _norm(option)
