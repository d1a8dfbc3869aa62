"""phot_python: precision at the Cramér-Rao bound, honest errors, flags, products.

Every number is judged against the truth and the bounds of the shared synthetic
generator (``bhcore.testing.make_star_field``), never against typed-in values.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from scipy.spatial import cKDTree

from bhcore.frame import read_frame
from bhcore.pipeline import run_photometry
from bhcore.plugins import load_plugins, plugin_info
from bhcore.tables import SourceFlag
from bhcore.testing import make_star_field
from bh_phot_python import Settings, bh_measure_photometry, forced_photometry

HALF_NORMAL_MEDIAN = 0.6745          # median of |N(0, 1)|
FIELD = dict(fwhm=3.0, beta=2.8, sky=600.0, gain=1.6, read_noise=9.0,
             saturation=60000.0, blends=False)


def robust_width(values) -> float:
    values = np.asarray(values, float)
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def clipped_std(values, nsigma=5.0) -> float:
    values = np.asarray(values, float)
    keep = np.ones(values.size, bool)
    for _ in range(10):
        mu, sd = values[keep].mean(), values[keep].std()
        new = np.abs(values - mu) < nsigma * sd
        if np.array_equal(new, keep):
            break
        keep = new
    return float(values[keep].std())


def nearest(table, truth, radius=1.5):
    """Row of ``table`` nearest to each truth star, -1 beyond ``radius`` px."""
    d, k = cKDTree(np.column_stack([table["x"], table["y"]])).query(
        np.column_stack([truth["x"], truth["y"]]))
    return np.where(d <= radius, k, -1)


# --- isolated stars, PSF varying over the frame ----------------------------------------
@pytest.fixture(scope="module")
def isolated():
    """Two 2048^2 frames of isolated stars (>= 12 px apart), FWHM +24 % to the corners."""
    runs = []
    for seed in (11, 12):
        field = make_star_field((2048, 2048), 1800, fwhm_gradient=0.24, min_separation=12,
                                seed=seed, **FIELD)
        table = run_photometry(field.to_frame(), "phot_python")
        runs.append((field, table))
    return runs


def stacked(runs, min_snr=20.0):
    """Truth and measurement of every matched unsaturated star with SNR > min_snr."""
    out = {k: [] for k in ("snr", "flux_t", "flux", "flux_err", "crlb_flux", "x_t", "x",
                           "x_err", "crlb_x", "y_t", "y", "y_err", "crlb_y")}
    for field, table in runs:
        t = field.truth
        row = nearest(table, t)
        ok = (row >= 0) & (np.asarray(t["snr"]) > min_snr) & ~np.asarray(t["saturated"])
        r = row[ok]
        for key, col in (("snr", "snr"), ("flux_t", "flux"), ("crlb_flux", "crlb_flux"),
                         ("x_t", "x"), ("crlb_x", "crlb_x"), ("y_t", "y"),
                         ("crlb_y", "crlb_y")):
            out[key].append(np.asarray(t[col])[ok])
        for key in ("flux", "flux_err", "x", "x_err", "y", "y_err"):
            out[key].append(np.asarray(table[key])[r])
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("quantity", ["flux", "x", "y"])
def test_isolated_precision_at_the_cramer_rao_bound(isolated, quantity):
    s = stacked(isolated)
    err = s[quantity] - s[f"{quantity}_t"]
    ratio = np.median(np.abs(err) / s[f"crlb_{quantity}"]) / HALF_NORMAL_MEDIAN
    print(f"{quantity}: median |error| / CRLB over N(0,1) = {ratio:.3f} "
          f"({err.size} stars with SNR > 20)")
    assert err.size > 500
    assert ratio <= 1.10


@pytest.mark.parametrize("quantity", ["flux", "x", "y"])
def test_isolated_pulls_are_honest(isolated, quantity):
    s = stacked(isolated)
    pull = (s[quantity] - s[f"{quantity}_t"]) / s[f"{quantity}_err"]
    width, sd = robust_width(pull), clipped_std(pull)
    print(f"{quantity} pulls: robust width {width:.3f}, clipped std {sd:.3f}, "
          f"median {np.median(pull):.3f}, max |pull| {np.abs(pull).max():.2f}")
    assert 0.9 <= width <= 1.1
    assert 0.9 <= sd <= 1.1
    assert abs(np.median(pull)) < 0.15


def test_no_isolated_star_is_off_by_more_than_5_sigma(isolated):
    s = stacked(isolated, min_snr=5.0)
    worst = 0.0
    for quantity in ("flux", "x", "y"):
        pull = (s[quantity] - s[f"{quantity}_t"]) / s[f"{quantity}_err"]
        worst = max(worst, float(np.abs(pull).max()))
    print(f"largest |pull| over {s['flux'].size} stars with SNR > 5: {worst:.2f}")
    assert worst <= 5.0


def test_isolated_completeness_and_no_spurious(isolated):
    for field, table in isolated:
        t = field.truth
        row = nearest(table, t)
        bright = np.asarray(t["snr"]) >= 10
        assert (row[bright] >= 0).mean() >= 0.99
        d, k = cKDTree(np.column_stack([t["x"], t["y"]])).query(
            np.column_stack([table["x"], table["y"]]))
        spurious = d > np.asarray(t["fwhm"])[k]
        assert spurious.mean() <= 0.01


def test_varying_moffat_psf_is_recovered(isolated):
    field, table = isolated[0]
    psf = table.meta["psf"]
    assert psf["psf_kind"] == "moffat"
    assert abs(psf["psf_beta"] - 2.8) < 0.1
    truth_fwhm = np.asarray(field.truth["fwhm"])
    assert psf["psf_fwhm_min"] == pytest.approx(truth_fwhm.min(), rel=0.02)
    assert psf["psf_fwhm_max"] == pytest.approx(truth_fwhm.max(), rel=0.02)
    row = nearest(table, field.truth)
    ok = row >= 0
    assert np.allclose(np.asarray(table["fwhm"])[row[ok]], truth_fwhm[ok], rtol=0.02)


# --- PSF choice by residuals -----------------------------------------------------------
def test_gaussian_psf_is_chosen_for_gaussian_stars():
    field = make_star_field((1024, 1024), 500, psf="gaussian", ellipticity=0.1, theta=30.0,
                            min_separation=12, seed=5, **FIELD)
    table = run_photometry(field.to_frame(), "phot_python")
    assert table.meta["psf"]["psf_kind"] == "gaussian"
    row = nearest(table, field.truth)
    ok = (row >= 0) & (np.asarray(field.truth["snr"]) > 20)
    err = np.asarray(table["flux"])[row[ok]] - np.asarray(field.truth["flux"])[ok]
    ratio = np.median(np.abs(err) / np.asarray(field.truth["crlb_flux"])[ok]) / 0.6745
    assert ratio <= 1.2


def test_residual_table_is_kept_only_when_it_helps():
    """An analytic profile that fits leaves no table; a forced table is reported."""
    field = make_star_field((1024, 1024), 500, min_separation=12, seed=6, **FIELD)
    auto = run_photometry(field.to_frame(), "phot_python")
    assert not auto.meta["psf"]["psf_kind"].endswith("+table")
    forced = run_photometry(field.to_frame(), "phot_python",
                            overrides={"psf_model": "empirical"})
    assert forced.meta["psf"]["psf_kind"].endswith("+table")
    assert len(forced) == pytest.approx(len(auto), rel=0.05)


# --- local sky -------------------------------------------------------------------------
def test_fitted_local_sky_against_its_bound():
    field = make_star_field((1024, 1024), 600, min_separation=12, seed=7, **FIELD)
    table = run_photometry(field.to_frame(), "phot_python", overrides={"fit_sky": True})
    t = field.truth
    row = nearest(table, t)
    ok = (row >= 0) & (np.asarray(t["snr"]) > 20) & ~np.asarray(t["saturated"])
    err = np.asarray(table["flux"])[row[ok]] - np.asarray(t["flux"])[ok]
    ratio = np.median(np.abs(err) / np.asarray(t["crlb_flux_skyfree"])[ok]) / 0.6745
    pull = err / np.asarray(table["flux_err"])[row[ok]]
    print(f"fit_sky: |err|/CRLB(sky free) {ratio:.3f}, pull width {robust_width(pull):.3f}")
    assert ratio <= 1.15
    assert 0.85 <= robust_width(pull) <= 1.15
    assert np.all(np.isfinite(table["sky"]))


# --- flags -----------------------------------------------------------------------------
def test_flags_saturated_edge_masked_blended():
    field = make_star_field((1024, 1024), 700, seed=8, bad_columns=3,
                            flux_range=(300.0, 2e7), mag_slope=0.1, **FIELD)
    table = run_photometry(field.to_frame(), "phot_python")
    t = field.truth
    flags = np.asarray(table["flags"])
    row = nearest(table, t, radius=2.0)
    found = row >= 0
    sat_truth = np.asarray(t["saturated"])
    assert sat_truth.sum() >= 3
    sat_flag = (flags[row[found]] & SourceFlag.SATURATED) != 0
    assert np.array_equal(sat_flag, sat_truth[found])
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    edge = (flags & SourceFlag.NEAR_EDGE) != 0
    margin = np.minimum.reduce([x, y, 1023 - x, 1023 - y])
    assert np.all(edge[margin < 4.5]) and not np.any(edge[margin > 12])
    cols = np.asarray(field.truth.meta["bad_columns"])
    dist = np.min(np.abs(x[:, None] - cols[None, :]), axis=1)
    masked = (flags & SourceFlag.MASKED_PIXELS) != 0
    fw = np.asarray(table["fwhm"])
    assert np.all(masked[dist <= np.maximum(fw, 1.5) - 0.5])
    assert not np.any(masked[dist > np.maximum(fw, 1.5) + 0.5])
    blended = (flags & SourceFlag.BLENDED) != 0
    assert np.array_equal(blended, np.asarray(table["nn_dist"]) < 2 * fw)


# --- products and columns ----------------------------------------------------------------
def test_columns_magnitudes_and_aperture_correction(tmp_path):
    field = make_star_field((1024, 1024), 400, min_separation=15, seed=9, **FIELD)
    path = field.write(tmp_path / "night1.fits")
    frame = read_frame(path)
    products = tmp_path / "products"
    table = run_photometry(frame, "phot_python", overrides={"products_dir": str(products)})
    table.check()
    for name in ("id", "x", "y", "flux", "flux_err", "flags", "x_err", "y_err", "mag",
                 "mag_err", "sky", "chi2", "rchi2", "sharpness", "fwhm", "flux_aper_1",
                 "flux_aper_3", "flux_aper_3_err"):
        assert name in table.colnames, name
    pos = np.asarray(table["flux"]) > 0
    assert np.allclose(np.asarray(table["mag"])[pos],
                       -2.5 * np.log10(np.asarray(table["flux"])[pos]))
    assert np.allclose(np.asarray(table["mag_err"])[pos],
                       1.0857362 * np.asarray(table["flux_err"])[pos]
                       / np.asarray(table["flux"])[pos])
    # stars are PSF-like: sharpness near zero, reduced chi^2 near one
    bright = np.asarray(table["flux"]) / np.asarray(table["flux_err"]) > 50
    assert abs(np.median(np.asarray(table["sharpness"])[bright])) < 0.02
    assert 0.8 < np.median(np.asarray(table["rchi2"])[bright]) < 1.25
    # aperture fluxes, once corrected, agree with the truth
    apcorr = table.meta["aperture_correction"]
    key = list(apcorr)[-1]
    ratio = apcorr[key]["flux_ratio"]
    row = nearest(table, field.truth)
    ok = (row >= 0) & (np.asarray(field.truth["snr"]) > 50) & ~np.asarray(
        field.truth["saturated"])
    expected = np.asarray(field.truth["flux"])[ok] / np.asarray(table["flux_aper_3"])[row[ok]]
    sem = 1.2533 * np.std(expected) / np.sqrt(expected.size)
    assert abs(ratio - np.median(expected)) < 3 * sem + 3 * apcorr[key]["flux_ratio_err"]
    # the residual image: written atomically beside nothing else, stars gone
    residual = products / "night1_residual.fits"
    assert table.meta["residual_image"] == str(residual)
    assert residual.exists() and not list(products.glob("*.part"))
    res = read_frame(residual).data
    noise = np.sqrt(field.variance())
    core = np.zeros(res.shape, bool)
    for xi, yi in zip(np.round(table["x"][bright]).astype(int),
                      np.round(table["y"][bright]).astype(int)):
        core[max(yi - 2, 0):yi + 3, max(xi - 2, 0):xi + 3] = True
    norm = (res - field.sky)[core] / noise[core]
    assert abs(np.mean(norm)) < 0.1 and np.std(norm) < 1.2


def test_forced_photometry_at_pixel_and_sky_positions():
    field = make_star_field((1024, 1024), 500, min_separation=10, seed=10, wcs="tan",
                            **FIELD)
    t = field.truth
    frame = field.to_frame()
    pix = forced_photometry(frame, np.column_stack([t["x"], t["y"]]), {"gain": 1.6})
    assert np.allclose(pix["x"], t["x"]) and np.allclose(pix["y"], t["y"])
    ok = (np.asarray(t["snr"]) > 5) & ~np.asarray(t["saturated"])
    pull = (np.asarray(pix["flux"]) - np.asarray(t["flux"]))[ok] / np.asarray(
        pix["flux_err"])[ok]
    print(f"forced pulls: width {robust_width(pull):.3f}, median {np.median(pull):.3f}")
    assert 0.9 <= robust_width(pull) <= 1.1
    assert abs(np.median(pull)) < 0.15
    sky = forced_photometry(frame, SkyCoord(t["ra"][:20], t["dec"][:20], unit="deg"),
                            {"gain": 1.6})
    assert np.allclose(sky["x"], t["x"][:20], atol=1e-6)
    # same targets, same fluxes (up to which detected neighbours are fitted alongside)
    diff = np.abs(np.asarray(sky["flux"]) - np.asarray(pix["flux"][:20]))
    assert np.all(diff < 0.5 * np.asarray(pix["flux_err"][:20]))
    # an empty spot gives a flux consistent with zero; a spot off the detector NaN
    empty = forced_photometry(frame, [[512.3, 700.8], [-40.0, 10.0]], {"gain": 1.6},
                              neighbours=None, psf=None)
    assert abs(empty["flux"][0] / empty["flux_err"][0]) < 4
    assert np.isnan(empty["flux"][1]) and empty["flags"][1] & SourceFlag.NEAR_EDGE


# --- the plugin -----------------------------------------------------------------------
def test_plugin_is_implemented_and_declines_other_backends():
    info = plugin_info(load_plugins(["phot_python"]), "phot_python")
    assert info.implemented and info.stage == "photometry"
    assert info.settings_model is Settings
    assert Settings().min_snr == 5.0
    assert bh_measure_photometry(frame=None, settings={"backend": "phot_sex"}) is None


def test_sky_only_frame_gives_an_empty_table():
    field = make_star_field((512, 512), 0, seed=3, **FIELD)
    table = run_photometry(field.to_frame(), "phot_python")
    assert len(table) == 0
    table.check()
