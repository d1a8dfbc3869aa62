"""The phot_sex backend (SExtractor + PSFEx): real-data reproduction, precision, API.

Engine tests skip only when source-extractor / psfex are not installed; the real
data tests read ../shared/data in place (fixture ``shared_data``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from bhcore.errors import MissingEngine, PhotometryError, SettingsError
from bhcore.frame import read_frame
from bhcore.pipeline import resolve_settings, run_photometry
from bhcore.plugins import load_plugins, plugin_info
from bhcore.tables import LEADING_COLUMNS
from bhcore.testing.contract import bright_isolated, match, scatter_vs_floor

needs_sextractor = pytest.mark.skipif(
    shutil.which("source-extractor") is None,
    reason="source-extractor is not installed "
           "(apt-get install -y --no-install-recommends source-extractor)")
needs_psfex = pytest.mark.skipif(
    shutil.which("psfex") is None,
    reason="psfex is not installed (apt-get install -y --no-install-recommends psfex)")

CAMERA = {"gain": 1.6, "read_noise_adu": 9.0 / 1.6, "saturation": 60000.0}

#: image.cat's columns, in its order (ntt_emmi_sep row of ../shared/data/README.md).
NTT_PARAMS = ["NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "X2_IMAGE",
              "Y2_IMAGE", "XY_IMAGE", "ERRX2_IMAGE", "ERRY2_IMAGE", "ERRXY_IMAGE",
              "A_IMAGE", "FLUX_APER(1)", "FLUXERR_APER(1)", "KRON_RADIUS", "FLUX_AUTO",
              "FLUXERR_AUTO", "FLUX_RADIUS(3)", "FLAGS"]

#: The configuration that made image.cat, through ordinary settings. The README row
#: lists DETECT_MINAREA 5, DEBLEND_MINCONT 1.0, PHOT_APERTURES 10 (a diameter, so
#: radius 5), PHOT_FLUXFRAC 0.1,0.5,0.6, BACKPHOTO_TYPE GLOBAL and default.conv; the
#: default.sex in the sep project's data folder that made the file also has
#: MASK_TYPE NONE and PHOT_AUTOPARAMS 2.5,0.0 (without them FLUX_AUTO, KRON_RADIUS and
#: XWIN differ for ~30 rows). The rest are SExtractor's built-in defaults.
NTT_REPRODUCE = {
    "mode": "aperture", "aperture_radii": [5.0], "detect_thresh": 1.5,
    "analysis_thresh": 1.5, "detect_minarea": 5, "filter": True,
    "filter_name": "default.conv", "deblend_nthresh": 32, "deblend_mincont": 1.0,
    "clean": True, "clean_param": 1.0, "back_size": 64, "back_filtersize": 3,
    "backphoto_type": "GLOBAL", "kron_factor": 2.5, "kron_min_radius": 0.0,
    "zeropoint": 0.0, "param_list": NTT_PARAMS,
    "sextractor_overrides": {"MASK_TYPE": "NONE", "PHOT_FLUXFRAC": [0.1, 0.5, 0.6],
                             "SATUR_LEVEL": 50000.0, "GAIN": 0.0, "PIXEL_SCALE": 1.0,
                             "SEEING_FWHM": 1.2},
}


# --- helpers -------------------------------------------------------------------------
def read_sextractor_ascii(path: Path) -> tuple[dict[str, list[int]], list[list[str]]]:
    """image.cat as ({NAME: [token indices]}, rows of raw text tokens).

    A vector column (FLUX_RADIUS with 3 fractions) spans the numbers up to the next
    header line, so its indices are taken from the gaps in the numbering.
    """
    header, rows = [], []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            parts = line.split()
            header.append((int(parts[1]) - 1, parts[2]))
        elif line.strip():
            rows.append(line.split())
    width = len(rows[0])
    columns = {}
    for k, (start, name) in enumerate(header):
        stop = header[k + 1][0] if k + 1 < len(header) else width
        columns[name] = list(range(start, stop))
    return columns, rows


def half_ulp(token: str) -> float:
    """Half a unit in the last printed digit of ``token`` ('78021.47' -> 0.005)."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (-decimals) * 10.0 ** (int(exponent) if exponent else 0)


