"""The generic FITS manager: standard header cards from a raw frame and its obs.info.

It reads every standard keyword the obs.info can give (a literal in field 5 wins
over the raw keyword of field 2; ``-`` means "read the raw keyword"), turns the
start time into UTC whatever the camera wrote, and adds the time and sky
quantities BHTOM records per frame: JD/MJD at mid-exposure, HJD (UTC) and
BJD_TDB for the target, airmass, target/Moon/Sun altitude and azimuth, Moon and
Sun distance from the target and the Moon's illuminated fraction. Observatory
specific fixers are separate plugins; the core (``bhcore.headers``) merges all
answers, lets a fixer override this generic plugin, and records who set what.
"""
from __future__ import annotations

import logging
import math

from .. import __version__
from ..errors import HeaderError
from ..hookspecs import hookimpl
from ..plugins import PluginInfo
from ..timeutil import iso_ms, mid_exposure, start_time
from . import skygeom

log = logging.getLogger(__name__)
NAME = "fits_manager"

_FLOATS = {"LONGITUD", "LATITUDE", "ALTITUDE", "EXPTIME", "GAIN", "RDNOISE", "CDELT1",
           "CDELT2", "CRPIX1", "CRPIX2", "ORIENTAT", "PIXSIZE1", "PIXSIZE2", "MAGLIMIT",
           "CRVAL1", "CRVAL2"}
_NUMBERS = {"SATURATE", "READTIME", "FLATLOW", "FLATHIGH", "BIN"}   # int when integral
_COPIED = {   # standard keyword -> comment, copied after type coercion
    "OBSERVAT": "observatory", "OBSERVER": "observer", "TELESCOP": "telescope",
    "ORIGIN": "institution", "INSTRUME": "camera", "BIN": "binning",
    "READTIME": "[ns/pix] readout speed (camera mode)", "GAIN": "[e/ADU] gain",
    "RDNOISE": "[ADU] read-out noise", "SATURATE": "[ADU] saturation level",
    "ORIENTAT": "[deg] rotation to bring north up, east left",
    "PIXSIZE1": "[um] pixel size x", "PIXSIZE2": "[um] pixel size y",
    "MAGLIMIT": "[mag] approximate limiting V magnitude", "OBJECT": "object name",
    "FILENAME": "raw file name", "OVERSCAN": "an overscan strip exists",
    "TRIMSEC": "useful area, FITS 1-based", "FLATLOW": "[ADU] lowest good flat level",
    "FLATHIGH": "[ADU] highest good flat level",
}
# Written only when the raw header has no celestial WCS: a real WCS is never
# overwritten by obs.info hints. CTYPE1/2 are left out on purpose so that the
# hints never look like a solved WCS to later stages. CRVAL1/2 are written (in
# ICRS) by _target_and_sky.
_WCS_HINTS = {
    "CDELT1": "[deg/pix] pixel scale x (obs.info hint)",
    "CDELT2": "[deg/pix] pixel scale y (obs.info hint)",
    "CRPIX1": "reference pixel x (obs.info hint)", "CRPIX2": "reference pixel y (obs.info hint)",
    "CUNIT1": "obs.info hint", "CUNIT2": "obs.info hint",
    "RADESYS": "coordinate reference system",
}
_NOW = {"JNOW", "NOW", "DATE", "APPARENT", "OFDATE"}


@hookimpl
def bh_plugin_info():
    return PluginInfo(name=NAME, stage="header", version=__version__,
                      description="Standard header from obs.info: UTC times, JD/HJD/BJD, "
                                  "airmass, Moon/Sun geometry, camera mode values",
                      extra={"generic": True})


