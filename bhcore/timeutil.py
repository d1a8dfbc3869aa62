"""Observation times from raw headers, in UTC, whatever the camera wrote.

Real headers disagree on how to say when an exposure started: DATE-OBS in local
time with an offset suffix (``2017-12-19T18:33:43.317-0700``), a separate UT
keyword holding a full UTC timestamp (``UT-OBS``) or only the time (``UT``,
``TIME-OBS``) while DATE-OBS holds the date, day-first or slashed dates
(``yyyy/mm/dd`` in the obs.info FORMAT field). ``start_time`` turns all of these
into one UTC ``astropy.time.Time``; ``offline_astropy`` makes sure that nothing
computed from it ever reaches for the network (IERS tables, ephemerides).
"""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass
from datetime import datetime

import erfa
from astropy.coordinates import solar_system_ephemeris
from astropy.time import Time, TimeDelta
from astropy.utils import data as astropy_data
from astropy.utils import iers
from astropy.utils.exceptions import AstropyWarning

from .errors import HeaderError

_UTC_NAMES = {"UTC", "UT", "GMT", "Z", "UT1"}
_SCALES = {"TT": "tt", "TAI": "tai", "TDB": "tdb", "TCG": "tcg", "TCB": "tcb"}

_VALUE = re.compile(
    r"""^\s*
    (?P<date>\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4})?
    (?:\s*[T ]\s*)?
    (?P<time>\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d*)?)?)?
    \s*(?P<zone>Z|(?:UTC|UT|GMT)?\s*[+-]\d{2}:?\d{2}|UTC|UT|GMT)?
    \s*$""", re.VERBOSE | re.IGNORECASE)


@contextlib.contextmanager
def offline_astropy():
    """Run astropy time/coordinate work with no possible network access.

    IERS auto-download is off (the bundled tables are used; dates past them get
    a degraded-accuracy warning instead of a download), any remote file access is
    refused, and the analytic 'builtin' solar-system ephemeris is selected. The
    settings are restored on exit, so other code keeps its own configuration.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(iers.conf.set_temp("auto_download", False))
        stack.enter_context(iers.conf.set_temp("auto_max_age", None))
        stack.enter_context(iers.conf.set_temp("iers_degraded_accuracy", "warn"))
        stack.enter_context(astropy_data.conf.set_temp("allow_internet", False))
        stack.enter_context(solar_system_ephemeris.set("builtin"))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", AstropyWarning)
        warnings.simplefilter("ignore", erfa.ErfaWarning)
        yield


@dataclass(frozen=True)
class Stamp:
    """One parsed header value: calendar date and/or time of day, and a zone."""

    date: tuple[int, int, int] | None      # (year, month, day)
    seconds: float | None                  # seconds since midnight
    offset_min: int | None                 # minutes east of UTC when the value says so

    @property
    def complete(self) -> bool:
        return self.date is not None and self.seconds is not None


def date_order(pattern: str | None) -> tuple[str, str, str]:
    """Field order of the date part of an obs.info FORMAT (``yyyy/mm/dd`` -> y, m, d)."""
    if not pattern:
        return ("y", "m", "d")
    date_part = re.split(r"[T ]", pattern.strip(), maxsplit=1)[0].lower()
    found = sorted((date_part.find(tok), key) for tok, key in
                   (("yy", "y"), ("mm", "m"), ("dd", "d")) if date_part.find(tok) >= 0)
    keys = tuple(key for _, key in found)
    return keys if len(keys) == 3 else ("y", "m", "d")


def parse_stamp(value, pattern: str | None = None) -> Stamp:
    """Parse a header date/time string; raise ValueError when it is not one."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = str(value).strip()
    match = _VALUE.match(text)
    if not text or not match or not (match["date"] or match["time"]):
        raise ValueError(f"'{text}' is not a date or time")
    date = _date(match["date"], pattern) if match["date"] else None
    seconds = _seconds(match["time"]) if match["time"] else None
    zone = match["zone"]
    if zone and seconds is None:
        raise ValueError(f"'{text}' has a time zone but no time")
    return Stamp(date, seconds, _offset_minutes(zone) if zone else None)


def _date(text: str, pattern: str | None) -> tuple[int, int, int]:
    raw = re.split(r"[-/.]", text)
    parts = [int(p) for p in raw]
    if len(raw[0]) == 4:
        order = ("y", "m", "d")          # a leading 4-digit field can only be the year
    elif pattern:
        order = date_order(pattern)
    else:
        order = ("d", "m", "y") if len(raw[2]) == 4 else ("y", "m", "d")
    fields = dict(zip(order, parts))
    year = fields["y"]
    if year < 100:
        year += 2000 if year < 50 else 1900
    datetime(year, fields["m"], fields["d"])        # validates month/day ranges
    return (year, fields["m"], fields["d"])