def prints_as(value: float, token: str) -> bool:
    """``value`` (float32 or float64 in the FITS catalogue) prints as ``token``."""
    ref = float(token)
    return abs(float(value) - ref) <= half_ulp(token) * (1 + 1e-9) + 1.2e-7 * abs(ref)


@pytest.fixture(scope="module")
def precision_field():
    """1024x1024, 300 Moffat stars (FWHM 3 px), ~100 of them bright and isolated."""
    from bhcore.testing.synthetic import make_star_field
    return make_star_field((1024, 1024), 300, fwhm=3.0, saturation=60000.0, seed=7,
                           flux_range=(2e3, 4e5))


@pytest.fixture(scope="module")
def precision_table(precision_field):
    if shutil.which("source-extractor") is None or shutil.which("psfex") is None:
        pytest.skip("source-extractor or psfex is not installed")
    return run_photometry(precision_field.to_frame(), "phot_sex",
                          overrides={**CAMERA, "aperture_radii": [4.5]})


# --- plugin description, settings and configuration (no engine needed) ---------------
def test_plugin_info_is_implemented_with_settings():
    info = plugin_info(load_plugins(["phot_sex"]), "phot_sex")
    assert info.implemented and info.stage == "photometry"
    assert {e.name for e in info.executables} == {"source-extractor", "psfex"}
    defaults = info.default_settings()
    assert defaults["mode"] == "psf" and defaults["psf_nmax"] == 3
    assert defaults["aperture_radii"] == [3.0, 5.0, 8.0]


def test_invalid_settings_are_rejected():
    info = plugin_info(load_plugins(["phot_sex"]), "phot_sex")
    with pytest.raises(SettingsError):
        resolve_settings("phot_sex", info, overrides={"aperture_radii": [-3.0]})
    with pytest.raises(SettingsError):
        resolve_settings("phot_sex", info, overrides={"mode": "galaxy"})


def test_config_uses_diameters_camera_values_and_overrides(tmp_path):
    from bh_phot_sex import config as cfg
    from bh_phot_sex.settings import Settings

    settings = {**Settings().model_dump(), "gain": 2.5, "saturation": 4000.0,
                "pixel_scale_arcsec": 0.5,
                "sextractor_overrides": {"back_size": 128, "MASK_TYPE": "NONE"}}
    opts = cfg.sextractor_options(settings, catalog=tmp_path / "c.ldac",
                                  params=tmp_path / "p", fwhm_px=4.0,
                                  diameters=[2 * r for r in settings["aperture_radii"]])
    assert opts["PHOT_APERTURES"] == [6.0, 10.0, 16.0]          # radii 3, 5, 8
    assert opts["GAIN"] == 2.5 and opts["SATUR_LEVEL"] == 4000.0
    assert opts["GAIN_KEY"] == opts["SATUR_KEY"] == cfg.NO_KEYWORD
    assert opts["SEEING_FWHM"] == 2.0 and opts["PIXEL_SCALE"] == 0.5
    assert opts["BACK_SIZE"] == 128 and opts["MASK_TYPE"] == "NONE"
    assert Path(opts["FILTER_NAME"]).is_absolute()
    text = cfg.write_config(tmp_path / "x.sex", opts).read_text()
    assert "PHOT_APERTURES     6.0,10.0,16.0" in text


