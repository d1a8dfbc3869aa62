"""The phot_daophot backend (IRAF DAOPHOT through irafcl) and the IRAF task runner.

Engine tests skip only when irafcl is not installed; the real-data test reads
../shared/data in place (fixture ``shared_data``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from bhcore.errors import ExternalToolError, MissingEngine, SettingsError
from bhcore.frame import read_frame
from bhcore.pipeline import resolve_settings, run_photometry
from bhcore.plugins import load_plugins, plugin_info
from bhcore.testing.contract import bright_isolated, match, scatter_vs_floor

needs_iraf = pytest.mark.skipif(
    shutil.which("irafcl") is None,
    reason="irafcl is not installed (apt-get install -y --no-install-recommends iraf "
           "iraf-noao)")
needs_sextractor = pytest.mark.skipif(
    shutil.which("source-extractor") is None or shutil.which("psfex") is None,
    reason="source-extractor or psfex is not installed (apt-get install -y "
           "--no-install-recommends source-extractor psfex)")

CAMERA = {"gain": 1.6, "read_noise_adu": 9.0 / 1.6, "saturation": 60000.0}

# A PHOT output with three apertures and ONE star (astropy's 'daophot' reader fails on
# it) whose MERR overflows its %-6.3f field into PIER ("11.3310" = 11.331 and 0).
MAG_ONE_STAR = r"""#K IRAF       = NOAO/IRAFV2.17          version    %-23s
#K ZMAG       = 25.                     zmag       %-23.7g
#
#N IMAGE               XINIT     YINIT     ID    COORDS                 LID    \
#U imagename           pixels    pixels    ##    filename               ##     \
#F %-23s               %-10.3f   %-10.3f   %-6d  %-23s                  %-6d    
#
#N XCENTER    YCENTER    XSHIFT  YSHIFT  XERR    YERR            CIER CERROR   \
#U pixels     pixels     pixels  pixels  pixels  pixels          ##   cerrors  \
#F %-14.3f    %-11.3f    %-8.3f  %-8.3f  %-8.3f  %-15.3f         %-5d %-9s      
#
#N RAPERT   SUM           AREA       FLUX          MAG    MERR   PIER PERROR   \
#U scale    counts        pixels     counts        mag    mag    ##   perrors  \
#F %-12.2f  %-14.7g       %-11.7g    %-14.7g       %-7.3f %-6.3f %-5d %-9s      
#
image.fits             77.510    77.487    1     image.coo              1      \
   77.445     77.417     -0.065  -0.070  0.002   0.002          0    NoError   \
   3.00     268352.4      28.37416   251275.3      11.500 0.002 0    NoError  *\
   5.00     17058.6       28.47807   10.49746      22.447 11.3310    NoError  *\
   8.00     INDEF         201.0357   INDEF         INDEF  INDEF 2    BadPixels * 
"""

ALS_TWO_STARS = r"""#K PSFMAG     = 10.478                  magnitude  %-23.7g
#N ID    XCENTER   YCENTER   MAG         MERR          MSKY           NITER    \
#U ##    pixels    pixels    magnitudes  magnitudes    counts         ##       \
#F %-9d  %-10.3f   %-10.3f   %-12.3f     %-14.3f       %-15.7g        %-6d     
#
#N         SHARPNESS   CHI         PIER  PERROR                                \
#U         ##          ##          ##    perrors                               \
#F         %-23.3f     %-12.3f     %-6d  %-13s                                  
#
2        301.106   27.604    12.172      0.005         603.0703       4        \
           0.007       0.659       0     No_error                               
3        61.618    31.227    15.976      0.036         597.1754       4        \
           -0.027      0.927       0     No_error                               
