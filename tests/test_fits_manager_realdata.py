"""The FITS manager on real frames (../shared/data, read in place; skipped when absent).

The acceptance test of the header stage: a MicroObservatory frame whose DATE-OBS is
local time with a -0700 suffix, and a Feder frame whose acquisition software
recorded its own heliocentric JD before a later script deleted it (the value
survives in the HISTORY cards), which gives a published HJD to compare with.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
from astropy.time import Time

from bhcore.builtin import skygeom
from bhcore.frame import read_frame
from bhcore.headers import setby, standardise, write_standardised
from bhcore.registry.obsinfo import read_obsinfo, settings_from_obsinfo

pytestmark = pytest.mark.realdata
REGISTRY = Path(__file__).resolve().parents[1] / "registry"
HATP32 = "hatp32_microobservatory/HATP-32171220013343.fits.gz"
EYUMA = "eyuma_feder/thumbnail-image.fit.gz"
TT_MINUS_UTC_DAYS = 69.184 / 86400           # 37 leap seconds + 32.184 s (2017-2018)
LIGHT_TIME_1AU_DAYS = 0.0058                 # 1.0167 AU / c, the largest |BJD - JD| (TT)


def settings(name):
    return settings_from_obsinfo(read_obsinfo(REGISTRY / f"{name}_obs.info"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_microobservatory_frame_acceptance(shared_data, tmp_path):
    raw_path = shared_data / HATP32
    before = sha256(raw_path)
    raw = read_frame(raw_path)
    out = write_standardised(raw_path, settings("MicroObservatory_Cecilia"), tmp_path)
    header = read_frame(out).header

    assert raw.header["DATE-OBS"] == "2017-12-19T18:33:43.317-0700"     # the quirk
    assert header["DATE-OBS"] == "2017-12-20T01:33:43.317"              # UTC
    assert header["JD"] == pytest.approx(2458107.565432, abs=1e-5)     # mid-exposure
    assert header["EXPTIME"] == 60
    assert header["SATURATE"] == 4095
    assert header["ONAME"] == "MicroObservatory_Cecilia"
    assert header["FILTER"] == "Clear" and header["FILTSTD"] is True
    assert setby(header)["BJD"] == "fits_manager"

    # airmass for the pointing RA/DEC against sec(z) of the telescope's own altitude
    telalt = raw.header["TELALT"]
    assert telalt == pytest.approx(62.592)
    assert header["AIRMASS"] == pytest.approx(1 / math.cos(math.radians(90 - telalt)), abs=0.02)
    # the raw RA/DEC are for the equinox of date (obs.info EQUINOX JNOW): converted to ICRS,
    # they give the telescope's own alt/az at the start of the exposure to 0.01 deg
    # (read as J2000 they would be 0.21 deg off)
    start = Time(header["DATE-OBS"], scale="utc")
    site = skygeom.site(-header["LONGITUD"], header["LATITUDE"], header["ALTITUDE"])
    target = skygeom.target_coord(header["RA"], header["DEC"])
    at_start = skygeom.geometry(target, start, site)
    assert at_start.alt == pytest.approx(telalt, abs=0.01)
    assert at_start.az == pytest.approx(raw.header["TELAZ"], abs=0.01)
    assert header["OBJALT"] - at_start.alt == pytest.approx(0.08, abs=0.02)   # rising, 30 s

    # BJD_TDB - JD_UTC = light travel time (|.| <= 0.0058 d) + TT-UTC
    delta = header["BJD"] - header["JD"] - TT_MINUS_UTC_DAYS
    assert abs(delta) <= LIGHT_TIME_1AU_DAYS
    assert header["HJD"] - header["JD"] == pytest.approx(delta, abs=1e-4)
    assert 0 <= header["MOONILLU"] < 0.1           # new Moon was 2017-12-18
    assert header["SUNALT"] < -12                  # astronomical twilight or darker

    assert sha256(raw_path) == before               # the input is never modified
    assert out.parent == tmp_path and out.name == "HATP-32171220013343.fits"


def test_microobservatory_night_times_are_monotonic_and_transit_is_covered(shared_data):
    """A handful of frames across the night: JD grows, BJD - JD stays consistent."""
    obs = settings("MicroObservatory_Cecilia")
    files = sorted((shared_data / "hatp32_microobservatory").glob("HATP-32*.fits.gz"))
    assert len(files) == 142
    picks = files[:: len(files) // 5]
    headers = [standardise(read_frame(path), obs).header for path in picks]
    jds = [h["JD"] for h in headers]
    assert jds == sorted(jds)
    for h in headers:
        raw_mjd = read_frame(shared_data / "hatp32_microobservatory" / h["FILENAME"].replace(
            ".FIT", ".fits.gz")).header["MJD-OBS"]
        assert h["MJD-OBS"] == pytest.approx(raw_mjd, abs=6e-4)     # raw is rounded to 1e-3
        assert h["MJD"] - h["MJD-OBS"] == pytest.approx(30 / 86400, abs=1e-8)
    # mid-transit of HAT-P-32 b (2458107.7111 BJD_TDB) lies inside the night
    assert headers[0]["BJD"] < 2458107.7111 < headers[-1]["BJD"]


def test_feder_frame_mid_exposure_jd_and_published_hjd(shared_data, tmp_path):
    raw_path = shared_data / EYUMA
    before = sha256(raw_path)
    raw = read_frame(raw_path)
    out = write_standardised(raw_path, settings("Feder0.4_AspenCG16"), tmp_path)
    header = read_frame(out).header

    assert raw.header["DATE-OBS"] == "2018-04-17T03:35:22"
    assert header["DATE-OBS"] == "2018-04-17T03:35:22.000"
    assert header["EXPTIME"] == 90
    # 2018-04-17 03:35:22 UTC + 45 s = JD 2458225.5 + 12967 s / 86400
    assert header["JD"] == pytest.approx(2458225.5 + 12967 / 86400, abs=1e-7)
    # JD-OBS written by the acquisition software is the start
    assert header["MJD-OBS"] + 2400000.5 == pytest.approx(raw.header["JD-OBS"], abs=1e-7)

    # MaxIm DL's own JD-HELIO (mid-exposure, rounded to 1e-5 d), kept in HISTORY
    history = " ".join(str(h) for h in raw.header["HISTORY"])
    assert "Deleted keyword JD-HELIO with value 2458225.65059" in history
    assert header["HJD"] == pytest.approx(2458225.65059, abs=1e-5)

    # the East-positive SITELONG of the raw header must come out West-positive
    assert raw.header["SITELONG"].startswith("-96:27")
    assert header["LONGITUD"] == pytest.approx(96.453278, abs=1e-6)
    assert header["AIRMASS"] == pytest.approx(raw.header["AIRMASS"], abs=0.005)
    assert header["GAIN"] == 1.5 and header["RDNOISE"] == pytest.approx(6.67)
    assert header["FILTER"] == "R" and header["FILTRAW"] == "r"
    assert header["OBSTYPE"] == "OBJECT"
    # the frame's own WCS is kept: obs.info pixel-scale hints never overwrite it
    assert header["CDELT1"] == raw.header["CDELT1"] == 1.0
    assert sha256(raw_path) == before