def test_param_list_replaces_and_extends_the_base_parameters():
    from bh_phot_sex import config as cfg

    params = cfg.output_params(n_apertures=2, psf=True, vignet=25, flag_map=True,
                               extra=["FLUX_RADIUS(3)", "ISOAREA_IMAGE"])
    assert "FLUX_RADIUS(3)" in params and "FLUX_RADIUS" not in params
    assert params.count("ISOAREA_IMAGE") == 1 and "VIGNET(25,25)" in params
    assert "FLUX_APER(2)" in params and "IMAFLAGS_ISO" in params and "FLUX_PSF" in params
    with pytest.raises(SettingsError):
        cfg.output_params(n_apertures=1, psf=False, vignet=None, flag_map=False,
                          extra=["FLUX_APER; rm -rf"])


def test_aperture_labels():
    from bh_phot_sex.config import aperture_label
    assert [aperture_label(r) for r in (3.0, 4.5, 10.25)] == ["3", "4p5", "10p25"]


def test_missing_engine_says_how_to_install(monkeypatch, tmp_path):
    from bhcore.testing.synthetic import make_star_field
    monkeypatch.setenv("PATH", str(tmp_path))
    frame = make_star_field((64, 64), 2, seed=1).to_frame()
    with pytest.raises(MissingEngine, match="apt-get install -y --no-install-recommends "
                                            "source-extractor"):
        run_photometry(frame, "phot_sex")


# --- real data: SExtractor's own catalogue, reproduced --------------------------------
@pytest.mark.realdata
@needs_sextractor
def test_reproduces_ntt_emmi_image_cat(shared_data):
    """image.cat is reproduced to its printed precision, through ordinary settings.

    Every row and every column agree, except the windowed centroid of two sources
    whose iteration did not converge: SExtractor 2.25 then reports the isophotal
    centroid (and FLAGS_WIN 8), the older SExtractor that wrote image.cat kept the
    wandering value. Checked explicitly below.
    """
    folder = shared_data / "ntt_emmi_sep"
    columns, rows = read_sextractor_ascii(folder / "image.cat")
    assert len(rows) == 65
    table = run_photometry(read_frame(folder / "image.fits"), "phot_sex",
                           overrides=NTT_REPRODUCE)
    assert len(table) == 65
    assert list(table["id"]) == [int(r[0]) for r in rows]
    diverged = (np.asarray(table["flags_win"]) & 8) != 0
    assert diverged.sum() == 2

    mismatches = []
    for name, idx in columns.items():
        ours = np.asarray(table[f"sex_{name}"], dtype=float).reshape(len(table), -1)
        assert ours.shape[1] == len(idx), name
        for i, row in enumerate(rows):
            if diverged[i] and name in ("XWIN_IMAGE", "YWIN_IMAGE"):
                continue
            for k, col in enumerate(idx):
                if not prints_as(ours[i, k], row[col]):
                    mismatches.append((name, i + 1, ours[i, k], row[col]))
    assert not mismatches, mismatches[:10]

    # the table's own columns: 0-based windowed positions and the fluxes
    x1 = {n: i[0] for n, i in columns.items()}
    for i, row in enumerate(rows):
        if diverged[i]:
            # 2.25 falls back to the isophotal barycentre
            assert prints_as(table["x"][i] + 1.0, row[x1["X_IMAGE"]])
            assert prints_as(table["y"][i] + 1.0, row[x1["Y_IMAGE"]])
            assert abs(table["x"][i] + 1.0 - float(row[x1["XWIN_IMAGE"]])) > 1.0
            continue
        assert prints_as(table["x"][i] + 1.0, row[x1["XWIN_IMAGE"]])
        assert prints_as(table["y"][i] + 1.0, row[x1["YWIN_IMAGE"]])
        assert prints_as(table["flux"][i], row[x1["FLUX_AUTO"]])
        assert prints_as(table["flux_err"][i], row[x1["FLUXERR_AUTO"]])
        assert prints_as(table["flux_aper_5"][i], row[x1["FLUX_APER"]])
        assert prints_as(table["fluxerr_aper_5"][i], row[x1["FLUXERR_APER"]])
    assert table.meta["flux_type"] == "auto"


