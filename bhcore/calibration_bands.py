"""Which catalogue band a frame is calibrated to, and BHTOM's names for it.

Why: BHTOM standardises every frame to one survey band chosen by the upload's
``filter`` field (``GaiaSP/V``, ``GaiaDR3/G``, ``2MASS/J``, ``GaiaSP/any`` ...)
or, for ``no``/``GaiaSP/any``, by the observation's own filter. The catalogue
backends name magnitude columns by band (``bh_catalogs.common.MAG_BANDS``: ``G BP
RP U B V R I sdss_u .. sdss_z J H Ks``); this module is the one place that maps a
standard filter name (FILTER card) and BHTOM's names onto those columns, and
picks the colour index used for the colour term.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

# survey -> BHTOM band name -> catalogue column
SURVEYS: Mapping[str, Mapping[str, str]] = {
    "GaiaSP": {"U": "U", "B": "B", "V": "V", "R": "R", "I": "I", "u": "sdss_u",
               "g": "sdss_g", "r": "sdss_r", "i": "sdss_i", "z": "sdss_z"},
    "GaiaDR3": {"G": "G", "GBP": "BP", "GRP": "RP"},
    "2MASS": {"J": "J", "H": "H", "K": "Ks"},
    "Tycho2": {"VT": "VT"},     # the offline catalogue: a last resort, never BHTOM's choice
}
GROUPS = {"UBVRI": ("U", "B", "V", "R", "I"), "ugriz": ("u", "g", "r", "i", "z")}
DEFAULT_BHTOM_FILTER = "GaiaSP/any"

# Standard (obs.info) filter names -> BHTOM band of a survey. Case matters for the
# one-letter names (R is Cousins, r is Sloan); the rest is matched case-blind.
_EXACT = {"U": "GaiaSP/U", "B": "GaiaSP/B", "V": "GaiaSP/V", "R": "GaiaSP/R",
          "I": "GaiaSP/I", "u": "GaiaSP/u", "g": "GaiaSP/g", "r": "GaiaSP/r",
          "i": "GaiaSP/i", "z": "GaiaSP/z", "G": "GaiaDR3/G", "J": "2MASS/J",
          "H": "2MASS/H", "K": "2MASS/K", "Ks": "2MASS/K"}
_FOLDED = {
    "rc": "GaiaSP/R", "ic": "GaiaSP/I", "cousins r": "GaiaSP/R", "cousins i": "GaiaSP/I",
    "johnson u": "GaiaSP/U", "johnson b": "GaiaSP/B", "johnson v": "GaiaSP/V",
    "bessell b": "GaiaSP/B", "bessell v": "GaiaSP/V", "bessell r": "GaiaSP/R",
    "bessell i": "GaiaSP/I",
    "u'": "GaiaSP/u", "g'": "GaiaSP/g", "r'": "GaiaSP/r", "i'": "GaiaSP/i", "z'": "GaiaSP/z",
    # LCO-style names of the Sloan filters (rp is r', not Gaia RP)
    "up": "GaiaSP/u", "gp": "GaiaSP/g", "rp": "GaiaSP/r", "ip": "GaiaSP/i", "zp": "GaiaSP/z",
    "zs": "GaiaSP/z",
    "sdss u": "GaiaSP/u", "sdss g": "GaiaSP/g", "sdss r": "GaiaSP/r", "sdss i": "GaiaSP/i",
    "sdss z": "GaiaSP/z", "sdss_u": "GaiaSP/u", "sdss_g": "GaiaSP/g", "sdss_r": "GaiaSP/r",
    "sdss_i": "GaiaSP/i", "sdss_z": "GaiaSP/z", "sloan g": "GaiaSP/g", "sloan r": "GaiaSP/r",
    "sloan i": "GaiaSP/i", "sloan z": "GaiaSP/z", "sloan u": "GaiaSP/u",
    "ks": "2MASS/K", "k": "2MASS/K", "gaia g": "GaiaDR3/G", "bp": "GaiaDR3/GBP",
    "gbp": "GaiaDR3/GBP", "grp": "GaiaDR3/GRP",
}
# Unfiltered and broad luminance filters are closest to Gaia G (BHTOM's choice).
CLEAR_NAMES = {"clear", "c", "cl", "open", "none", "no", "unfiltered", "empty", "l", "lum",
               "luminance", "w", "white", "cv", "cr", "cbb", "", "-", "free", "air"}

# Colour index for the colour term of each catalogue column: (blue, red) columns,
# in order of preference. Gaia BP-RP exists for nearly every calibration star.
COLOURS = {
    "U": (("U", "B"), ("BP", "RP")), "B": (("B", "V"), ("BP", "RP")),
    "V": (("B", "V"), ("BP", "RP")), "R": (("V", "R"), ("BP", "RP")),
    "I": (("R", "I"), ("BP", "RP")), "sdss_u": (("sdss_u", "sdss_g"), ("BP", "RP")),
    "sdss_g": (("sdss_g", "sdss_r"), ("BP", "RP")), "sdss_r": (("sdss_g", "sdss_r"), ("BP", "RP")),
    "sdss_i": (("sdss_r", "sdss_i"), ("BP", "RP")), "sdss_z": (("sdss_i", "sdss_z"), ("BP", "RP")),
    "G": (("BP", "RP"),), "BP": (("BP", "RP"),), "RP": (("BP", "RP"),),
    "J": (("J", "Ks"),), "H": (("J", "Ks"),), "Ks": (("J", "Ks"),),
}


# When the catalogue lacks a filter's own band: the nearest bands, in order.
NEAREST = {
    "U": ("sdss_u", "B", "G"), "B": ("sdss_g", "V", "G"), "V": ("sdss_g", "G", "sdss_r"),
    "R": ("sdss_r", "V", "sdss_i", "G"), "I": ("sdss_i", "R", "sdss_z", "G"),
    "sdss_u": ("U", "B", "G"), "sdss_g": ("B", "V", "G"), "sdss_r": ("R", "V", "G"),
    "sdss_i": ("I", "sdss_z", "G"), "sdss_z": ("I", "sdss_i", "G"),
    "G": ("V", "sdss_g", "sdss_r"), "BP": ("G",), "RP": ("G",), "J": (), "H": (), "Ks": (),
}
# Offline, with no survey band at all, these stand in (Tycho VT is close to V).
LAST_RESORT = {"U": ("VT",), "B": ("VT",), "V": ("VT",), "R": ("VT",), "G": ("VT",),
               "sdss_g": ("VT",), "sdss_r": ("VT",), "BP": ("VT",)}


def bhtom_of(column: str) -> str | None:
    """The BHTOM name (``GaiaSP/r`` ...) of a catalogue column, or None."""
    for survey, names in SURVEYS.items():
        for band, col in names.items():
            if col == column:
                return f"{survey}/{band}"
    return None


@dataclass(frozen=True)
class BandChoice:
    """One candidate band: catalogue column, BHTOM survey/band name and why."""

    column: str                 # catalogue column, e.g. "V", "sdss_r", "G"
    survey: str                 # "GaiaSP", "GaiaDR3", "2MASS" or "catalog"
    bhtom: str                  # "GaiaSP/V" ...
    reason: str = ""

    @property
    def band(self) -> str:
        return self.bhtom.split("/", 1)[1] if "/" in self.bhtom else self.column


def parse_bhtom_filter(text: str | None) -> tuple[str, str] | None:
    """``"GaiaSP/V"`` -> ("GaiaSP", "V"); ``"no"``/empty -> None (automatic).

    Raises ValueError for a survey or band BHTOM does not offer.
    """
    if text is None or str(text).strip().lower() in ("", "no", "auto"):
        return None
    survey, slash, band = str(text).strip().partition("/")
    canon = {s.lower(): s for s in SURVEYS}
    if not slash or survey.lower() not in canon:
        raise ValueError(f"unknown BHTOM calibration filter '{text}'; expected one of "
                         f"{', '.join(f'{s}/<band>' for s in SURVEYS)} or 'no'")
    survey = canon[survey.lower()]
    names = SURVEYS[survey]
    if band == "any" or band in GROUPS and survey == "GaiaSP":
        return survey, band
    match = band if band in names else next((b for b in names if b.lower() == band.lower()
                                             and band.lower() not in ("r", "i", "u")), None)
    if match is None:
        raise ValueError(f"BHTOM survey {survey} has no band '{band}'; it has "
                         f"{', '.join(names)}, any")
    return survey, match


def filter_to_bhtom(filter_name: str | None, band_map: Mapping[str, str] | None = None
                    ) -> str | None:
    """The BHTOM band (``GaiaSP/V`` ...) a standard filter name maps to, or None.

    ``band_map`` (registry settings) wins: ``{"Ha": "GaiaSP/R", "OIII": "V"}``; a bare
    band is looked up in the surveys (``V`` -> ``GaiaSP/V``).
    """
    name = "" if filter_name is None else str(filter_name).strip()
    for key, value in (band_map or {}).items():
        if key == name or key.casefold() == name.casefold():
            return _qualify(value)
    if name in _EXACT:
        return _EXACT[name]
    folded = name.casefold()
    if folded in _FOLDED:
        return _FOLDED[folded]
    if folded in CLEAR_NAMES:
        return "GaiaDR3/G"
    return None


def _qualify(value: str) -> str:
    if "/" in value:
        survey, band = parse_bhtom_filter(value)
        return f"{survey}/{band}"
    mapped = filter_to_bhtom(value)
    if mapped is None:
        raise ValueError(f"band '{value}' in the band map is not a known band")
    return mapped


def parse_band_map(value) -> dict[str, str]:
    """Registry form ``"Ha:R, OIII:V"`` or a dict -> dict (BH_OPTS carries strings)."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    out = {}
    for item in re.split(r"[;,]", str(value)):
        if item.strip():
            key, sep, band = item.partition(":")
            if not sep:
                raise ValueError(f"band map item '{item}' is not FILTER:BAND")
            out[key.strip()] = band.strip()
    return out


