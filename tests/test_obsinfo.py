"""obs.info parsing, validation and exact writing (no database here)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bhcore.errors import ObsInfoError, RegistryError
from bhcore.registry import (format_obsinfo, parse_obsinfo, read_obsinfo, settings_from_obsinfo,
                             validate_obsinfo, write_obsinfo)
from bhcore.registry.obsinfo import ObsInfoLine, obsinfo_filename, oname_from_path

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "seed" / "ccdphot2_bhtom_data_reduction_slides.txt"
REFERENCE = ROOT.parent / "shared" / "reference" / "obs_info.md"

# The February-2020 template of the obs.info reference (abridged there too).
TEMPLATE_2020 = """\
# OBSERVATORY
  Observatory                 : OBSERVAT : OBSERVAT : str   :  OAN-SPM                 : observatory ID : F
  Observatory longitude [deg] : LONGITUD : LONGITUD : float :  115.46666667            : deg            : F
  Organization                : -        : ORIGIN   : str   :  UNAM                    : institution ID : F
# TIME (start of exposition)
  Time system                 : -        : TIMESYS  : str                 :  UTC : used time standard : F
  Date                        : DATE-OBS : DATE-OBS : yyyy-mm-ddThh:mm:ss :  -   : date & time (start) : F
  Time                        : UT       : TIME-OBS : hh:mm:ss            :  -   : time (start)        : F
# INSTRUMENT
  Instr. mode, readout speed* : GAIN     : READTIME : int   :  2000      | 16000     : ns/pix  : F
  Gain*                       : -        : GAIN     : float :  9.00      | 6.70      : e/ADU   : F
  Read-out noise*             : -        : RDNOISE  : float :  1.80      | 1.00      : ADU     : F
  Saturation limit*           : -        : SATURATE : int   :  32000     | 45000     : ADU     : F
  Pixel scale along x-axis*   : -        : CDELT1   : float :  0.0001702 | 0.0001702 : deg/pix : F
  Image type                  : IMAGETYP : OBSTYPE  : str   :  zero, dark, flat, object | BIAS, DARK, FLAT, OBJECT : type of data : F
  Filters                     : FILTERS  : FILTER   : str   :  B2, V2 | B, V           : passband ID    : F
# CALIBRATION
  Trim section                : TRIMSEC  : TRIMSEC  : str   :  [54:2101,1:2048]        : useful area    : F
