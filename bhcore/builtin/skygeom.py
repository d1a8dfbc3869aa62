"""Where the target, Moon and Sun were, and light-travel-corrected times.

Everything here runs inside ``offline_astropy()``: the analytic 'builtin'
ephemeris and the bundled IERS tables, so standardising a header never needs the
network. The accuracy of 'builtin' (a few arcsec for the Sun, ~10" for the Moon)
is far better than any header keyword needs; HJD/BJD are good to ~1 ms.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import (AltAz, EarthLocation, FK5, SkyCoord, get_body)
from astropy.time import Time

from ..timeutil import offline_astropy

_SEXA = re.compile(r"^\s*([+-])?\s*(\d+(?:\.\d*)?)(?:[\s:hd°]+(\d+(?:\.\d*)?))?"
                   r"(?:[\s:m']+(\d+(?:\.\d*)?))?\s*[s\"]?\s*$", re.IGNORECASE)


_GEOCENTRE = EarthLocation.from_geocentric(0.0, 0.0, 0.0, unit=u.m)


def parse_angle(value, *, hours: bool = False) -> float:
    """Degrees from a number or a sexagesimal string (``-96:27:11.8``, ``09 02 20``).

    With ``hours=True`` a sexagesimal string is read as hours (RA convention) unless
    its first field exceeds 24; a plain number is always degrees. Raises ValueError.
    """
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"'{value}' is not a finite angle")
        return number
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _SEXA.match(text)
    if not match:
        raise ValueError(f"'{text}' is not an angle")
    sign = -1.0 if match[1] == "-" else 1.0
    first = float(match[2])
    total = first + float(match[3] or 0) / 60.0 + float(match[4] or 0) / 3600.0
    if hours and first <= 24.0:
        total *= 15.0
    return sign * total


@dataclass(frozen=True)
class Geometry:
    """Target/Moon/Sun geometry at one instant; None where the site is unknown."""

    hjd_utc: float
    bjd_tdb: float
    alt: float | None = None
    az: float | None = None
    airmass: float | None = None
    moon_alt: float | None = None
    moon_az: float | None = None
    moon_dist: float | None = None
    moon_illum: float | None = None
    sun_alt: float | None = None
    sun_az: float | None = None
    sun_dist: float | None = None


def target_coord(ra_deg: float, dec_deg: float, equinox: float | None = None) -> SkyCoord:
    """ICRS target; RA/DEC given at another equinox (e.g. 1950) are precessed."""
    if equinox is not None and abs(float(equinox) - 2000.0) > 0.01:
        with offline_astropy():
            fk5 = SkyCoord(ra_deg * u.deg, dec_deg * u.deg,
                           frame=FK5(equinox=Time(float(equinox), format="jyear")))
            return fk5.icrs
    return SkyCoord(ra_deg * u.deg, dec_deg * u.deg, frame="icrs")


def site(lon_east_deg: float, lat_deg: float, alt_m: float | None) -> EarthLocation:
    return EarthLocation.from_geodetic(lon_east_deg * u.deg, lat_deg * u.deg,
                                       (alt_m or 0.0) * u.m)


def airmass_young(alt_deg: float) -> float | None:
    """Airmass from the true altitude (Young 1994); good to the horizon, None below."""
    if alt_deg <= 0.0:
        return None
    c = math.cos(math.radians(90.0 - alt_deg))
    return ((1.002432 * c * c + 0.148386 * c + 0.0096467)
            / (c ** 3 + 0.149864 * c * c + 0.0102963 * c + 0.000303978))


def moon_illumination(moon: SkyCoord, sun: SkyCoord) -> float:
    """Illuminated fraction of the Moon's disc from the Sun-Moon elongation."""
    elong = sun.separation(moon).to_value(u.rad)
    rs = sun.distance.to_value(u.km)
    rm = moon.distance.to_value(u.km)
    phase = math.atan2(rs * math.sin(elong), rm - rs * math.cos(elong))
    return (1.0 + math.cos(phase)) / 2.0


def geometry(target: SkyCoord, when: Time, location: EarthLocation | None) -> Geometry:
    """HJD (UTC) and BJD_TDB for ``target`` at ``when``, plus alt/az/Moon/Sun.

    Without a site the light-time corrections are geocentric (error <= 21 ms) and
    the horizon quantities (altitudes, azimuths, airmass) are left out.
    """
    with offline_astropy():
        when = when.utc
        where = location if location is not None else _GEOCENTRE
        ltt_helio = when.light_travel_time(target, "heliocentric", location=where,
                                           ephemeris="builtin")
        ltt_bary = when.light_travel_time(target, "barycentric", location=where,
                                          ephemeris="builtin")
        hjd = float(when.jd1 + when.jd2 + ltt_helio.to_value(u.day))
        bjd_time = when.tdb + ltt_bary
        bjd = float(bjd_time.jd1 + bjd_time.jd2)
        moon = get_body("moon", when, location=location, ephemeris="builtin")
        sun = get_body("sun", when, location=location, ephemeris="builtin")
        illum = moon_illumination(moon, sun)
        if location is None:
            tgt = target.transform_to(moon.frame)
            return Geometry(hjd, bjd, moon_dist=float(moon.separation(tgt).deg),
                            moon_illum=illum, sun_dist=float(sun.separation(tgt).deg))
        frame = AltAz(obstime=when, location=location)     # no refraction: pressure 0
        tgt, moon_h, sun_h = (c.transform_to(frame) for c in (target, moon, sun))
        alt = float(tgt.alt.deg)
        return Geometry(
            hjd, bjd, alt=alt, az=float(tgt.az.deg), airmass=airmass_young(alt),
            moon_alt=float(moon_h.alt.deg), moon_az=float(moon_h.az.deg),
            moon_dist=float(moon_h.separation(tgt).deg), moon_illum=illum,
            sun_alt=float(sun_h.alt.deg), sun_az=float(sun_h.az.deg),
            sun_dist=float(sun_h.separation(tgt).deg))