@pytest.mark.realdata
@needs_sextractor
@needs_psfex
def test_psf_mode_runs_on_the_real_frame(shared_data):
    frame = read_frame(shared_data / "ntt_emmi_sep" / "image.fits")
    table = run_photometry(frame, "phot_sex", overrides={"sextractor_overrides": {
        "SATUR_LEVEL": 50000.0}})
    assert len(table) > 30 and table.meta["flux_type"] in ("psf", "auto")
    assert tuple(table.colnames[:6]) == LEADING_COLUMNS


# --- synthetic frames: precision against the noise floor ------------------------------
@needs_sextractor
@needs_psfex
def test_psf_and_aperture_scatter_reach_the_noise_floor(precision_field, precision_table):
    """Bright isolated stars: scatter within 1.2x the CRLB (MAG_PSF) and the aperture
    noise (MAG_APER r = 4.5 px)."""
    truth = precision_field.truth
    select = bright_isolated(truth, (1024, 1024), 3.0)
    psf = scatter_vs_floor(precision_table, truth, "mag", "psf", select=select)
    aper = scatter_vs_floor(precision_table, truth, "mag_aper_4p5", "aperture",
                            aperture_radius=4.5, select=select)
    print(f"phot_sex MAG_PSF scatter {psf.scatter_mag:.4f} / CRLB {psf.floor_mag:.4f} = "
          f"{psf.ratio:.3f} (n={psf.n_stars}); MAG_APER {aper.scatter_mag:.4f} / "
          f"{aper.floor_mag:.4f} = {aper.ratio:.3f}")
    assert psf.n_stars >= 60 and aper.n_stars >= 60
    assert psf.ratio <= 1.2
    assert aper.ratio <= 1.2
    assert precision_table.meta["psf_nmax_applied_to"] == "blends"


@needs_sextractor
@needs_psfex
def test_reported_psf_errors_match_the_scatter(precision_field, precision_table):
    truth = precision_field.truth
    select = bright_isolated(truth, (1024, 1024), 3.0)
    index, _ = match(precision_table, truth)
    rows = index[select & (index >= 0)]
    reported = np.sqrt(np.mean(np.asarray(precision_table["mag_err"])[rows] ** 2))
    psf = scatter_vs_floor(precision_table, truth, "mag", "psf", select=select)
    assert 0.7 < psf.scatter_mag / reported < 1.3


@needs_sextractor
@needs_psfex
def test_psf_nmax_splits_an_unresolved_pair():
    from bhcore.testing.synthetic import make_star_field
    stars = Table({"x": [100.3, 103.6, 40.2, 160.7, 60.5, 150.1, 30.4, 170.2],
                   "y": [100.4, 101.1, 40.6, 160.2, 150.3, 50.8, 100.1, 110.9],
                   "flux": [6e4, 3e4, 8e4, 8e4, 8e4, 8e4, 8e4, 8e4]})
    field = make_star_field((200, 200), stars=stars, fwhm=3.0, seed=3, blends=False)
    table = run_photometry(field.to_frame(), "phot_sex",
                           overrides={**CAMERA, "psf_norm_radius": 9.0})
    index, dist = match(table, field.truth)
    assert index[0] >= 0 and index[1] >= 0 and index[0] != index[1]
    assert dist[0] < 0.3 and dist[1] < 0.3


# --- behaviour and products -----------------------------------------------------------
@needs_sextractor
@needs_psfex
def test_residual_image_is_written_and_recorded(tmp_path):
    from bhcore.testing.synthetic import make_star_field
    field = make_star_field((256, 256), 40, fwhm=3.0, seed=4, flux_range=(5e3, 2e5))
    frame = field.to_frame().replace(path=tmp_path / "night_001.fits.gz")
    table = run_photometry(frame, "phot_sex",
                           overrides={**CAMERA, "products_dir": str(tmp_path / "out")})
    residual = Path(table.meta["residual_image"])
    assert residual == tmp_path / "out" / "night_001_residual.fits"
    data = read_frame(residual).data
    assert data.shape == field.image.shape
    # the stars are gone: the residual is much flatter than the frame
    assert np.std(data) < 0.3 * np.std(field.image)