@hookimpl
def bh_fill_header(frame, obs):
    """Standard cards ``{KEYWORD: (value, comment)}`` for ``frame`` (never modified)."""
    obs = obs if obs is not None else getattr(frame, "obs", None)
    raw = RawHeader(frame, obs)
    cards: dict = {}
    for key, comment in _COPIED.items():
        value = raw.typed(key)
        if value is not None:
            cards[key] = (value, comment)
    if "FILENAME" not in cards and frame.path is not None:
        cards["FILENAME"] = (frame.path.name, "raw file name")
    cards.update(_type_and_filter(raw))
    time_cards, mid = _times(raw, cards.get("OBSTYPE", (None,))[0])
    cards.update(time_cards)
    location, site_cards = _site(raw)
    cards.update(site_cards)
    cards.update(_target_and_sky(raw, frame, location, mid))
    if frame.wcs is None:
        for key, comment in _WCS_HINTS.items():
            value = raw.typed(key)
            if value is not None:
                cards[key] = (value, comment)
    if raw.mode is not None and len(getattr(raw.entry("READTIME"), "mode_values",
                                            lambda: [])()) > 1:
        cards["CAMMODE"] = (raw.mode, "camera mode index in obs.info '|' lists")
    return cards


class RawHeader:
    """Reads standard keywords of one frame through its obs.info mapping.

    Without obs.info, or for a keyword the obs.info has no line for, the raw
    header is searched under the standard keyword's own name.
    """

    def __init__(self, frame, obs):
        self.frame, self.obs = frame, obs
        self.mode = obs.mode_index(self.lookup) if obs is not None else None

    def lookup(self, keyword):
        value = self.frame.lookup(keyword)
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    def entry(self, std):
        return self.obs.obsinfo.get(std) if self.obs is not None else None

    def raw_keyword(self, std) -> str | None:
        entry = self.entry(std)
        return std if entry is None else entry.raw_keyword

    def value(self, std):
        entry = self.entry(std)
        if entry is None:
            return self.lookup(std)
        value = self.obs.value(std, self.lookup, self.mode)
        return (value.strip() or None) if isinstance(value, str) else value

    def fmt(self, std) -> str | None:
        """The obs.info FORMAT field (e.g. ``yyyy/mm/dd``), None without a line."""
        entry = self.entry(std)
        return entry.format if entry is not None else None

    def where(self, std) -> str:
        key = self.raw_keyword(std)
        return f"{std} (raw keyword {key})" if key and key != std else std

    def typed(self, std):
        """Value of ``std`` coerced to its standard type; HeaderError if it cannot be."""
        value = self.value(std)
        if value is None:
            return None
        try:
            return _coerce(std, value)
        except (TypeError, ValueError):
            raise HeaderError(f"{self.where(std)} value '{value}' is not a valid "
                              f"{'number' if std in _FLOATS | _NUMBERS else 'value'}",
                              path=self.frame.path) from None


def _coerce(std, value):
    if hasattr(value, "item"):
        value = value.item()                 # numpy scalar -> python
    if std in _FLOATS:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(value)
        return number
    if std in _NUMBERS:
        if isinstance(value, str) and not _is_number(value):
            if std == "BIN":
                return value                 # e.g. '2x2'
            raise ValueError(value)
        number = float(value)
        return int(number) if number.is_integer() else number
    if std == "OVERSCAN":
        if isinstance(value, bool):
            return value
        text = str(value).strip().upper()
        if text in {"T", "TRUE", "Y", "YES", "1"}:
            return True
        if text in {"F", "FALSE", "N", "NO", "0"}:
            return False
        raise ValueError(value)
    return str(value).strip() if isinstance(value, str) else value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def translated(raw: RawHeader, std: str):
    """(raw value, standard value or None) for FILTER / OBSTYPE.

    The obs.info line holds either a translation list (``raw1, raw2 | std1, std2``)
    applied to the raw keyword, or a literal (one fixed value for every frame).
    """
    entry = raw.entry(std)
    if entry is None:
        value = raw.lookup(std)
        return value, None
    value = raw.lookup(entry.raw_keyword) if entry.raw_keyword else None
    table = entry.translation() if not entry.value_is_dash else {}
    if table and value is not None:
        return value, raw.obs.translate(std, value)
    if not entry.value_is_dash and (not table or entry.raw_keyword is None):
        literal = entry.value
        if table:                            # a list but no raw keyword: one target name
            names = sorted(set(table.values()))
            literal = names[0] if len(names) == 1 else None
        return value, None if literal is None else str(literal).strip()
    return value, None


