"""Read, validate and write obs.info files: one camera's recipe for its FITS header.

obs.info files are written by hand by instrument maintainers, in two layouts
(blank-padded and tab-padded), so the parser is lenient about padding and strict
about content: every problem is an ``ObsInfoError`` naming the file, the line and
the field. Each line keeps its original text, so an unchanged file is written back
byte for byte and a changed value only rewrites that field of that line.

Separators are ``:`` with whitespace on both sides (`` : `` or ``\\t: ``); a ``:``
inside a value (``12:30:00``, ``yyyy-mm-ddThh:mm:ss``, ``[54:2101,1:2048]``) never
touches whitespace, so it does not split.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

from bhcore.errors import ObsInfoError, RegistryError
from bhcore.frame import atomic_write_bytes, atomic_write_text
from bhcore.registry.settings import (DEFAULT_BACKENDS, TRANSLATED, ObservatorySettings,
                                      _norm)

# --- the vocabulary --------------------------------------------------------------------
SECTIONS: dict[str, tuple[str, ...]] = {
    "OBSERVATORY": ("OBSERVAT", "OBSERVER", "LONGITUD", "LATITUDE", "ALTITUDE", "TELESCOP",
                    "ORIGIN"),
    "TIME": ("TIMESYS", "DATE-OBS", "TIME-OBS", "JD", "EXPTIME"),
    "INSTRUMENT": ("INSTRUME", "NAXIS1", "NAXIS2", "BIN", "READTIME", "GAIN", "RDNOISE",
                   "SATURATE", "CDELT1", "CDELT2", "CRPIX1", "CRPIX2", "ORIENTAT", "OBSTYPE",
                   "FILTER", "PIXSIZE1", "PIXSIZE2", "MAGLIMIT"),
    "OBJECT & WCS": ("OBJECT", "EQUINOX", "RADESYS", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2",
                     "RA", "DEC", "CRVAL1", "CRVAL2"),
    "OTHER": ("FILENAME",),
    "CALIBRATION": ("OVERSCAN", "TRIMSEC", "FLATLOW", "FLATHIGH"),
    # bhcore's own lines: the BHTOM camera prefix and the backend choice per stage.
    "PIPELINE (bhcore)": ("ONAME", "DESCRIPT", "BH_ASTROM", "BH_PHOT", "BH_CALIB",
                          "BH_CATALOG", "BH_OPTS"),
}
STANDARD_KEYWORDS = tuple(k for keys in SECTIONS.values() for k in keys)
EXTENSION_KEYWORDS = SECTIONS["PIPELINE (bhcore)"]
ALIASES = MappingProxyType({"CDELTA1": "CDELT1", "CDELTA2": "CDELT2"})  # the seed's spelling
BACKEND_KEYWORDS = MappingProxyType({"BH_ASTROM": "astrometry", "BH_PHOT": "photometry",
                                     "BH_CALIB": "calibration", "BH_CATALOG": "catalog"})
FIELD_NAMES = ("DESCRIPTION", "KEYWORD in FITS", "standard KEYWORD", "FORMAT", "VALUE(S)",
               "COMMENT", "CONF FLAG")
SIMPLE_FORMATS = ("str", "int", "float")

_SEP = re.compile(r"(?<=\s):(?=\s)")
_EOL = re.compile(r"\r\n|\n|\r")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_OPT_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_DATE_CHARS = re.compile(r"[ymdhsYMDHS][ymdhsYMDHST:/\-. ]*")
_FILE_NAME = re.compile(r"(.+?)_obs(?:_[A-Za-z0-9]+)?\.info")


def canonical_keyword(keyword: str) -> str:
    """The standard keyword a line means (``CDELTA1`` is read as ``CDELT1``)."""
    upper = keyword.strip().upper()
    return ALIASES.get(upper, upper)


def oname_from_path(path) -> str | None:
    """``X_obs.info`` (or BHTOM's uploaded ``X_obs_AbC12de.info``) -> ``X``."""
    if not path:
        return None
    match = _FILE_NAME.fullmatch(Path(str(path)).name)
    return match.group(1) if match else None


# --- lines -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObsInfoLine:
    """A comment, section header or blank line, kept verbatim."""

    text: str
    line_no: int = 0
    eol: str = "\n"

    @property
    def kind(self) -> str:
        if not self.text.strip():
            return "blank"
        return "section" if self.section else "comment"

    @property
    def section(self) -> str | None:
        """The section name when this is a ``# SECTION`` header line."""
        body = self.text.strip().lstrip("\ufeff")
        if not body.startswith("#") or body.startswith("##"):
            return None
        title = " ".join(body[1:].split())
        for name in SECTIONS:
            if title.upper() == name.upper() or title.upper().startswith(name.upper() + " ("):
                return name
        return None

    def render(self) -> str:
        return self.text


@dataclass(frozen=True)
class ObsInfoEntry:
    """One data line: ``DESCRIPTION : RAW : STD : FORMAT : VALUE(S) : COMMENT : FLAG``.

    ``std_values`` is field 6 of the 8-field translation form used by the seed
    (``raw list : standard list``); ``pieces`` are the original fields with their
    padding, used to write an unchanged line back exactly.
    """

    description: str
    raw_keyword: str | None
    std_keyword: str
    format: str
    value: str
    comment: str
    conf_flag: bool
    line_no: int = 0
    std_values: str | None = None
    eol: str = "\n"
    pieces: tuple[str, ...] = ()

    @property
    def keyword(self) -> str:
        """Canonical standard keyword (aliases resolved, upper case)."""
        return canonical_keyword(self.std_keyword)

    @property
    def mode_dependent(self) -> bool:
        return self.description.rstrip().endswith("*")

    @property
    def value_is_dash(self) -> bool:
        return self.value.strip() == "-"

    @property
    def is_translation(self) -> bool:
        return self.keyword in TRANSLATED

    def mode_values(self) -> list[str]:
        """One value per camera mode for ``*`` fields; ``[value]`` otherwise."""
        if self.is_translation or not self.mode_dependent:
            return [self.value]
        return [part.strip() for part in self.value.split("|")]

    def translation_pairs(self) -> list[tuple[str, str]]:
        """(raw name, standard name) pairs of a FILTER / OBSTYPE line, in order."""
        if not self.is_translation or self.value_is_dash:
            return []
        if self.std_values is not None:
            raw_part, std_part = self.value, self.std_values
        elif "|" in self.value:
            raw_part, _, std_part = self.value.partition("|")
            if "|" in std_part:
                raise ValueError("more than one '|' in a translation list")
        else:  # a plain list: every name is already standard
            raw_part = self.value
            std_part = ",".join(item.split("/")[0] for item in self.value.split(","))
        raws = [[alt.strip() for alt in item.split("/")] for item in raw_part.split(",")]
        stds = [item.strip() for item in std_part.split(",")]
        if len(raws) != len(stds):
            raise ValueError(f"{len(raws)} raw names but {len(stds)} standard names")
        if any(not alt for alts in raws for alt in alts) or any(not s for s in stds):
            raise ValueError("empty name in a translation list")
        return [(alt, std) for alts, std in zip(raws, stds) for alt in alts]

    def translation(self) -> dict[str, str]:
        """Casefolded, blank-normalised raw name -> standard name."""
        return {_norm(raw): std for raw, std in self.translation_pairs()}

    # --- writing ---------------------------------------------------------------------
    def field_texts(self) -> tuple[str, ...]:
        texts = [self.description, self.raw_keyword or "-", self.std_keyword, self.format,
                 self.value]
        if self.std_values is not None:
            texts.append(self.std_values)
        texts += [self.comment, "T" if self.conf_flag else "F"]
        return tuple(texts)

    def render(self) -> str:
        """The line text: the original where unchanged, else patched field by field."""
        texts = self.field_texts()
        if len(self.pieces) != len(texts):
            return _new_line(texts)
        out = []
        for index, (piece, text) in enumerate(zip(self.pieces, texts)):
            old = piece.strip()
            same = old.upper() == text if index == len(texts) - 1 else old == text
            if same:
                out.append(piece)
                continue
            lead = piece[:len(piece) - len(piece.lstrip())]
            trail = piece[len(piece.rstrip()):]
            out.append(f"{lead}{text}{trail or (' ' if index < len(texts) - 1 else '')}")
        return ":".join(out)


def _new_line(texts) -> str:
    """A fresh line in the blank-padded layout of the maintainers' template."""
    widths = (28, 9, 10, 6)
    cells = [f"{t:<{widths[i]}}" if i < len(widths) else t for i, t in enumerate(texts)]
    return "  " + " : ".join(cells)


Item = Union[ObsInfoLine, ObsInfoEntry]


# --- the file ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ObsInfo:
    """A parsed obs.info: every line in order, data lines as ``ObsInfoEntry``."""

    path: str | None
    items: tuple[Item, ...]
    encoding: str = "utf-8"
    _index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        index = {}
        for item in self.items:
            if isinstance(item, ObsInfoEntry):
                index.setdefault(item.keyword, item)
        object.__setattr__(self, "_index", index)

    @property
    def entries(self) -> list[ObsInfoEntry]:
        return [item for item in self.items if isinstance(item, ObsInfoEntry)]

    def get(self, std_keyword: str) -> ObsInfoEntry | None:
        """The line of a standard keyword (aliases accepted), or None."""
        return self._index.get(canonical_keyword(std_keyword))

    def literal(self, std_keyword: str) -> str | None:
        entry = self.get(std_keyword)
        return None if entry is None or entry.value_is_dash else entry.value

    @property
    def oname(self) -> str | None:
        """The ONAME line's value, else the file name before ``_obs.info``."""
        return self.literal("ONAME") or oname_from_path(self.path)

    @property
    def text(self) -> str:
        return format_obsinfo(self)

    def missing_keywords(self) -> list[str]:
        """Standard keywords (not bhcore's own) that have no line."""
        return [k for k in STANDARD_KEYWORDS
                if k not in EXTENSION_KEYWORDS and k not in self._index]

    def set_value(self, std_keyword: str, value: str) -> "ObsInfo":
        """A copy with one line's value changed (validated; the layout is kept)."""
        entry = self.get(std_keyword)
        if entry is None:
            raise KeyError(f"no line for {std_keyword}")
        new = dataclasses.replace(entry, value=str(value).strip())
        items = tuple(new if item is entry else item for item in self.items)
        changed = ObsInfo(self.path, items, self.encoding)
        return parse_obsinfo(format_obsinfo(changed), path=self.path)


# --- parsing -----------------------------------------------------------------------------
def _split_lines(text: str):
    position = 0
    line_no = 0
    for match in _EOL.finditer(text):
        line_no += 1
        yield line_no, text[position:match.start()], match.group()
        position = match.end()
    if position < len(text):
        yield line_no + 1, text[position:], ""


def _date_regex(fmt: str) -> re.Pattern | None:
    if not _DATE_CHARS.fullmatch(fmt):
        return None
    body = "".join(r"\d" if ch.lower() in "ymdhs" else re.escape(ch) for ch in fmt)
    if fmt.lower().endswith("s"):
        body += r"(?:\.\d+)?"
    return re.compile(body, re.IGNORECASE)


def _check_literal(value: str, fmt: str) -> str | None:
    """Why ``value`` does not parse in ``fmt`` (None when it does)."""
    if fmt == "str":
        return None
    if fmt == "int":
        try:
            int(value)
        except ValueError:
            return f"'{value}' is not an int"
        return None
    if fmt == "float":
        try:
            float(value)
        except ValueError:
            return f"'{value}' is not a float"
        return None
    pattern = _date_regex(fmt)
    if pattern is not None and not pattern.fullmatch(value):
        return f"'{value}' does not match the format '{fmt}'"
    return None


def parse_options(text: str) -> dict[str, Any]:
    """``key=value; key=value`` (BH_OPTS) -> dict; numbers and true/false converted."""
    options: dict[str, Any] = {}
    if text.strip() in ("", "-"):
        return options
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq or not _OPT_KEY.fullmatch(key):
            raise ValueError(f"'{part}' is not key=value")
        options[key] = _option_value(raw.strip())
    return options


def _option_value(raw: str):
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def parse_backends(text: str) -> tuple[str, ...]:
    """``a, b, c`` -> ('a', 'b', 'c'); the order is the fallback order."""
    names = tuple(name.strip() for name in text.split(","))
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if bad or not names:
        raise ValueError(f"bad backend name(s) {bad or names}: expected 'name, name, ...'")
    return names


class _Collector:
    def __init__(self, path):
        self.path = path
        self.errors: list[ObsInfoError] = []

    def add(self, message, line, field_index=None, field_name=None):
        name = field_name or (FIELD_NAMES[field_index] if field_index is not None else None)
        self.errors.append(ObsInfoError(message, path=self.path, line=line, field=name))


def _parse_entry(text: str, line_no: int, eol: str, errs: _Collector) -> ObsInfoEntry | None:
    pieces = tuple(_SEP.split(text))
    fields = [piece.strip() for piece in pieces]
    std = canonical_keyword(fields[2]) if len(fields) >= 3 else ""
    translation_form = len(fields) == 8 and std in TRANSLATED
    if len(fields) != 7 and not translation_form:
        errs.add(f"expected 7 ':'-separated fields (DESCRIPTION : KEYWORD in FITS : standard "
                 f"KEYWORD : FORMAT : VALUE(S) : COMMENT : CONF FLAG), found {len(fields)}",
                 line_no, field_name="field count")
        return None
    if translation_form:
        desc, raw, std_text, fmt, value, std_values, comment, flag = fields
    else:
        desc, raw, std_text, fmt, value, comment, flag = fields
        std_values = None
    if std not in STANDARD_KEYWORDS:
        near = difflib.get_close_matches(std, STANDARD_KEYWORDS + tuple(ALIASES), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        errs.add(f"unknown standard keyword '{std_text}'{hint}", line_no, 2)
        return None
    if flag.upper() not in ("T", "F"):
        errs.add(f"conf flag must be T or F, not '{flag}'", line_no, len(fields) - 1)
        return None
    entry = ObsInfoEntry(description=desc, raw_keyword=None if raw == "-" else raw,
                         std_keyword=std_text, format=fmt, value=value, comment=comment,
                         conf_flag=flag.upper() == "T", line_no=line_no,
                         std_values=std_values, eol=eol, pieces=pieces)
    problem = _check_entry(entry)
    if problem:
        index, message = problem
        errs.add(message, line_no, index)
        return None
    return entry


def _check_entry(entry: ObsInfoEntry) -> tuple[int, str] | None:
    """(field index, message) of the first problem of one line, or None."""
    fmt = entry.format
    if fmt not in SIMPLE_FORMATS and _date_regex(fmt) is None:
        return 3, (f"unknown format '{fmt}' (expected str, int, float or a date/time "
                   "pattern such as yyyy-mm-ddThh:mm:ss)")
    if entry.value_is_dash and entry.std_values is None:
        return None
    key = entry.keyword
    try:
        if entry.is_translation:
            pairs = entry.translation_pairs()
            seen: dict[str, str] = {}
            for raw, std in pairs:
                if seen.setdefault(_norm(raw), std) != std:
                    raise ValueError(f"'{raw}' maps to both {seen[_norm(raw)]} and {std}")
            return None
        if key in BACKEND_KEYWORDS:
            parse_backends(entry.value)
            return None
        if key == "BH_OPTS":
            parse_options(entry.value)
            return None
    except ValueError as exc:
        return 4, str(exc)
    if "|" in entry.value and not entry.mode_dependent and fmt != "str":
        return 4, ("'|' camera-mode list on a line whose description does not end in '*' "
                   "(mark mode-dependent fields with '*')")
    for value in entry.mode_values():
        if value == "-" and len(entry.mode_values()) == 1:
            continue
        why = _check_literal(value, fmt)
        if why:
            return 4, why
    limits = {"LONGITUD": 360.0, "LATITUDE": 90.0}
    if key in limits and fmt == "float" and abs(float(entry.value)) > limits[key]:
        return 4, f"{key} {entry.value} is outside [-{limits[key]:g}, {limits[key]:g}] deg"
    return None


def _check_modes(entries: list[ObsInfoEntry], errs: _Collector) -> None:
    """Every multi-valued ``*`` line lists the same number of camera modes."""
    first = None
    for entry in entries:
        if not entry.mode_dependent or entry.is_translation:
            continue
        count = len(entry.mode_values())
        if count < 2:
            continue
        if first is None:
            first = (entry, count)
        elif count != first[1]:
            errs.add(f"{count} camera-mode values, but line {first[0].line_no} "
                     f"({first[0].keyword}) has {first[1]}", entry.line_no, 4)


def validate_obsinfo(text: str, path=None) -> tuple[ObsInfo | None, list[ObsInfoError]]:
    """Parse and return (obs.info, every problem found); obs.info is None on errors."""
    path = str(path) if path is not None else None
    errs = _Collector(path)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line_no, line, eol in _split_lines(text):
        body = line.strip().lstrip("\ufeff").strip()
        if not body or body.startswith("#"):
            items.append(ObsInfoLine(line, line_no, eol))
            continue
        entry = _parse_entry(line, line_no, eol, errs)
        if entry is None:
            continue
        if entry.keyword in seen:
            errs.add(f"{entry.keyword} already defined on line {seen[entry.keyword]}",
                     line_no, 2)
            continue
        seen[entry.keyword] = line_no
        items.append(entry)
    entries = [item for item in items if isinstance(item, ObsInfoEntry)]
    _check_modes(entries, errs)
    if errs.errors:
        return None, errs.errors
    return ObsInfo(path, tuple(items)), []


def parse_obsinfo(text: str, path=None) -> ObsInfo:
    """Parse obs.info text; the first problem raises ``ObsInfoError``."""
    obsinfo, errors = validate_obsinfo(text, path)
    if errors:
        first = errors[0]
        if len(errors) > 1:
            first.message += f" (and {len(errors) - 1} more problem(s) in this file)"
        raise first
    return obsinfo


def read_obsinfo(path) -> ObsInfo:
    """Read and parse a file (UTF-8; Latin-1 files are read and written as Latin-1)."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise ObsInfoError(f"cannot read: {exc.strerror or exc}", path=path) from None
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = payload.decode("latin-1"), "latin-1"
    obsinfo = parse_obsinfo(text, path=path)
    return dataclasses.replace(obsinfo, encoding=encoding)


def format_obsinfo(obsinfo: ObsInfo) -> str:
    """The file text; unchanged lines come back exactly as they were read."""
    return "".join(item.render() + item.eol for item in obsinfo.items)


def write_obsinfo(obsinfo: ObsInfo, path=None) -> Path:
    """Write atomically (temporary file + rename) to ``path`` or the file it came from."""
    target = path or obsinfo.path
    if target is None:
        raise RegistryError("write_obsinfo: no path given and the obs.info has none")
    text = format_obsinfo(obsinfo)
    if obsinfo.encoding == "utf-8":
        return atomic_write_text(target, text)
    return atomic_write_bytes(target, text.encode(obsinfo.encoding))


# --- to resolved settings ------------------------------------------------------------------
def settings_from_obsinfo(obsinfo: ObsInfo, oname: str | None = None) -> ObservatorySettings:
    """Resolved settings: ONAME, backends per stage (defaults when absent), BH_OPTS."""
    name = oname or obsinfo.oname
    if not name:
        raise RegistryError("no ONAME: add a 'Camera prefix (ONAME)' line or name the file "
                            "<ONAME>_obs.info", path=obsinfo.path)
    backends = dict(DEFAULT_BACKENDS)
    for keyword, stage in BACKEND_KEYWORDS.items():
        value = obsinfo.literal(keyword)
        if value is not None:
            backends[stage] = parse_backends(value)
    options = parse_options(obsinfo.literal("BH_OPTS") or "")
    return ObservatorySettings(oname=name, obsinfo=obsinfo,
                               backends=MappingProxyType(backends),
                               plugin_settings=MappingProxyType(options))


def obsinfo_filename(oname: str) -> str:
    """The registry file name of a camera: ``<ONAME>_obs.info``, unsafe characters as '-'."""
    return re.sub(r"[^A-Za-z0-9._+\-]", "-", oname.strip()) + "_obs.info"