@needs_sextractor
def test_aperture_mode_uses_flux_auto():
    from bhcore.testing.synthetic import make_star_field
    field = make_star_field((256, 256), 30, fwhm=3.0, seed=5, flux_range=(5e3, 2e5))
    table = run_photometry(field.to_frame(), "phot_sex",
                           overrides={**CAMERA, "mode": "aperture"})
    assert table.meta["flux_type"] == "auto" and len(table) >= 25
    assert np.array_equal(table["flux"], table["flux_auto"])
    assert "mag_psf" not in table.colnames
    for r in ("3", "5", "8"):
        assert f"mag_aper_{r}" in table.colnames and f"magerr_aper_{r}" in table.colnames


@needs_sextractor
@needs_psfex
def test_too_few_stars_for_a_psf_falls_back_to_flux_auto():
    from bhcore.testing.synthetic import make_star_field
    stars = Table({"x": [60.2, 140.7], "y": [70.4, 130.1], "flux": [5e4, 2e4]})
    field = make_star_field((200, 200), stars=stars, fwhm=3.0, seed=6, blends=False)
    table = run_photometry(field.to_frame(), "phot_sex", overrides=CAMERA)
    assert len(table) == 2
    assert table.meta["flux_type"] == "auto" and "psf_fallback" in table.meta
    assert np.array_equal(table["flux"], table["flux_auto"])


@needs_sextractor
def test_bhtom_catalogue(tmp_path):
    from bh_phot_sex import write_bhtom_catalog

    from bhcore.testing.synthetic import make_star_field

    field = make_star_field((256, 256), 30, fwhm=3.0, seed=8, flux_range=(5e3, 2e5),
                            wcs="tan-sip")
    frame = field.to_frame()
    out = write_bhtom_catalog(frame, tmp_path / "frame.cat")
    lines = out.read_text().splitlines()
    header = [line.split()[2] for line in lines if line.startswith("#")]
    assert header == ["NUMBER", "ALPHA_J2000", "DELTA_J2000", "XWIN_IMAGE", "YWIN_IMAGE",
                      "MAG_AUTO", "MAGERR_AUTO"]
    rows = np.array([[float(v) for v in line.split()] for line in lines
                     if not line.startswith("#")])
    assert len(rows) >= 25
    # sky positions follow the frame's WCS (SIP included) at the 1-based XWIN/YWIN
    ra, dec = frame.wcs.all_pix2world(rows[:, 3], rows[:, 4], 1)
    assert np.allclose(rows[:, 1], ra, atol=2e-7) and np.allclose(rows[:, 2], dec, atol=2e-7)
    with pytest.raises(PhotometryError, match="WCS"):
        write_bhtom_catalog(frame.replace(wcs=None), tmp_path / "none.cat")


@needs_sextractor
@needs_psfex
def test_bhtom_catalogue_through_settings(tmp_path):
    from bhcore.testing.synthetic import make_star_field
    field = make_star_field((256, 256), 30, fwhm=3.0, seed=9, flux_range=(5e3, 2e5),
                            wcs="tan")
    frame = field.to_frame().replace(path=tmp_path / "f.fits")
    table = run_photometry(frame, "phot_sex", overrides={
        **CAMERA, "products_dir": str(tmp_path), "write_bhtom_catalog": True})
    assert Path(table.meta["bhtom_catalog"]) == tmp_path / "f.cat"
    assert "ra" in table.colnames and "dec" in table.colnames
    ra, dec = frame.wcs.all_pix2world(table["x"], table["y"], 0)
    assert np.allclose(table["ra"], ra) and np.allclose(table["dec"], dec)