"""


def seed_obsinfo() -> str:
    """The GoChile-GoT1 obs.info of the seed slides (tab layout), cut out at test time."""
    if not SEED.is_file():
        pytest.skip(f"seed slides {SEED} are absent")
    lines = SEED.read_text(encoding="utf-8").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("#\tDESCRIPTION"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return "\n".join(lines[start:end]) + "\n"


def line(desc, raw, std, fmt, value, comment="c", flag="F"):
    return f"  {desc} : {raw} : {std} : {fmt} : {value} : {comment} : {flag}\n"


# --- the seed's obs.info -------------------------------------------------------------------
def test_seed_obsinfo_round_trips_exactly():
    text = seed_obsinfo()
    assert "\t: " in text and text.count("\n") == 39
    info = parse_obsinfo(text, path="seed")
    assert len(info.entries) == 33          # 6 lines are '#' headers
    assert format_obsinfo(info) == text
    assert parse_obsinfo(format_obsinfo(info), path="seed") == info


def test_seed_values_and_conventions():
    info = parse_obsinfo(seed_obsinfo())
    obs = settings_from_obsinfo(info, oname="GoChile-GoT1_ASI6200")
    assert obs.lon_east_deg == pytest.approx(-70.7631)
    assert obs.lat_deg == pytest.approx(-30.4725)
    assert obs.alt_m == pytest.approx(1560.0)
    assert obs.read_noise_adu == pytest.approx(14.0)
    assert obs.saturation == pytest.approx(62000)
    assert obs.gain is None                       # read from the raw GAIN keyword
    assert obs.value("GAIN", {"GAIN": 0.25}.get) == 0.25
    assert info.get("JD").raw_keyword is None and info.get("JD").value_is_dash
    assert info.get("OBSERVER").value_is_dash
    assert info.get("TIME-OBS").format == "hh:mm:ss"
    assert info.get("DATE-OBS").format == "yyyy/mm/dd"


def test_seed_cdelta_alias_is_read_as_cdelt_and_kept_on_write():
    text = seed_obsinfo()
    info = parse_obsinfo(text)
    entry = info.get("CDELT1")
    assert entry is info.get("CDELTA1")
    assert entry.std_keyword == "CDELTA1" and entry.keyword == "CDELT1"
    assert float(entry.value) == pytest.approx(0.000164046)
    changed = info.set_value("CDELT2", "-0.000164046")
    assert "\t: CDELTA2\t: float\t: -0.000164046\t: deg/pix" in changed.text
    assert "CDELT2\t" not in changed.text


def test_seed_filter_translation_third_form():
    info = parse_obsinfo(seed_obsinfo())
    entry = info.get("FILTER")
    assert entry.raw_keyword == "FILT-1"
    assert entry.std_values == "B, B, V, R, I, G"
    assert entry.translation_pairs() == [("Blue", "B"), ("B", "B"), ("V", "V"), ("R", "R"),
                                         ("Ha03", "R"), ("I", "I"), ("G", "G"), ("DARK", "G")]
    obs = settings_from_obsinfo(info, oname="X")
    assert obs.translate("FILTER", "Ha03") == "R"
    assert obs.translate("FILTER", "DARK") == "G"
    assert obs.translate("FILTER", " i ") == "I"
    assert obs.translate("FILTER", "  bLuE ") == "B"
    assert obs.translate("FILTER", "U") is None
    assert entry.mode_values() == [entry.value]


# --- the February-2020 template ------------------------------------------------------------
def test_template_2020_matches_the_reference():
    if not REFERENCE.is_file():
        pytest.skip(f"reference {REFERENCE} is absent")
    doc = REFERENCE.read_text(encoding="utf-8")
    block = doc.split("## An older template", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    assert block == TEMPLATE_2020


def test_template_2020_round_trips_and_keeps_colons_in_values():
    info = parse_obsinfo(TEMPLATE_2020, path="template")
    assert format_obsinfo(info) == TEMPLATE_2020
    assert info.get("TRIMSEC").value == "[54:2101,1:2048]"
    assert info.get("DATE-OBS").format == "yyyy-mm-ddThh:mm:ss"
    assert info.get("TIME-OBS").raw_keyword == "UT"
    assert [item.section for item in info.items if isinstance(item, ObsInfoLine)] == [
        "OBSERVATORY", "TIME", "INSTRUMENT", "CALIBRATION"]


@pytest.mark.parametrize("header, gain, rdnoise, saturation", [
    ({"GAIN": 2000}, "9.00", "1.80", "32000"),
    ({"GAIN": 16000}, "6.70", "1.00", "45000"),
    ({"GAIN": "16000"}, "6.70", "1.00", "45000"),
    ({"GAIN": 16000.0}, "6.70", "1.00", "45000"),
    ({}, "9.00", "1.80", "32000"),               # keyword absent: mode 0
])
def test_camera_mode_selected_by_readtime_raw_keyword(header, gain, rdnoise, saturation):
    obs = settings_from_obsinfo(parse_obsinfo(TEMPLATE_2020), oname="OAN-SPM_Marconi_3")
    assert obs.obsinfo.get("GAIN").mode_values() == ["9.00", "6.70"]
    assert obs.value("GAIN", header.get) == gain
    assert obs.value("RDNOISE", header.get) == rdnoise
    assert obs.value("SATURATE", header.get) == saturation


def test_template_image_type_and_filter_translation():
    obs = settings_from_obsinfo(parse_obsinfo(TEMPLATE_2020), oname="X")
    assert obs.translate("OBSTYPE", "Zero") == "BIAS"
    assert obs.translate("OBSTYPE", " OBJECT ") == "OBJECT"
    assert obs.translate("FILTER", "v2") == "V"
    assert obs.translate("FILTER", "V") is None


# --- round trip with changes ----------------------------------------------------------------
def test_changed_value_rewrites_only_that_field():
    info = parse_obsinfo(TEMPLATE_2020)
    changed = info.set_value("SATURATE", "33000 | 46000")
    old_lines, new_lines = TEMPLATE_2020.splitlines(), changed.text.splitlines()
    diff = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert len(old_lines) == len(new_lines) and len(diff) == 1
    assert diff[0][1].startswith(
        "  Saturation limit*           : -        : SATURATE : int   :  33000 | 46000")
    assert parse_obsinfo(format_obsinfo(changed)) == changed
    assert changed.get("SATURATE").mode_values() == ["33000", "46000"]
    with pytest.raises(ObsInfoError):
        info.set_value("SATURATE", "lots")


def test_line_endings_blank_lines_and_bom_survive():
    text = "\ufeff# OBSERVATORY\r\n\r\n" + line("Observatory", "-", "OBSERVAT", "str", "X").replace(
        "\n", "\r\n") + "# trailing note without newline"
    info = parse_obsinfo(text)
    assert format_obsinfo(info) == text
    assert info.get("OBSERVAT").value == "X"
    assert [i.kind for i in info.items if isinstance(i, ObsInfoLine)] == [
        "section", "blank", "comment"]


def test_both_dash_and_time_literal_with_colons():
    text = (line("Julian date", "-", "JD", "float", "-")
            + line("Time", "-", "TIME-OBS", "hh:mm:ss", "12:30:00", "time (start)")
            + line("Date", "-", "DATE-OBS", "yyyy-mm-ddThh:mm:ss", "2021-03-04T12:30:00.5"))
    info = parse_obsinfo(text)
    assert info.get("TIME-OBS").value == "12:30:00"
    assert info.get("DATE-OBS").value == "2021-03-04T12:30:00.5"
    assert info.get("JD").value_is_dash and info.get("JD").raw_keyword is None


def test_write_is_atomic_and_exact(tmp_path):
    text = seed_obsinfo() if SEED.is_file() else TEMPLATE_2020
    info = parse_obsinfo(text)
    target = write_obsinfo(info, tmp_path / "X_obs.info")
    assert target.read_bytes() == text.encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["X_obs.info"]
    assert read_obsinfo(target) == parse_obsinfo(text, path=target)


def test_latin1_file_is_written_back_byte_for_byte(tmp_path):
    path = tmp_path / "OLD_obs.info"
    payload = ("# Bia\u0142k\u00f3w note: caf\u00e9\n"
               + line("Observatory", "-", "OBSERVAT", "str", "Caf\u00e9")).encode("latin-1",
                                                                                  "replace")
    path.write_bytes(payload)
    info = read_obsinfo(path)
    assert info.encoding == "latin-1"
    write_obsinfo(info)
    assert path.read_bytes() == payload


# --- errors name file, line and field ------------------------------------------------------
GOOD = line("Observatory", "-", "OBSERVAT", "str", "X")


@pytest.mark.parametrize("bad, field, words", [
    ("  Gain : - : GAIN : float : 2.0 : e/ADU\n", "field count", "found 6"),
    (line("Gain", "-", "GAIN", "float", "2,0"), "VALUE(S)", "not a float"),
    (line("Bin", "-", "BIN", "int", "1.5"), "VALUE(S)", "not an int"),
    (line("Gain", "-", "GAINN", "float", "2.0"), "standard KEYWORD", "did you mean GAIN"),
    (line("Gain", "-", "GAIN", "float", "2.0", flag="Yes"), "CONF FLAG", "T or F"),
    (line("Gain", "-", "GAIN", "double", "2.0"), "FORMAT", "unknown format"),
    (line("Time", "-", "TIME-OBS", "hh:mm:ss", "12h30"), "VALUE(S)", "does not match"),
    (line("Gain", "-", "GAIN", "float", "9.0 | 6.7"), "VALUE(S)", "does not end in '*'"),
    (line("Filters", "FILTER", "FILTER", "str", "B2, V2, R2 | B, V"), "VALUE(S)",
     "3 raw names but 2"),
    (line("Filters", "FILTER", "FILTER", "str", "B / V, V | V, B"), "VALUE(S)", "maps to both"),
    (line("Latitude", "-", "LATITUDE", "float", "95.0"), "VALUE(S)", "outside"),
    (line("Opts", "-", "BH_OPTS", "str", "fwhm 3"), "VALUE(S)", "key=value"),
    (line("Astrometry", "-", "BH_ASTROM", "str", "scamp,, nova"), "VALUE(S)", "backend name"),
    (GOOD, "standard KEYWORD", "already defined on line 1"),
])
def test_errors_name_file_line_and_field(bad, field, words):
    text = GOOD + bad
    with pytest.raises(ObsInfoError) as caught:
        parse_obsinfo(text, path="cams/BAD_obs.info")
    err = caught.value
    assert (err.path, err.line, err.field) == ("cams/BAD_obs.info", 2, field)
    assert words in err.message
    assert str(err).startswith(f"cams/BAD_obs.info:2: field '{field}': ")


def test_eight_field_translation_lists_must_match():
    bad = "  Filters : FILT : FILTER : str : Blue, B, V / R : B, B : passband : F\n"
    with pytest.raises(ObsInfoError, match="3 raw names but 2 standard names") as caught:
        parse_obsinfo(GOOD + bad, path="f")
    assert caught.value.line == 2
    # 8 fields on a line that has no translation list is a field-count error
    with pytest.raises(ObsInfoError, match="found 8") as caught:
        parse_obsinfo(GOOD + "  Gain : - : GAIN : float : 2 : 3 : e/ADU : F\n", path="f")
    assert caught.value.field == "field count"


def test_mismatched_camera_mode_lists():
    text = (line("Readout*", "GAIN", "READTIME", "int", "2000 | 16000")
            + line("Gain*", "-", "GAIN", "float", "9.00 | 6.70")
            + line("Read-out noise*", "-", "RDNOISE", "float", "1.8 | 1.0 | 0.9")
            + line("Saturation*", "-", "SATURATE", "int", "32000"))   # one value: all modes
    with pytest.raises(ObsInfoError, match=r"3 camera-mode values, but line 1 \(READTIME\) has 2") \
            as caught:
        parse_obsinfo(text, path="m_obs.info")
    assert (caught.value.line, caught.value.field) == (3, "VALUE(S)")


def test_validate_reports_every_problem_and_parse_counts_them():
    text = (GOOD + line("Gain", "-", "GAIN", "float", "x")
            + "  only : three : fields\n" + line("Bin", "-", "BIN", "int", "y"))
    info, errors = validate_obsinfo(text, path="v")
    assert info is None
    assert [e.line for e in errors] == [2, 3, 4]
    with pytest.raises(ObsInfoError, match=r"\(and 2 more problem\(s\) in this file\)"):
        parse_obsinfo(text, path="v")


def test_read_missing_file_is_an_obsinfo_error(tmp_path):
    with pytest.raises(ObsInfoError, match="cannot read"):
        read_obsinfo(tmp_path / "nope_obs.info")


# --- bhcore's section -----------------------------------------------------------------------
def test_pipeline_section_backends_options_and_oname():
    text = (GOOD + "# PIPELINE (bhcore)\n"
            + line("Camera prefix (ONAME)", "-", "ONAME", "str", "SITE_CAM 1")
            + line("Astrometry", "-", "BH_ASTROM", "str", "astrometry_nova, astrometry_scamp")
            + line("Photometry", "-", "BH_PHOT", "str", "phot_sex")
            + line("Options", "-", "BH_OPTS", "str",
                   "phot_python.fwhm=3.0; phot_sex.detect_thresh=2; dry=true; tag=a b"))
    info = parse_obsinfo(text, path="elsewhere/OTHER_obs.info")
    assert info.items[1].section == "PIPELINE (bhcore)"
    obs = settings_from_obsinfo(info)
    assert obs.oname == "SITE_CAM 1"
    assert obs.backends_for("astrometry") == ("astrometry_nova", "astrometry_scamp")
    assert obs.backends_for("photometry") == ("phot_sex",)
    assert obs.backends_for("calibration") == ("calibrate_builtin",)   # default
    assert dict(obs.plugin_settings) == {"phot_python.fwhm": 3.0, "phot_sex.detect_thresh": 2,
                                         "dry": True, "tag": "a b"}
    assert settings_from_obsinfo(info, oname="FORCED").oname == "FORCED"


def test_oname_from_file_name_and_missing_oname():
    info = parse_obsinfo(GOOD, path="registry/Adyu60_Andor-934_obs.info")
    assert settings_from_obsinfo(info).oname == "Adyu60_Andor-934"
    assert oname_from_path("x/TERSKOL-2m_FLI-PL4301_obs_9MSeywL.info") == "TERSKOL-2m_FLI-PL4301"
    assert oname_from_path("notes.txt") is None
    with pytest.raises(RegistryError, match="no ONAME"):
        settings_from_obsinfo(parse_obsinfo(GOOD))
    assert obsinfo_filename("APT2_Only instrumental photometry file camera") == \
        "APT2_Only-instrumental-photometry-file-camera_obs.info"


@pytest.mark.parametrize("west, east", [("321.77459", 38.22541), ("-38.22541", 38.22541),
                                        ("70.7631", -70.7631), ("180", 180.0), ("0", 0.0)])
def test_west_positive_longitude_to_east(west, east):
    info = parse_obsinfo(line("Longitude", "-", "LONGITUD", "float", west))
    obs = settings_from_obsinfo(info, oname="X")
    assert obs.lon_east_deg == pytest.approx(east, abs=1e-9)
    assert info.get("LONGITUD").value == west          # the file keeps its convention