def _seconds(text: str) -> float:
    parts = text.split(":")
    hours, minutes = int(parts[0]), int(parts[1])
    secs = float(parts[2]) if len(parts) > 2 and parts[2] else 0.0
    if hours > 23 or minutes > 59 or secs >= 61:
        raise ValueError(f"'{text}' is not a time of day")
    return hours * 3600 + minutes * 60 + secs


def _offset_minutes(zone: str) -> int:
    zone = zone.strip().upper()
    if zone in _UTC_NAMES:
        return 0
    digits = re.sub(r"^(UTC|UT|GMT)", "", zone).strip()
    sign = -1 if digits[0] == "-" else 1
    digits = digits[1:].replace(":", "")
    return sign * (int(digits[:2]) * 60 + int(digits[2:4]))


def _to_time(stamp: Stamp, timesys: str) -> Time:
    """UTC Time of a complete stamp; a zone in the value wins over TIMESYS.

    Built from an ISO string (not ``datetime``) so a leap second (23:59:60) survives.
    """
    year, month, day = stamp.date
    hours, rest = divmod(stamp.seconds, 3600.0)
    minutes, secs = divmod(rest, 60.0)
    if stamp.seconds >= 86400.0:                     # 23:59:60.x
        hours, minutes, secs = 23, 59, stamp.seconds - 86340.0
    iso = f"{year:04d}-{month:02d}-{day:02d}T{int(hours):02d}:{int(minutes):02d}:{secs:09.6f}"
    scale = "utc" if stamp.offset_min is not None else _scale(timesys)
    with offline_astropy():
        when = Time(iso, format="isot", scale=scale)
        if stamp.offset_min:
            when = when - TimeDelta(stamp.offset_min * 60.0, format="sec")
        return when.utc


def _scale(timesys: str | None) -> str:
    name = (timesys or "UTC").strip().upper()
    if name in _UTC_NAMES:
        return "utc"
    if name in _SCALES:
        return _SCALES[name]
    raise ValueError(f"TIMESYS '{timesys}' is not supported (use UTC, TT or TAI; "
                     "local time needs an offset suffix such as -0700)")


def start_time(date_value, time_value=None, *, date_format: str | None = None,
               time_format: str | None = None, timesys: str | None = "UTC",
               path=None, date_key: str = "DATE-OBS", time_key: str = "TIME-OBS") -> Time:
    """UTC start of the exposure from the date keyword and the optional time keyword.

    Rules, in order: a time keyword that holds a full timestamp (``UT-OBS``) is
    UTC unless it has its own zone, and wins; a date keyword holding date and time
    is used as is (its zone suffix, if any, converted to UTC); a date-only value is
    combined with a time-only value. When both full values carry zones they must
    agree within 1 s. Raises HeaderError naming the file and keyword otherwise.
    """
    if _blank(date_value):
        raise HeaderError(f"{date_key} is missing: cannot tell when the exposure started",
                          path=path)
    try:
        date = parse_stamp(date_value, date_format)
    except ValueError as exc:
        raise HeaderError(f"{date_key} cannot be read as a date: {exc}", path=path) from None
    clock = None
    if not _blank(time_value):
        try:
            clock = parse_stamp(time_value, time_format or date_format)
        except ValueError as exc:
            raise HeaderError(f"{time_key} cannot be read as a time: {exc}",
                              path=path) from None
    try:
        if clock is not None and clock.complete:
            when = _to_time(clock, "UTC")
            if date.complete and date.offset_min is not None:
                other = _to_time(date, timesys)
                gap = abs((when - other).sec)
                if gap > 1.0:
                    raise HeaderError(f"{date_key} '{date_value}' and {time_key} "
                                      f"'{time_value}' disagree by {gap:.0f} s", path=path)
            return when
        if date.complete:
            return _to_time(date, timesys)
        if date.date is None:
            raise HeaderError(f"{date_key} '{date_value}' holds no date", path=path)
        if clock is None or clock.seconds is None:
            raise HeaderError(f"{date_key} '{date_value}' holds only a date and no time "
                              f"keyword ({time_key}) gives the time", path=path)
        return _to_time(Stamp(date.date, clock.seconds, clock.offset_min), timesys)
    except ValueError as exc:
        raise HeaderError(str(exc), path=path) from None


def mid_exposure(start: Time, exptime_s: float) -> Time:
    """Middle of the exposure (obs.info: JD is the middle, DATE-OBS the start)."""
    with offline_astropy():
        return (start + TimeDelta(float(exptime_s) / 2.0, format="sec")).utc


def iso_ms(t: Time) -> str:
    """``yyyy-mm-ddThh:mm:ss.sss`` in UTC (millisecond precision)."""
    with offline_astropy():
        copy = t.utc.copy()
        copy.precision = 3
        return copy.isot


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