def _type_and_filter(raw: RawHeader) -> dict:
    cards = {}
    value, std = translated(raw, "OBSTYPE")
    if std or value is not None:
        cards["OBSTYPE"] = ((std or str(value)).upper(), "image type")
    value, std = translated(raw, "FILTER")
    if value is not None:
        cards["FILTRAW"] = (str(value), "filter name in the raw header")
    if std:
        cards["FILTER"] = (std, "standard filter name")
        cards["FILTSTD"] = (True, "FILTER is a standard name from obs.info")
    elif value is not None:
        log.warning("%s: filter '%s' is not in the obs.info translation list",
                    raw.frame.name, value)
        cards["FILTER"] = (str(value), "raw filter name: not in obs.info list")
        cards["FILTSTD"] = (False, "FILTER is NOT translated: check obs.info")
    return cards


def _times(raw: RawHeader, obstype):
    """Time cards and the mid-exposure Time; HeaderError for a missing date or bad EXPTIME."""
    path = raw.frame.path
    exptime_raw = raw.value("EXPTIME")
    if exptime_raw is None:
        raise HeaderError(f"{raw.where('EXPTIME')} is missing: exposure time unknown",
                          path=path)
    exptime = raw.typed("EXPTIME")
    if exptime < 0 or (exptime == 0 and obstype != "BIAS"):
        raise HeaderError(f"{raw.where('EXPTIME')} is {exptime_raw}: the exposure time "
                          "must be > 0 (only a BIAS frame may have 0)", path=path)
    start = start_time(
        raw.value("DATE-OBS"), raw.value("TIME-OBS"), date_format=raw.fmt("DATE-OBS"),
        time_format=raw.fmt("TIME-OBS"), timesys=raw.value("TIMESYS") or "UTC", path=path,
        date_key=raw.where("DATE-OBS"), time_key=raw.where("TIME-OBS"))
    mid = mid_exposure(start, exptime)
    stamp = iso_ms(start)
    return {
        "TIMESYS": ("UTC", "time scale of DATE-OBS, TIME-OBS, JD, MJD"),
        "DATE-OBS": (stamp, "UTC start of exposure"),
        "TIME-OBS": (stamp.split("T")[1], "UTC start of exposure"),
        "EXPTIME": (exptime, "[s] exposure time"),
        "MJD-OBS": (start.mjd, "[d] MJD (UTC) at start of exposure"),
        "JD": (mid.jd1 + mid.jd2, "[d] JD (UTC) at mid-exposure"),
        "MJD": (mid.mjd, "[d] MJD (UTC) at mid-exposure"),
    }, mid


def _site(raw: RawHeader):
    """EarthLocation (or None) and the LONGITUD/LATITUDE/ALTITUDE cards.

    obs.info LONGITUD is West-positive (0..360 West accepted); the returned
    location and the settings use East-positive longitudes.
    """
    try:
        lon_w = raw.value("LONGITUD")
        lat = raw.value("LATITUDE")
        alt = raw.value("ALTITUDE")
        lon_w = None if lon_w is None else skygeom.parse_angle(lon_w)
        lat = None if lat is None else skygeom.parse_angle(lat)
        alt = None if alt is None else float(alt)
    except (TypeError, ValueError) as exc:
        raise HeaderError(f"observatory position cannot be read: {exc}",
                          path=raw.frame.path) from None
    cards = {}
    if alt is not None:
        cards["ALTITUDE"] = (alt, "[m] observatory altitude")
    if lon_w is None or lat is None:
        return None, cards
    west = lon_w % 360.0
    west = west - 360.0 if west > 180.0 else west
    if not -90.0 <= lat <= 90.0:
        raise HeaderError(f"{raw.where('LATITUDE')} {lat} is not a latitude",
                          path=raw.frame.path)
    east = -west
    cards["LONGITUD"] = (west, "[deg] longitude, West positive")
    cards["LATITUDE"] = (lat, "[deg] latitude, North positive")
    return skygeom.site(east, lat, alt), cards