"""


@pytest.fixture(scope="module")
def precision_field():
    """1024x1024, 300 Moffat stars (FWHM 3 px), ~100 of them bright and isolated."""
    from bhcore.testing.synthetic import make_star_field
    return make_star_field((1024, 1024), 300, fwhm=3.0, saturation=60000.0, seed=7,
                           flux_range=(2e3, 4e5))


@pytest.fixture(scope="module")
def precision_table(precision_field):
    if shutil.which("irafcl") is None:
        pytest.skip("irafcl is not installed")
    return run_photometry(precision_field.to_frame(), "phot_daophot",
                          overrides={**CAMERA, "aperture_radii": [4.5]})


# --- description, settings, scripts and parsing (no engine needed) --------------------
def test_plugin_info_is_implemented_with_settings():
    info = plugin_info(load_plugins(["phot_daophot"]), "phot_daophot")
    assert info.implemented and info.stage == "photometry"
    (exe,) = info.executables
    assert exe.name == "irafcl" and exe.apt_package == "iraf" and exe.version_args == ()
    defaults = info.default_settings()
    assert defaults["function"] == "moffat25" and 3 <= defaults["nclean"] <= 6
    assert defaults["min_lenuserarea"] >= 100000


def test_invalid_settings_are_rejected():
    info = plugin_info(load_plugins(["phot_daophot"]), "phot_daophot")
    for bad in ({"function": "sersic"}, {"varorder": 3}, {"aperture_radii": [0.0]}):
        with pytest.raises(SettingsError):
            resolve_settings("phot_daophot", info, overrides=bad)
    ok = resolve_settings("phot_daophot", info, overrides={"function": "gauss, moffat25"})
    assert ok["function"] == "gauss,moffat25"


def test_every_parameter_is_set_with_camera_units():
    from bh_phot_daophot import script as cl
    from bh_phot_daophot.settings import Settings

    settings = {**Settings().model_dump(), "gain": 2.0, "read_noise_adu": 4.0,
                "saturation": 30000.0}
    g = cl.geometry(settings, fwhm=3.0, sigma=12.5, datamin=None, n_pixels=512 * 512)
    lines = cl.parameter_lines(settings, g, varorder=1)
    values = dict(line.split(" = ", 1) for line in lines)
    required = {
        "datapars": ["scale", "fwhmpsf", "emission", "sigma", "datamin", "datamax", "noise",
                     "ccdread", "gain", "readnoise", "epadu", "exposure", "airmass",
                     "filter", "obstime", "itime", "xairmass", "ifilter", "otime"],
        "findpars": ["threshold", "nsigma", "ratio", "theta", "sharplo", "sharphi",
                     "roundlo", "roundhi", "mkdetections"],
        "centerpars": ["calgorithm", "cbox", "cthreshold", "minsnratio", "cmaxiter",
                       "maxshift", "clean", "rclean", "rclip", "kclean", "mkcenter"],
        "fitskypars": ["salgorithm", "annulus", "dannulus", "skyvalue", "smaxiter",
                       "sloclip", "shiclip", "snreject", "sloreject", "shireject", "khist",
                       "binsize", "smooth", "rgrow", "mksky"],
        "photpars": ["weighting", "apertures", "zmag", "mkapert"],
        "daopars": ["function", "varorder", "nclean", "saturated", "matchrad", "psfrad",
                    "fitrad", "recenter", "fitsky", "groupsky", "sannulus", "wsannulus",
                    "flaterr", "proferr", "maxiter", "clipexp", "cliprange", "mergerad",
                    "critsnratio", "maxnstar", "maxgroup"],
    }
    for task, names in required.items():
        for name in names:
            assert f"{task}.{name}" in values, f"{task}.{name} is not set"
    assert values["datapars.epadu"] == "2.0"                  # e/ADU
    assert values["datapars.readnoise"] == "8.0"              # electrons = 4 ADU * 2
    assert float(values["datapars.datamax"]) < 30000.0        # clipped pixels are bad
    assert values["datapars.fwhmpsf"] == "3.0" and values["datapars.sigma"] == "12.5"
    assert values["daopars.nclean"] == "3" and values["daopars.varorder"] == "1"
    assert values["daopars.fitrad"] == "4.5" and values["daopars.psfrad"] == "12.0"
    assert values["photpars.apertures"] == '"9"'              # 3 FWHM normalisation
    assert values["datapars.datamin"] == "INDEF"


def test_read_daophot_single_star_multi_aperture(tmp_path):
    from bh_phot_daophot.parse import aperture_columns, read_daophot

    path = tmp_path / "one.mag"
    path.write_text(MAG_ONE_STAR)
    table = read_daophot(path)
    assert len(table) == 1 and table["ID"][0] == 1
    assert table["XCENTER"][0] == pytest.approx(77.445)
    assert list(table["RAPERT1", "RAPERT2", "RAPERT3"][0]) == [3.0, 5.0, 8.0]
    assert table["MERR2"][0] == pytest.approx(11.331) and table["PIER2"][0] == 0
    assert np.ma.is_masked(table["MAG3"][0]) and table["PERROR3"][0] == "BadPixels"
    assert table.meta["keywords"]["ZMAG"] == "25."
    cols = aperture_columns([table], np.array([1]), [5.0, 3.0, 8.0], zmag=25.0)
    assert cols["mag_aper_3"][0] == pytest.approx(11.5)
    assert cols["flux_aper_3"][0] == pytest.approx(10 ** (-0.4 * (11.5 - 25.0)))
    assert np.isnan(cols["mag_aper_8"][0])


def test_read_daophot_allstar_and_build_table(tmp_path):
    from bh_phot_daophot.parse import build_table, read_daophot

    from bhcore.tables import SourceFlag

    path = tmp_path / "x.als"
    path.write_text(ALS_TWO_STARS)
    als = read_daophot(path)
    assert list(als["ID"]) == [2, 3] and list(als["PERROR"]) == ["No_error"] * 2
    saturated = np.zeros((36, 400), dtype=bool)
    saturated[30, 60] = True
    table = build_table(als, zmag=25.0, fwhm=3.0, fitrad=3.0, psfrad=12.0,
                        shape=(36, 400), saturated_pixels=saturated, bad_pixels=None,
                        apertures={}, meta={"backend": "phot_daophot"})
    assert list(table["id"]) == [2, 3]
    assert table["x"][0] == pytest.approx(300.106) and table["y"][1] == pytest.approx(30.227)
    flux = 10 ** (-0.4 * (12.172 - 25.0))
    assert table["flux"][0] == pytest.approx(flux)
    assert table["flux_err"][0] == pytest.approx(flux * 0.005 * np.log(10) / 2.5)
    assert table["flags"][1] & SourceFlag.SATURATED
    assert table["flags"][0] & SourceFlag.NEAR_EDGE        # y = 26.6: psfrad reaches 36
    assert list(table["flags_raw"]) == [0, 0]


def test_empty_daophot_file_reads_as_empty_table(tmp_path):
    from bh_phot_daophot.parse import read_daophot
    path = tmp_path / "empty.coo"
    path.write_text("#K IRAF = NOAO\n#N XCENTER YCENTER\n#U pixels pixels\n"
                    "#F %-13.3f %-10.3f\n#\n")
    assert len(read_daophot(path)) == 0


def test_unsafe_task_lines_are_refused(tmp_path):
    from bh_phot_daophot import run_iraf_task
    image = tmp_path / "f.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(image)
    for line in ("!rm -rf /", "logout", 'imstat ("a")\nprint ("x")'):
        with pytest.raises(SettingsError):
            run_iraf_task([line], image)


def test_missing_engine_says_how_to_install(monkeypatch, tmp_path):
    from bhcore.testing.synthetic import make_star_field
    monkeypatch.setenv("PATH", str(tmp_path))
    frame = make_star_field((64, 64), 2, seed=1).to_frame()
    with pytest.raises(MissingEngine, match="apt-get install -y --no-install-recommends "
                                            "iraf"):
        run_photometry(frame, "phot_daophot")


# --- the IRAF task runner ---------------------------------------------------------------
@needs_iraf
def test_run_iraf_task_on_a_copy_with_an_isolated_home(tmp_path, monkeypatch):
    from bh_phot_daophot import run_iraf_task
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    image = tmp_path / "f.fits"
    data = np.full((20, 30), 7.0, np.float32)
    fits.PrimaryHDU(data).writeto(image)
    before = image.read_bytes()
    log = run_iraf_task(['imstatistics ("image.fits", fields="npix,mean", format-)',
                         'imarith ("image.fits", "*", 2, "double.fits")'],
                        image, timeout=120, output_dir=tmp_path / "out",
                        outputs=["double.fits"])
    assert "600  7." in log
    assert image.read_bytes() == before                       # the original is untouched
    assert fits.getdata(tmp_path / "out" / "double.fits").mean() == pytest.approx(14.0)
    assert list(home.iterdir()) == []                         # nothing in the real HOME


@needs_iraf
def test_run_iraf_task_reports_failures(tmp_path):
    from bh_phot_daophot import run_iraf_task
    image = tmp_path / "f.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(image)
    with pytest.raises(ExternalToolError, match="no_such_image") as info:
        run_iraf_task(['imstatistics ("no_such_image.fits")'], image, timeout=120)
    assert "imstatistics" in str(info.value)


# --- photometry on synthetic frames ------------------------------------------------------
@needs_iraf
def test_allstar_and_aperture_scatter_reach_the_noise_floor(precision_field, precision_table):
    truth = precision_field.truth
    select = bright_isolated(truth, (1024, 1024), 3.0)
    psf = scatter_vs_floor(precision_table, truth, "mag", "psf", select=select)
    aper = scatter_vs_floor(precision_table, truth, "mag_aper_4p5", "aperture",
                            aperture_radius=4.5, select=select)
    print(f"phot_daophot ALLSTAR scatter {psf.scatter_mag:.4f} / CRLB {psf.floor_mag:.4f} = "
          f"{psf.ratio:.3f} (n={psf.n_stars}); PHOT r=4.5 {aper.scatter_mag:.4f} / "
          f"{aper.floor_mag:.4f} = {aper.ratio:.3f}")
    assert psf.n_stars >= 60 and aper.n_stars >= 60
    assert psf.ratio <= 1.2
    assert aper.ratio <= 1.2
    assert precision_table.meta["flux_type"] == "psf"
    assert precision_table.meta["varorder"] == 1


@needs_iraf
@needs_sextractor
def test_engines_agree_within_their_errors(precision_field, precision_table):
    """SExtractor+PSFEx and DAOPHOT agree star by star after one zero-point offset."""
    truth = precision_field.truth
    sex = run_photometry(precision_field.to_frame(), "phot_sex",
                         overrides={**CAMERA, "aperture_radii": [4.5]})
    dao = precision_table
    select = bright_isolated(truth, (1024, 1024), 3.0)
    i_sex, _ = match(sex, truth)
    i_dao, _ = match(dao, truth)
    both = select & (i_sex >= 0) & (i_dao >= 0)
    both &= (np.asarray(sex["flags"])[i_sex] == 0) & (np.asarray(dao["flags"])[i_dao] == 0)
    assert both.sum() >= 60
    for mag, err in (("mag", "mag_err"), ("mag_aper_4p5", "magerr_aper_4p5")):
        diff = np.asarray(sex[mag])[i_sex[both]] - np.asarray(dao[mag])[i_dao[both]]
        sigma = np.hypot(np.asarray(sex[err])[i_sex[both]], np.asarray(dao[err])[i_dao[both]])
        chi = (diff - np.median(diff)) / sigma
        print(f"{mag}: zero-point offset {np.median(diff):+.4f} mag, rms chi "
              f"{np.sqrt(np.mean(chi ** 2)):.2f}, max |chi| {np.max(np.abs(chi)):.2f}")
        assert abs(np.median(diff)) < 0.05
        assert np.sqrt(np.mean(chi ** 2)) < 1.0         # both see the same pixel noise
        assert np.max(np.abs(chi)) < 4.0


@needs_iraf
def test_residual_image_is_written_and_recorded(tmp_path):
    from bhcore.testing.synthetic import make_star_field
    field = make_star_field((256, 256), 40, fwhm=3.0, seed=4, flux_range=(5e3, 2e5))
    frame = field.to_frame().replace(path=tmp_path / "night_001.fits")
    table = run_photometry(frame, "phot_daophot",
                           overrides={**CAMERA, "products_dir": str(tmp_path / "out")})
    residual = Path(table.meta["residual_image"])
    assert residual == tmp_path / "out" / "night_001_residual.fits"
    data = read_frame(residual).data
    assert data.shape == field.image.shape
    assert np.std(data) < 0.3 * np.std(field.image)


@needs_iraf
def test_second_pass_finds_stars_hidden_in_the_first():
    """A dense frame (1000 stars on 512x512): the residual holds stars pass 1 missed."""
    from bhcore.testing.synthetic import make_star_field
    field = make_star_field((512, 512), 1000, fwhm=3.0, seed=12, flux_range=(2e3, 3e5),
                            blends=False)
    one = run_photometry(field.to_frame(), "phot_daophot", overrides=CAMERA)
    two = run_photometry(field.to_frame(), "phot_daophot",
                         overrides={**CAMERA, "second_pass": True})
    assert two.meta["second_pass_new"] > 0
    assert len(np.unique(two["id"])) == len(two)
    truth = field.truth
    real = np.asarray(truth["snr"]) >= 10
    found_one = ((match(one, truth)[0] >= 0) & real).sum()
    found_two = ((match(two, truth)[0] >= 0) & real).sum()
    print(f"stars with S/N >= 10 found: one pass {found_one}, two passes {found_two} "
          f"of {real.sum()}")
    assert found_two > found_one
    # the new stars carry aperture photometry too
    new = np.asarray(two["id"]) > two.meta["n_detected"]
    assert new.any() and np.isfinite(np.asarray(two["mag_aper_5"])[new]).mean() > 0.5


@needs_iraf
def test_few_psf_stars_lower_varorder_and_too_few_fall_back():
    from bhcore.testing.synthetic import make_star_field
    stars = Table({"x": [40.2, 150.7, 90.3, 60.1, 160.4], "y": [50.4, 40.1, 100.7, 160.2,
                                                                 150.6],
                   "flux": [8e4, 6e4, 5e4, 7e4, 4e4]})
    field = make_star_field((200, 200), stars=stars, fwhm=3.0, seed=2, blends=False)
    table = run_photometry(field.to_frame(), "phot_daophot",
                           overrides={**CAMERA, "varorder": 2})
    assert len(table) == 5 and table.meta["varorder"] == 0
    few = run_photometry(field.to_frame(), "phot_daophot",
                         overrides={**CAMERA, "min_psf_stars": 6})
    assert few.meta["flux_type"] == "aperture" and "psf_fallback" in few.meta
    assert len(few) == 5 and np.all(np.isfinite(few["flux"]))


# --- real data ---------------------------------------------------------------------------
@pytest.mark.realdata
@needs_iraf
def test_daophot_positions_agree_with_sextractor_on_real_data(shared_data):
    """NTT/EMMI frame: bright point sources at SExtractor's windowed positions."""
    from astropy.io import ascii
    folder = shared_data / "ntt_emmi_sep"
    table = run_photometry(read_frame(folder / "image.fits"), "phot_daophot",
                           overrides={"saturation": 50000.0})
    cat = ascii.read(folder / "image.cat", format="sextractor")
    # bright, unflagged, compact (half-light radius < 1.6 px) sources whose windowed
    # centroid converged (it stays within 1 px of the isophotal one)
    bright = ((np.asarray(cat["FLUX_AUTO"]) > 1e4) & (np.asarray(cat["FLAGS"]) == 0)
              & (np.asarray(cat["FLUX_RADIUS_1"]) < 1.6)
              & (np.hypot(cat["XWIN_IMAGE"] - cat["X_IMAGE"],
                          cat["YWIN_IMAGE"] - cat["Y_IMAGE"]) < 1.0))
    assert bright.sum() >= 5
    ref = Table({"x": np.asarray(cat["XWIN_IMAGE"])[bright] - 1.0,
                 "y": np.asarray(cat["YWIN_IMAGE"])[bright] - 1.0})
    index, dist = match(table, ref, radius=0.5)
    close = dist < 0.1
    print(f"{close.sum()} of {len(ref)} within 0.1 px; offsets {np.round(dist, 3)}")
    assert close.sum() >= 0.7 * len(ref)
    # and aperture fluxes in r = 5 px agree with FLUX_APER (diameter 10) within 5 %
    ratio = (np.asarray(cat["FLUX_APER"])[bright][close]
             / np.asarray(table["flux_aper_5"])[index[close]])
    assert np.all(np.abs(ratio - 1.0) < 0.05)