def column_of(bhtom: str) -> str:
    survey, band = bhtom.split("/", 1)
    return SURVEYS[survey][band]


def candidates(filter_name: str | None, bhtom_filter: str | None = DEFAULT_BHTOM_FILTER,
               band_map=None, available: Iterable[str] | None = None) -> list[BandChoice]:
    """Bands to try for a frame, best first; the caller keeps the lowest scatter.

    An explicit band (``GaiaSP/V``) is the only candidate. ``<survey>/any`` and
    ``no`` use the frame's filter when it maps to a band of that survey (``no``:
    of any survey), or the nearest band the catalogue has (R -> r' -> V ...);
    for a filter with no band at all, every band of the survey is a candidate.
    ``GaiaSP/UBVRI`` / ``GaiaSP/ugriz`` limit the search to one family.
    """
    cols = set(available) if available is not None else None
    have = (lambda c: cols is None or c in cols)
    parsed = parse_bhtom_filter(bhtom_filter)
    mapped = filter_to_bhtom(filter_name, parse_band_map(band_map))
    if parsed is not None and parsed[1] not in ("any", *GROUPS):
        name = f"{parsed[0]}/{parsed[1]}"
        return [BandChoice(column_of(name), parsed[0], name, f"requested {name}")]
    survey = parsed[0] if parsed else None
    group = GROUPS.get(parsed[1]) if parsed else None
    out: list[BandChoice] = []
    if mapped is not None:
        for col in (column_of(mapped), *NEAREST.get(column_of(mapped), ())):
            name = bhtom_of(col)
            c_survey, c_band = name.split("/")
            if (survey in (None, c_survey) and (group is None or c_band in group)
                    and have(col)):
                why = (f"filter '{filter_name}' -> {mapped}" if name == mapped else
                       f"filter '{filter_name}' -> {mapped}, not in the catalogue: "
                       f"nearest {name}")
                return [BandChoice(col, c_survey, name, why)]
    surveys = [survey] if survey else ["GaiaSP", "GaiaDR3"]
    for s in surveys:
        for band, col in SURVEYS[s].items():
            if (group is None or band in group) and have(col):
                out.append(BandChoice(col, s, f"{s}/{band}",
                                      f"filter '{filter_name}' has no fixed band: "
                                      "lowest scatter among candidates"))
    if not out and mapped is not None:
        for col in LAST_RESORT.get(column_of(mapped), ()):
            if cols is not None and col in cols:
                name = bhtom_of(col)
                out.append(BandChoice(col, name.split("/")[0], name,
                                      f"filter '{filter_name}' -> {mapped}: the catalogue "
                                      f"has no survey band, last resort {name}"))
    return out


def colour_pair(column: str, available: Iterable[str], preferred: str | None = None
                ) -> tuple[str, str] | None:
    """(blue, red) catalogue columns for the colour term of ``column``, or None.

    ``preferred`` ``"B-V"`` / ``"BP-RP"`` (registry setting) wins when present.
    """
    cols = set(available)
    if preferred:
        blue, _, red = str(preferred).partition("-")
        if blue.strip() in cols and red.strip() in cols:
            return blue.strip(), red.strip()
    for blue, red in COLOURS.get(column, (("BP", "RP"),)):
        if blue in cols and red in cols:
            return blue, red
    return None
