"""Header standardisation on synthetic headers: one test per real-world quirk.

Each test builds its raw header and obs.info in the test, so the expected value is
visible next to the input. Ephemerides must work offline: a fixture makes any
network connection attempt fail the test.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import typer
from astropy.coordinates import FK5, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time
import astropy.units as u
from typer.testing import CliRunner

from bhcore.builtin import fits_manager
from bhcore.cli.headers_cmd import headers as headers_command
from bhcore.errors import HeaderError
from bhcore.frame import read_frame
from bhcore.headers import merge, output_path, setby, standardise, write_standardised
from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo, load_plugins
from bhcore.registry.obsinfo import parse_obsinfo, settings_from_obsinfo
from bhcore.timeutil import offline_astropy

# std keyword -> (description, raw keyword, format, value)
BASE = {
    "OBSERVAT": ("Observatory", "-", "str", "TestSite"),
    "LONGITUD": ("Observatory longitude [deg]", "-", "float", "110.88"),
    "LATITUDE": ("Observatory latitude [deg]", "-", "float", "31.68"),
    "ALTITUDE": ("Observatory altitude [m]", "-", "float", "1268"),
    "TIMESYS": ("Time system", "-", "str", "UTC"),
    "DATE-OBS": ("Date", "DATE-OBS", "yyyy-mm-ddThh:mm:ss", "-"),
    "TIME-OBS": ("Time", "-", "hh:mm:ss", "-"),
    "EXPTIME": ("Exposition time", "EXPTIME", "float", "-"),
    "INSTRUME": ("Instrument name", "-", "str", "TestCam"),
    "SATURATE": ("Saturation limit*", "-", "int", "4095"),
    "OBSTYPE": ("Image type", "IMAGETYP", "str", "zero, dark, flat, object | BIAS, DARK, FLAT, OBJECT"),
    "FILTER": ("Filters", "FILTER", "str", "B2, V2, I | B, V, I"),
    "RA": ("Right ascension", "RA", "float", "-"),
    "DEC": ("Declination", "DEC", "float", "-"),
    "ONAME": ("Camera prefix (ONAME)", "-", "str", "TEST_CAM"),
}
RAW = {"DATE-OBS": "2017-12-20T01:33:43.317", "EXPTIME": 60.0, "IMAGETYP": "object",
       "FILTER": "V2", "RA": 31.312099, "DEC": 46.769087}


def make_obs(**changes):
    """ObservatorySettings from BASE with lines changed (tuple) or removed (None)."""
    lines = dict(BASE)
    for key, value in changes.items():
        key = key.replace("_", "-") if key in ("DATE_OBS", "TIME_OBS") else key
        if value is None:
            lines.pop(key, None)
        else:
            lines[key] = value
    text = "".join(f"  {d} : {r} : {k} : {f} : {v} : test : F\n"
                   for k, (d, r, f, v) in lines.items())
    return settings_from_obsinfo(parse_obsinfo(text, path="test_obs.info"))


def make_frame(tmp_path, raw=None, drop=(), name="raw.fits", extension=False):
    header = fits.Header()
    for key, value in {**RAW, **(raw or {})}.items():
        if key not in drop:
            header[key] = value
    data = np.arange(20 * 30, dtype=np.int16).reshape(20, 30)
    path = tmp_path / name
    if extension:
        primary = fits.PrimaryHDU(header=header)
        image = fits.ImageHDU(data=data, name="SCI")
        image.header["EXPTIME"] = header.get("EXPTIME", 60.0)
        fits.HDUList([primary, image]).writeto(path)
    else:
        fits.PrimaryHDU(data=data, header=header).writeto(path)
    return read_frame(path)


def fill(tmp_path, obs=None, **kwargs):
    frame = make_frame(tmp_path, **kwargs)
    return standardise(frame, obs or make_obs()).header


# --- times -------------------------------------------------------------------------------
def test_plain_utc_date_obs_gives_start_and_mid_exposure_jd(tmp_path):
    header = fill(tmp_path)
    assert header["DATE-OBS"] == "2017-12-20T01:33:43.317"
    assert header["TIME-OBS"] == "01:33:43.317"
    assert header["TIMESYS"] == "UTC"
    start = Time("2017-12-20T01:33:43.317", scale="utc")
    assert header["JD"] == pytest.approx(start.jd + 30.0 / 86400.0, abs=1e-8)
    assert header["MJD"] == pytest.approx(header["JD"] - 2400000.5, abs=1e-8)
    assert header["MJD-OBS"] == pytest.approx(start.mjd, abs=1e-8)


def test_local_time_with_offset_suffix_is_converted_to_utc(tmp_path):
    header = fill(tmp_path, raw={"DATE-OBS": "2017-12-19T18:33:43.317-0700"})
    assert header["DATE-OBS"] == "2017-12-20T01:33:43.317"


def test_date_and_time_in_two_keywords(tmp_path):
    obs = make_obs(DATE_OBS=("Date", "DATE-OBS", "yyyy-mm-dd", "-"),
                   TIME_OBS=("Time", "UT", "hh:mm:ss", "-"))
    header = fill(tmp_path, obs, raw={"DATE-OBS": "2017-12-20", "UT": "01:33:43.317"})
    assert header["DATE-OBS"] == "2017-12-20T01:33:43.317"


def test_slashed_date_format_from_obsinfo(tmp_path):
    obs = make_obs(DATE_OBS=("Date", "DATE-OBS", "yyyy/mm/dd", "-"),
                   TIME_OBS=("Time", "TIME-OBS", "hh:mm:ss", "-"))
    header = fill(tmp_path, obs, raw={"DATE-OBS": "2017/12/20", "TIME-OBS": "01:33:43.317"})
    assert header["DATE-OBS"] == "2017-12-20T01:33:43.317"


def test_day_first_date_format_from_obsinfo(tmp_path):
    obs = make_obs(DATE_OBS=("Date", "DATE-OBS", "dd.mm.yyyy", "-"),
                   TIME_OBS=("Time", "UT", "hh:mm:ss", "-"))
    header = fill(tmp_path, obs, raw={"DATE-OBS": "05.12.2017", "UT": "01:33:43"})
    assert header["DATE-OBS"] == "2017-12-05T01:33:43.000"


def test_ut_keyword_with_full_utc_timestamp_wins_over_local_date_obs(tmp_path):
    """MicroObservatory-like: DATE-OBS local (here without suffix), UT-OBS in UTC."""
    obs = make_obs(TIME_OBS=("Time", "UT-OBS", "yyyy-mm-ddThh:mm:ss", "-"))
    header = fill(tmp_path, obs, raw={"DATE-OBS": "2017-12-19T18:33:43.317",
                                       "UT-OBS": "2017-12-20T01:33:43.317-0000"})
    assert header["DATE-OBS"] == "2017-12-20T01:33:43.317"


def test_zoned_date_and_ut_keyword_that_disagree_are_an_error(tmp_path):
    obs = make_obs(TIME_OBS=("Time", "UT-OBS", "yyyy-mm-ddThh:mm:ss", "-"))
    with pytest.raises(HeaderError, match="disagree"):
        fill(tmp_path, obs, raw={"DATE-OBS": "2017-12-19T18:33:43-0700",
                                 "UT-OBS": "2017-12-20T02:33:43"})


def test_missing_date_obs_names_the_file(tmp_path):
    with pytest.raises(HeaderError) as err:
        fill(tmp_path, drop=("DATE-OBS",), name="no_date.fits")
    assert "no_date.fits" in str(err.value) and "DATE-OBS" in str(err.value)
    assert "\n" not in str(err.value)


def test_date_without_any_time_is_an_error(tmp_path):
    with pytest.raises(HeaderError, match="only a date"):
        fill(tmp_path, raw={"DATE-OBS": "2017-12-20"})


@pytest.mark.parametrize("exptime", [0.0, -5.0])
def test_non_positive_exptime_is_an_error(tmp_path, exptime):
    with pytest.raises(HeaderError, match="EXPTIME") as err:
        fill(tmp_path, raw={"EXPTIME": exptime}, name="zero_exp.fits")
    assert "zero_exp.fits" in str(err.value)


def test_bias_frame_may_have_zero_exptime(tmp_path):
    header = fill(tmp_path, raw={"EXPTIME": 0.0, "IMAGETYP": "zero"})
    assert header["OBSTYPE"] == "BIAS"
    assert header["JD"] == pytest.approx(Time("2017-12-20T01:33:43.317").jd, abs=1e-8)


# --- instrument ----------------------------------------------------------------------------
MODES = dict(
    READTIME=("Instr. mode, readout speed*", "RDSPEED", "int", "2000 | 16000"),
    GAIN=("Gain*", "-", "float", "9.00 | 6.70"),
    RDNOISE=("Read-out noise*", "-", "float", "1.80 | 1.00"),
    SATURATE=("Saturation limit*", "-", "int", "32000 | 45000"),
)


@pytest.mark.parametrize("speed, mode, gain, noise, sat", [
    (2000, 0, 9.0, 1.8, 32000), (16000, 1, 6.7, 1.0, 45000)])
def test_camera_mode_picks_gain_noise_and_saturation(tmp_path, speed, mode, gain, noise, sat):
    header = fill(tmp_path, make_obs(**MODES), raw={"RDSPEED": speed})
    assert header["CAMMODE"] == mode
    assert header["READTIME"] == speed
    assert header["GAIN"] == pytest.approx(gain)
    assert header["RDNOISE"] == pytest.approx(noise)
    assert header["SATURATE"] == sat


def test_filter_translation_ignores_case_and_blanks(tmp_path):
    header = fill(tmp_path, raw={"FILTER": " I "})
    assert header["FILTER"] == "I"
    assert header["FILTSTD"] is True
    assert header["FILTRAW"].strip() == "I"


def test_unknown_filter_is_kept_and_flagged_not_an_error(tmp_path):
    header = fill(tmp_path, raw={"FILTER": "Halpha"})
    assert header["FILTER"] == "Halpha"
    assert header["FILTRAW"] == "Halpha"
    assert header["FILTSTD"] is False


def test_image_type_translation(tmp_path):
    assert fill(tmp_path, raw={"IMAGETYP": "Object"})["OBSTYPE"] == "OBJECT"


def test_literal_overrides_raw_keyword(tmp_path):
    obs = make_obs(OBSERVAT=("Observatory", "OBSERVAT", "str", "FromObsInfo"))
    header = fill(tmp_path, obs, raw={"OBSERVAT": "FromHeader"})
    assert header["OBSERVAT"] == "FromObsInfo"


def test_sexagesimal_east_positive_site_from_raw_keywords(tmp_path):
    """A raw LONGITUD is West-positive by the obs.info convention (0..360 W accepted)."""
    obs = make_obs(LONGITUD=("Observatory longitude", "SITELONG", "str", "-"),
                   LATITUDE=("Observatory latitude", "SITELAT", "str", "-"))
    header = fill(tmp_path, obs, raw={"SITELONG": "263:32:48.2", "SITELAT": "+46:52:00.4"})
    assert header["LONGITUD"] == pytest.approx(-(360 - (263 + 32 / 60 + 48.2 / 3600)), abs=1e-6)
    assert header["LATITUDE"] == pytest.approx(46.8667778, abs=1e-6)


# --- HDUs, originals, output -----------------------------------------------------------------
def test_image_in_an_extension_hdu_keeps_primary_keywords(tmp_path):
    frame = make_frame(tmp_path, raw={"OBSERVER": "someone"}, extension=True)
    assert frame.hdu_index == 1
    out = write_standardised(frame.path, make_obs(), tmp_path / "out")
    result = read_frame(out)
    assert result.data.shape == (20, 30)
    assert result.data[1, 0] == 30
    assert result.header["DATE-OBS"] == "2017-12-20T01:33:43.317"
    assert result.header["OBSERVER"] == "someone"
    assert "XTENSION" not in result.header


def test_original_frame_and_file_are_untouched(tmp_path):
    frame = make_frame(tmp_path, raw={"DATE-OBS": "2017-12-19T18:33:43.317-0700"})
    before = hashlib.sha256(frame.path.read_bytes()).hexdigest()
    header_before = frame.header.tostring()
    new = standardise(frame, make_obs())
    write_standardised(frame.path, make_obs(), tmp_path / "out")
    assert new is not frame and new.header is not frame.header
    assert frame.header.tostring() == header_before
    assert hashlib.sha256(frame.path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("name, expected", [
    ("frame.fits.gz", "frame.fits"), ("a b;c.fit", "a_b_c.fits"), (".hidden.fz", "hidden.fits"),
    ("../../etc/passwd.fits", "passwd.fits"), ("..", "frame.fits"),
    ("C:\\data\\x.fts", "x.fits")])
def test_output_name_is_sanitised_and_stays_in_out_dir(tmp_path, name, expected):
    target = output_path(name, tmp_path)
    assert target.name == expected
    assert target.parent == tmp_path


def test_provenance_cards_and_setby_record(tmp_path):
    header = fill(tmp_path)
    assert header["ONAME"] == "TEST_CAM"
    assert header["BHCORE"]
    who = setby(header)
    assert who["DATE-OBS"] == who["JD"] == who["BJD"] == "fits_manager"
    again = standardise(read_frame_from_header(tmp_path, header), make_obs()).header
    assert sum(str(h).startswith("BHSETBY") for h in again["HISTORY"]) == \
        sum(str(h).startswith("BHSETBY") for h in header["HISTORY"])


def read_frame_from_header(tmp_path, header):
    path = tmp_path / "again.fits"
    fits.PrimaryHDU(data=np.zeros((4, 4), np.float32), header=header).writeto(path)
    return read_frame(path)


# --- plugins: merge and conflicts ------------------------------------------------------------
class Fixer:
    """A stand-in observatory fixer setting fixed cards."""

    def __init__(self, name, cards):
        self.name, self.cards = name, cards

    @hookimpl
    def bh_plugin_info(self):
        return PluginInfo(name=self.name, stage="header", version="0")

    @hookimpl
    def bh_fill_header(self, frame, obs):
        return dict(self.cards)


def test_observatory_fixer_overrides_the_generic_plugin(tmp_path):
    pm = load_plugins(["fits_manager"])
    pm.register(Fixer("fix_site", {"SATURATE": (4000, "fixed"), "NEWKEY": "x"}), name="fix_site")
    header = standardise(make_frame(tmp_path), make_obs(), pm).header
    assert header["SATURATE"] == 4000 and header["NEWKEY"] == "x"
    assert setby(header)["SATURATE"] == "fix_site"
    assert any("BHOVERRD SATURATE: fix_site over fits_manager" in str(h)
               for h in header["HISTORY"])


def test_two_fixers_disagreeing_is_an_error_equal_values_are_not(tmp_path):
    pm = load_plugins(["fits_manager"])
    pm.register(Fixer("fix_a", {"GAIN": 2.0}), name="fix_a")
    pm.register(Fixer("fix_b", {"GAIN": 2.0}), name="fix_b")
    assert standardise(make_frame(tmp_path), make_obs(), pm).header["GAIN"] == 2.0
    pm.unregister(name="fix_b")
    pm.register(Fixer("fix_c", {"GAIN": 3.0}), name="fix_c")
    with pytest.raises(HeaderError, match="fix_a.*fix_c|fix_c.*fix_a"):
        standardise(make_frame(tmp_path, name="b.fits"), make_obs(), pm)


def test_invalid_keyword_from_a_plugin_is_refused(tmp_path):
    pm = load_plugins(["fits_manager"])
    pm.register(Fixer("bad", {"WAY_TOO_LONG": 1}), name="bad")
    with pytest.raises(HeaderError, match="invalid keyword"):
        standardise(make_frame(tmp_path), make_obs(), pm)


def test_merge_rule_in_isolation():
    cards, who, over = merge([("fix", False, {"A": (1, None)}),
                              ("generic", True, {"A": (2, None), "B": ("x", None)})])
    assert cards["A"][0] == 1 and who == {"A": "fix", "B": "generic"}
    assert over and over[0].startswith("A: fix over generic")


def test_plugin_info_declares_the_header_stage():
    info = fits_manager.bh_plugin_info()
    assert info.name == "fits_manager" and info.stage == "header"
    assert info.extra["generic"] is True


# --- sky: HJD / BJD / airmass ----------------------------------------------------------------
def _sun_helio_correction_days(jd_utc, ra_deg, dec_deg):
    """Heliocentric correction from the Astronomical Almanac's low-precision Sun.

    Independent of astropy's ephemeris: good to ~0.01 deg in the Sun's direction,
    i.e. ~0.1 s in the correction.
    """
    n = jd_utc + 69.184 / 86400 - 2451545.0
    g = math.radians((357.528 + 0.9856003 * n) % 360)
    lam = (280.460 + 0.9856474 * n) % 360 + 1.915 * math.sin(g) + 0.020 * math.sin(2 * g)
    lam = math.radians(lam - 3.824e-5 * n)          # equinox of date -> J2000
    eps = math.radians(23.4393)
    r_au = 1.00014 - 0.01671 * math.cos(g) - 0.00014 * math.cos(2 * g)
    sun = np.array([math.cos(lam), math.cos(eps) * math.sin(lam), math.sin(eps) * math.sin(lam)])
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    star = np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])
    au_light_days = 499.004784 / 86400
    return float(-r_au * sun @ star) * au_light_days


@pytest.mark.parametrize("date, ra, dec", [
    ("2017-12-20T01:33:43.317", 31.312099, 46.769087),
    ("2021-06-21T23:00:00", 270.0, -30.0),
    ("2019-03-20T05:00:00", 180.0, 0.0)])
def test_hjd_and_bjd_agree_with_independent_computations(tmp_path, date, ra, dec):
    header = fill(tmp_path, raw={"DATE-OBS": date, "RA": ra, "DEC": dec})
    mid = Time(date, scale="utc") + 30 * u.s
    assert header["JD"] == pytest.approx(mid.jd, abs=1e-8)
    # HJD: against the almanac formula (no astropy ephemeris), to 0.3 s (seen: < 0.03 s)
    expected_hjd = mid.jd + _sun_helio_correction_days(mid.jd, ra, dec)
    assert header["HJD"] == pytest.approx(expected_hjd, abs=3e-6)
    # BJD_TDB: against astropy's own light_travel_time called directly, to 1 ms
    site = EarthLocation.from_geodetic(-110.88 * u.deg, 31.68 * u.deg, 1268 * u.m)
    with offline_astropy():
        ltt = mid.light_travel_time(SkyCoord(ra * u.deg, dec * u.deg), "barycentric",
                                    location=site, ephemeris="builtin")
        expected_bjd = (mid.tdb + ltt).jd
    assert header["BJD"] == pytest.approx(expected_bjd, abs=1.2e-8)
    # helio vs bary differ by at most the Sun's offset from the barycentre (~0.01 AU ~ 5 s) + TT-UTC
    assert abs(header["BJD"] - header["HJD"] - 69.184 / 86400) < 10 / 86400


def test_airmass_altitude_and_moon_sun_cards_are_sane(tmp_path):
    header = fill(tmp_path)
    alt = header["OBJALT"]
    assert 0 < alt < 90 and 0 <= header["OBJAZ"] < 360
    assert header["AIRMASS"] == pytest.approx(1 / math.cos(math.radians(90 - alt)), abs=2e-3)
    assert 0 <= header["MOONILLU"] <= 1
    assert 0 <= header["MOONDIST"] <= 180 and 0 <= header["SUNDIST"] <= 180
    assert -90 <= header["SUNALT"] <= 90 and -90 <= header["MOONALT"] <= 90
    assert header["SUNALT"] < -12                       # 18:34 local in December, Arizona
    assert header["COORDSRC"] == "RA/DEC"


def test_sexagesimal_ra_in_hours_and_no_site_still_gives_bjd(tmp_path):
    obs = make_obs(LONGITUD=None, LATITUDE=None)
    header = fill(tmp_path, obs, raw={"RA": "02:05:14.9", "DEC": "+46:46:08.7"})
    assert header["RA"] == pytest.approx(31.312083, abs=1e-5)
    assert header["DEC"] == pytest.approx(46.769083, abs=1e-5)
    assert "BJD" in header and "HJD" in header
    assert "AIRMASS" not in header and "LONGITUD" not in header


def test_equinox_of_date_coordinates_are_written_in_icrs(tmp_path):
    """Telescope controllers often write RA/DEC for the equinox of date ('JNOW')."""
    obs = make_obs(EQUINOX=("Epoch of coord. system", "-", "str", "JNOW"))
    header = fill(tmp_path, obs)
    mid = Time("2017-12-20T01:34:13.317", scale="utc")
    with offline_astropy():
        icrs = SkyCoord(31.312099 * u.deg, 46.769087 * u.deg,
                        frame=FK5(equinox=Time(mid.jyear, format="jyear"))).icrs
    assert header["RA"] == pytest.approx(icrs.ra.deg, abs=1e-6)
    assert header["DEC"] == pytest.approx(icrs.dec.deg, abs=1e-6)
    assert abs(header["RA"] - 31.312099) > 0.2        # 18 years of precession at Dec +47
    assert header["EQUINOX"] == 2000.0


def test_frame_wcs_centre_is_the_target_when_there_is_no_ra_dec(tmp_path):
    wcs = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 15.5, "CRPIX2": 10.5,
           "CRVAL1": 120.0, "CRVAL2": 30.0, "CDELT1": -0.001, "CDELT2": 0.001}
    header = fill(tmp_path, raw=wcs, drop=("RA", "DEC"))
    assert header["COORDSRC"] == "WCS"
    assert "RA" not in header
    assert header["CRVAL1"] == 120.0 and header["CDELT1"] == -0.001   # the WCS is untouched


def test_writing_over_the_input_is_refused(tmp_path):
    frame = make_frame(tmp_path, name="same.fits")
    before = frame.path.read_bytes()
    with pytest.raises(HeaderError, match="overwrite the input"):
        write_standardised(frame.path, make_obs(), tmp_path)
    assert frame.path.read_bytes() == before


# --- CLI -------------------------------------------------------------------------------------
def _cli():
    app = typer.Typer()
    app.command()(headers_command)
    return app


def test_cli_goes_on_after_a_bad_file_and_exits_1(tmp_path):
    good = make_frame(tmp_path, name="good.fits").path
    bad = make_frame(tmp_path, drop=("DATE-OBS",), name="bad.fits").path
    info = tmp_path / "TEST_CAM_obs.info"
    info.write_text("".join(f"  {d} : {r} : {k} : {f} : {v} : test : F\n"
                            for k, (d, r, f, v) in BASE.items()))
    out = tmp_path / "out"
    result = CliRunner().invoke(_cli(), [str(bad), str(good), str(tmp_path / "missing.fits"),
                                         "--observatory", str(info), "--out", str(out)])
    assert result.exit_code == 1
    text = result.output
    assert "bad.fits" in text and "DATE-OBS" in text
    assert "missing.fits" in text and "Traceback" not in text
    assert (out / "good.fits").exists() and not (out / "bad.fits").exists()


def test_cli_unknown_observatory_is_one_clear_line(tmp_path):
    good = make_frame(tmp_path, name="good.fits").path
    result = CliRunner().invoke(_cli(), [str(good), "--observatory", "NO_SUCH_CAMERA",
                                         "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "NO_SUCH_CAMERA" in result.output and "Traceback" not in result.output


def test_card_text_is_folded_to_printable_ascii():
    from bhcore.headers import fits_text
    assert fits_text("Białków Universitätssternwarte") == "Bialkow Universitatssternwarte"
    assert fits_text("frame\tπ.fits") == "frame??.fits"
    assert fits_text("plain-ascii_1.fits") == "plain-ascii_1.fits"