def _target_and_sky(raw: RawHeader, frame, location, mid) -> dict:
    """RA/DEC (ICRS deg), CRVAL hints, HJD/BJD and horizon geometry for the target.

    The target is, in order: the RA/DEC keywords, the centre of the frame's WCS,
    the CRVAL1/2 values. RA/DEC and CRVAL given at another equinox, or at the
    equinox of date ('JNOW', as many telescope controllers write them) are
    converted, so the cards written are always ICRS (EQUINOX 2000).
    """
    out, target, source = {}, None, None
    try:
        equinox = _equinox(raw.value("EQUINOX"), mid)
        ra, dec = raw.value("RA"), raw.value("DEC")
        if ra is not None and dec is not None:
            target = _coord(ra, dec, equinox, hours=True)
            out["RA"] = (target.ra.deg, "[deg] right ascension (ICRS)")
            out["DEC"] = (target.dec.deg, "[deg] declination (ICRS)")
            source = "RA/DEC"
        crval = raw.value("CRVAL1"), raw.value("CRVAL2")
        crval = None if None in crval else _coord(*crval, equinox, hours=False)
    except (TypeError, ValueError) as exc:
        raise HeaderError(f"target coordinates cannot be read: {exc}", path=frame.path) from None
    if frame.wcs is None and (target is not None or crval is not None):
        out["EQUINOX"] = (2000.0, "[yr] equinox of RA/DEC and CRVAL (ICRS)")
        if crval is not None:
            out["CRVAL1"] = (crval.ra.deg, "[deg] reference RA (obs.info hint)")
            out["CRVAL2"] = (crval.dec.deg, "[deg] reference Dec (obs.info hint)")
    if target is None and frame.wcs is not None:
        ny, nx = frame.data.shape
        target = frame.wcs.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0).icrs
        source = "WCS"
    elif target is None and crval is not None:
        target, source = crval, "CRVAL"
    if target is None:
        log.warning("%s: no target coordinates; HJD/BJD/airmass not computed", frame.name)
        return out
    geo = skygeom.geometry(target, mid, location)
    out["COORDSRC"] = (source, "source of the coordinates used for HJD/BJD/airmass")
    out["HJD"] = (geo.hjd_utc, "[d] heliocentric JD (UTC) at mid-exposure")
    out["BJD"] = (geo.bjd_tdb, "[d] barycentric JD (TDB) at mid-exposure")
    sky = {"OBJALT": (geo.alt, "[deg] target altitude at mid-exposure, no refraction"),
           "OBJAZ": (geo.az, "[deg] target azimuth (N=0, E=90) at mid-exposure"),
           "AIRMASS": (geo.airmass, "airmass at mid-exposure (Young 1994)"),
           "MOONALT": (geo.moon_alt, "[deg] Moon altitude"),
           "MOONAZ": (geo.moon_az, "[deg] Moon azimuth"),
           "MOONDIST": (geo.moon_dist, "[deg] Moon distance from target"),
           "MOONILLU": (geo.moon_illum, "Moon illuminated fraction (0-1)"),
           "SUNALT": (geo.sun_alt, "[deg] Sun altitude"),
           "SUNAZ": (geo.sun_az, "[deg] Sun azimuth"),
           "SUNDIST": (geo.sun_dist, "[deg] Sun distance from target")}
    out.update({k: (round(v, 6), c) for k, (v, c) in sky.items() if v is not None})
    return out


def _coord(ra, dec, equinox, *, hours: bool):
    ra_deg = skygeom.parse_angle(ra, hours=hours)
    dec_deg = skygeom.parse_angle(dec)
    if not -90.0 <= dec_deg <= 90.0:
        raise ValueError(f"declination {dec_deg} out of range")
    return skygeom.target_coord(ra_deg % 360.0, dec_deg, equinox)


def _equinox(value, when) -> float | None:
    """Equinox year of RA/DEC: a number (J/B prefix allowed), or JNOW = date of ``when``."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if text in _NOW:
        return float(when.jyear)
    try:
        return float(text.lstrip("JB"))
    except ValueError:
        raise ValueError(f"EQUINOX '{value}' is neither a year nor JNOW") from None
