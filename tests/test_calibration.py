"""Photometric calibration: band choice, the robust fit against truth, refusals,
limiting magnitude, target magnitude or upper limit, re-runs on stored photometry.

Truth comes from catalogues with colours: instrumental magnitudes are made with a
known zero point and colour term (directly, and through a simulated CCD frame
measured by aperture photometry), so the fit is judged by its pulls.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from bhcore import calibration_bands as cb
from bhcore.errors import CalibrationError
from bhcore.plugins import call_backend, load_plugins
from bhcore.tables import SourceTable

bh_cal = pytest.importorskip("bh_calibrate_builtin", reason="calibrate_builtin not installed")
from bh_calibrate_builtin.calibrate import calibrate  # noqa: E402
from bh_calibrate_builtin.fit import robust_fit  # noqa: E402

ZP, CT = 24.3, 0.12


def synthetic(rng, n=60, zp=ZP, ct=CT, intrinsic=0.0, n_out=0, colour_span=(0.0, 1.5),
              band="V", blue="B"):
    """Reference catalogue and measured sources: m_inst = m_cat - zp - ct*colour."""
    ra = 150 + rng.uniform(-0.1, 0.1, n)
    dec = 20 + rng.uniform(-0.1, 0.1, n)
    mag = rng.uniform(11, 17, n)
    colour = rng.uniform(*colour_span, n)
    ref = Table({"ra": ra, "dec": dec, band: mag, f"{band}_err": np.full(n, 0.01),
                 blue: mag + colour, f"{blue}_err": np.full(n, 0.01)})
    ref.meta["catalog"] = "synthetic"
    true_inst = mag - zp - ct * colour + rng.normal(0, intrinsic, n) + rng.normal(0, 0.01, n)
    flux = 10 ** (-0.4 * true_inst)
    rel = np.hypot(0.003, 0.02 * 10 ** (0.4 * (mag - 15)))
    flux = flux * (1 + rng.normal(0, rel))
    shift = rng.choice([-1, 1], n_out) * rng.uniform(0.3, 1.0, n_out)
    flux[:n_out] *= 10 ** (-0.4 * shift)
    src = SourceTable.build(np.zeros(n), np.zeros(n), flux, flux * rel,
                            ra=ra + rng.normal(0, 0.2 / 3600, n), dec=dec)
    return src, ref


# --- band choice -------------------------------------------------------------------------
@pytest.mark.parametrize("filt, expected", [
    ("V", "GaiaSP/V"), ("R", "GaiaSP/R"), ("r", "GaiaSP/r"), ("r'", "GaiaSP/r"),
    ("rp", "GaiaSP/r"), ("Ic", "GaiaSP/I"), ("Clear", "GaiaDR3/G"), ("", "GaiaDR3/G"),
    ("L", "GaiaDR3/G"), ("G", "GaiaDR3/G"), ("Ks", "2MASS/K"), ("Ha", None)])
def test_filter_to_bhtom_band(filt, expected):
    assert cb.filter_to_bhtom(filt) == expected


@pytest.mark.parametrize("name, parsed", [
    ("GaiaSP/any", ("GaiaSP", "any")), ("GaiaSP/V", ("GaiaSP", "V")),
    ("GaiaSP/ugriz", ("GaiaSP", "ugriz")), ("GaiaDR3/G", ("GaiaDR3", "G")),
    ("GaiaDR3/GBP", ("GaiaDR3", "GBP")), ("2MASS/K", ("2MASS", "K")), ("no", None)])
def test_bhtom_names_accepted(name, parsed):
    assert cb.parse_bhtom_filter(name) == parsed


@pytest.mark.parametrize("bad", ["Gaia/V", "GaiaSP/Q", "GaiaDR3/V", "V"])
def test_bad_bhtom_names_refused(bad):
    with pytest.raises(ValueError):
        cb.parse_bhtom_filter(bad)


def test_candidates_follow_filter_request_and_registry_map():
    cols = ["G", "BP", "RP", "B", "V", "R", "I", "sdss_g", "sdss_r"]
    assert [c.column for c in cb.candidates("V", "GaiaSP/any", available=cols)] == ["V"]
    assert [c.column for c in cb.candidates("V", "GaiaDR3/G", available=cols)] == ["G"]
    assert [c.column for c in cb.candidates("Clear", "GaiaSP/any", available=cols)] == ["V"]
    assert [c.column for c in cb.candidates("R", "GaiaSP/any",
                                            available=["V", "sdss_r"])] == ["sdss_r"]
    assert [c.column for c in cb.candidates("R", "GaiaDR3/any", available=cols)] == ["G"]
    assert [c.column for c in cb.candidates("Clear", "no", available=cols)] == ["G"]
    assert [c.column for c in cb.candidates("Ha", "GaiaSP/any", "Ha:GaiaSP/R",
                                            available=cols)] == ["R"]
    assert [c.column for c in cb.candidates("Ha", "GaiaSP/any", {"Ha": "I"},
                                            available=cols)] == ["I"]
    every = cb.candidates("Ha", "GaiaSP/UBVRI", available=cols)
    assert {c.column for c in every} == {"B", "V", "R", "I"}
    assert cb.colour_pair("V", cols) == ("B", "V")
    assert cb.colour_pair("G", cols) == ("BP", "RP")
    assert cb.colour_pair("V", ["V", "BP", "RP"]) == ("BP", "RP")
    assert cb.colour_pair("V", cols, "BP-RP") == ("BP", "RP")


# --- the fit against truth -----------------------------------------------------------------
def test_recovers_zero_point_and_colour_term_with_sane_pulls():
    rng = np.random.default_rng(11)
    pz, pc = [], []
    for _ in range(150):
        src, ref = synthetic(rng, n_out=3)
        res = calibrate(src, ref, {"pixel_scale_arcsec": 0.6}, filter_name="V")
        assert res.band == "V" and res.notes["color_index"] == "B-V"
        assert res.notes["color_term_status"] == "fitted"
        pz.append((res.zero_point - ZP) / res.zero_point_err)
        pc.append((res.color_term - CT) / res.color_term_err)
    pz, pc = np.array(pz), np.array(pc)
    print(f"pulls: zp mean {pz.mean():+.3f} sd {pz.std():.3f}; "
          f"colour term mean {pc.mean():+.3f} sd {pc.std():.3f}")
    assert abs(pz.mean()) < 0.25 and 0.75 < pz.std() < 1.3
    assert abs(pc.mean()) < 0.25 and 0.75 < pc.std() < 1.3


def test_intrinsic_scatter_is_estimated_and_keeps_pulls_sane():
    rng = np.random.default_rng(5)
    pulls, scat = [], []
    for _ in range(80):
        src, ref = synthetic(rng, n=80, intrinsic=0.03)
        res = calibrate(src, ref, {}, filter_name="V")
        pulls.append((res.zero_point - ZP) / res.zero_point_err)
        scat.append(res.notes["intrinsic_scatter"])
    print(f"intrinsic scatter median {np.median(scat):.4f} (truth 0.03 + 0.01 in quadrature "
          f"{np.hypot(0.03, 0.01):.4f}); pull sd {np.std(pulls):.3f}")
    assert abs(np.median(scat) - np.hypot(0.03, 0.01)) < 0.006
    assert 0.7 < np.std(pulls) < 1.35


def test_robust_fit_ignores_gross_outliers():
    rng = np.random.default_rng(3)
    y = 25.0 + rng.normal(0, 0.02, 50)
    y[:6] += np.array([1.0, -0.8, 0.5, 2.0, -1.5, 0.6])
    fit = robust_fit(y, np.full(50, 0.02), fit_colour=False)
    assert not fit.used[:6].any() and fit.used[6:].sum() >= 42
    assert abs(fit.zp - 25.0) < 3 * fit.zp_err


def test_outliers_are_rejected_and_counted():
    rng = np.random.default_rng(8)
    src, ref = synthetic(rng, n=60, n_out=6)
    res = calibrate(src, ref, {}, filter_name="V")
    used = np.array(res.notes["stars"]["used"])
    rows = np.array(res.notes["stars"]["row"])
    assert not used[rows < 6].any()
    assert 0.09 <= res.outlier_fraction <= 0.15
    assert abs(res.zero_point - ZP) < 3 * res.zero_point_err
    assert res.n_stars == int(used.sum())


def test_refuses_below_three_stars():
    rng = np.random.default_rng(1)
    src, ref = synthetic(rng, n=2)
    with pytest.raises(CalibrationError, match="need at least 3"):
        calibrate(src, ref, {}, filter_name="V")


def test_refuses_when_outlier_fraction_exceeds_limit():
    rng = np.random.default_rng(2)
    src, ref = synthetic(rng, n=30)
    flux = np.asarray(src["flux"])
    flux[:12] *= 10 ** (-0.4 * rng.choice([-1, 1], 12) * rng.uniform(0.5, 1.5, 12))
    src["flux"] = flux
    every = {"max_inst_err": 1.0}                # keep the faint stars: 12 of 30 are bad
    with pytest.raises(CalibrationError, match="outlier fraction 0.40 exceeds 0.30"):
        calibrate(src, ref, every, filter_name="V")
    res = calibrate(src, ref, {**every, "max_outlier_fraction": 0.5}, filter_name="V")
    assert res.outlier_fraction == pytest.approx(0.4, abs=0.04)


def test_catalogue_errors_above_limit_are_ignored():
    rng = np.random.default_rng(4)
    src, ref = synthetic(rng, n=20)
    ref["V_err"][:18] = 0.5
    with pytest.raises(CalibrationError, match="only 2 usable"):
        calibrate(src, ref, {"max_inst_err": 1.0}, filter_name="V")


def test_colour_term_is_always_reported():
    rng = np.random.default_rng(6)
    src, ref = synthetic(rng, ct=0.0, colour_span=(0.5, 0.6))
    res = calibrate(src, ref, {}, filter_name="V")
    assert res.color_term == 0.0 and res.color_term_err is None
    assert res.notes["color_term_status"].startswith("fixed: colour range")
    res = calibrate(src, ref, {"fit_color_term": "never", "color_term": 0.05},
                    filter_name="V")
    assert res.color_term == 0.05 and res.notes["color_term_status"] == "fixed by settings"
    no_colour = ref.copy()
    del no_colour["B"]
    res = calibrate(src, no_colour, {}, filter_name="V")
    assert res.notes["color_term_status"].startswith("fixed: no colour index")


def test_any_band_picks_the_lowest_scatter():
    rng = np.random.default_rng(9)
    src, ref = synthetic(rng, band="R", blue="V", ct=0.0)
    ref["I"] = ref["R"] + rng.normal(0, 0.15, len(ref))
    # no colour term here: with R-I as colour it would absorb I's noise exactly
    res = calibrate(src, ref, {"bhtom_filter": "GaiaSP/any", "fit_color_term": "never"},
                    filter_name="Ha")
    assert res.band == "R" and res.notes["bhtom_band"] == "GaiaSP/R"
    assert set(res.notes["candidates"]) >= {"GaiaSP/R", "GaiaSP/I"}
    res = calibrate(src, ref, {"bhtom_filter": "GaiaSP/I"}, filter_name="Ha")
    assert res.band == "I"


# --- limiting magnitude, target -----------------------------------------------------------
def test_limiting_magnitude_and_target():
    rng = np.random.default_rng(12)
    n = 300
    ra, dec = 10 + rng.uniform(-0.05, 0.05, n), 40 + rng.uniform(-0.05, 0.05, n)
    mag = rng.uniform(12, 21, n)
    flux = 10 ** (-0.4 * (mag - 25.0))
    sky_var = 400.0 ** 2                         # background-limited noise per source
    err = np.sqrt(flux + sky_var)
    ref = Table({"ra": ra, "dec": dec, "V": mag, "V_err": np.full(n, 0.01)})
    src = SourceTable.build(np.zeros(n), np.zeros(n), flux + rng.normal(0, err), err,
                            ra=ra, dec=dec)
    settings = {"target_ra": float(ra[0]), "target_dec": float(dec[0])}
    res = calibrate(src, ref, settings, filter_name="V")
    f5 = (25 + np.sqrt(25 ** 2 + 4 * 25 * sky_var)) / 2      # flux with S/N = 5
    truth = 25.0 - 2.5 * np.log10(f5)
    print(f"5-sigma limit {res.notes['limiting_mag']:.3f}, truth {truth:.3f}")
    assert abs(res.notes["limiting_mag"] - truth) < 0.15
    target = res.notes["target"]
    assert target["detected"] and not target["upper_limit"]
    assert abs(target["mag"] - mag[0]) < 5 * target["mag_err"] + 0.02
    away = dict(settings, target_ra=float(ra[0]) + 0.2)
    res = calibrate(src, ref, away, filter_name="V")
    target = res.notes["target"]
    assert target["upper_limit"] and target["mag_err"] == -1.0
    snr = np.asarray(src["flux"]) / err
    faintest = np.max(-2.5 * np.log10(np.asarray(src["flux"])[snr >= 3])
                      + res.notes["zero_point_at_pivot"])
    assert target["mag"] == pytest.approx(faintest)


# --- a simulated CCD frame measured with aperture photometry --------------------------------
def aperture_flags(x, y, flux, radius, shape):
    """What an engine would flag: apertures off the edge, neighbours inside 2 radii."""
    from scipy.spatial import cKDTree

    from bhcore.tables import SourceFlag
    x, y, flux = (np.asarray(v, float) for v in (x, y, flux))
    flags = np.zeros(x.size, np.int32)
    ny, nx = shape
    edge = (x < radius) | (y < radius) | (x > nx - 1 - radius) | (y > ny - 1 - radius)
    flags[edge] |= SourceFlag.NEAR_EDGE
    for a, b in cKDTree(np.column_stack([x, y])).query_pairs(2 * radius):
        if flux[b] > 0.01 * flux[a]:
            flags[a] |= SourceFlag.BLENDED
        if flux[a] > 0.01 * flux[b]:
            flags[b] |= SourceFlag.BLENDED
    return flags


def test_recovers_zero_point_and_colour_term_from_a_simulated_frame():
    sep = pytest.importorskip("sep")
    from bhcore.testing import make_star_field
    rng = np.random.default_rng(21)
    n = 110
    center = (120.0, -30.0)
    ra = center[0] + rng.uniform(-0.045, 0.045, n) / np.cos(np.radians(center[1]))
    dec = center[1] + rng.uniform(-0.045, 0.045, n)
    v = rng.uniform(11.5, 16.0, n)
    bv = rng.uniform(0.0, 1.6, n)
    cat = Table({"id": np.arange(1, n + 1), "ra": ra, "dec": dec, "V": v,
                 "V_err": np.full(n, 0.01), "B": v + bv, "B_err": np.full(n, 0.01)})
    true_ct = 0.08
    stars = Table({"id": cat["id"], "ra": ra, "dec": dec, "mag": v - true_ct * bv})
    stars["mag"][:4] += 0.5                      # four variables at the moment
    sf = make_star_field((320, 320), stars=stars, wcs="tan", center=center,
                         pixel_scale=1.0, psf="gaussian", fwhm=3.0, zero_point=25.0,
                         seed=4, blends=False, header_cards={"FILTER": "V"})
    frame = sf.to_frame()
    data = np.ascontiguousarray(frame.data, dtype=np.float64)
    bkg = sep.Background(data)
    x, y = np.asarray(sf.truth["x"], float), np.asarray(sf.truth["y"], float)
    flux, ferr, _ = sep.sum_circle(data - bkg.back(), x, y, 6.0, err=bkg.globalrms,
                                   gain=sf.gain)
    src = SourceTable.build(x, y, flux, ferr, aperture_flags(x, y, sf.truth["flux"], 6.0,
                                                             data.shape), ids=sf.truth["id"])
    src["ra"], src["dec"] = frame.wcs.pixel_to_world_values(x, y)
    pm = load_plugins(["calibrate_builtin"])
    res = call_backend(pm, "calibration", "calibrate_builtin", frame=frame, sources=src,
                       reference=cat, settings={"backend": "calibrate_builtin",
                                                "pixel_scale_arcsec": 1.0})
    pull_zp = (res.zero_point - 25.0) / res.zero_point_err
    pull_ct = (res.color_term - true_ct) / res.color_term_err
    print(f"frame: ZP {res.zero_point:.4f} ± {res.zero_point_err:.4f} (pull {pull_zp:+.2f}), "
          f"colour term {res.color_term:.4f} ± {res.color_term_err:.4f} (pull {pull_ct:+.2f}), "
          f"{res.n_stars} stars, scatter {res.scatter:.4f}, outliers {res.outlier_fraction:.3f}")
    assert abs(pull_zp) < 3.5 and abs(pull_ct) < 3.5
    rows = np.array(res.notes["stars"]["source_id"])
    used = np.array(res.notes["stars"]["used"])
    assert not used[np.isin(rows, [1, 2, 3, 4])].any()
    assert res.method_version.startswith("calibrate_builtin/")
    assert res.match_radius_arcsec == pytest.approx(2.0)


def test_registry_settings_reach_the_calibration():
    """BH_OPTS of an obs.info (band map, BHTOM name, star minimum) steer the backend."""
    from types import SimpleNamespace

    from bhcore.pipeline import resolve_settings
    from bhcore.plugins import plugin_info
    pm = load_plugins(["calibrate_builtin"])
    obs = SimpleNamespace(plugin_settings={"calibrate_builtin.band_map": "Ha:GaiaSP/R",
                                           "calibrate_builtin.min_stars": 5})
    settings = resolve_settings("calibrate_builtin", plugin_info(pm, "calibrate_builtin"), obs,
                                overrides={"calibrate_builtin.filter": "Ha"})
    assert settings["band_map"] == "Ha:GaiaSP/R" and settings["min_stars"] == 5
    src, ref = synthetic(np.random.default_rng(14), band="R", blue="V")
    ref["I"] = ref["R"] - 0.3
    res = call_backend(pm, "calibration", "calibrate_builtin", frame=None, sources=src,
                       reference=ref, settings=settings)
    assert res.band == "R" and res.notes["band_reason"] == "filter 'Ha' -> GaiaSP/R"
    with pytest.raises(CalibrationError, match="need at least 5"):
        call_backend(pm, "calibration", "calibrate_builtin", frame=None, sources=src[:4],
                     reference=ref, settings=settings)


def test_hook_declines_other_backends():
    assert bh_cal.bh_calibrate_photometry(frame=None, sources=None, reference=None,
                                          settings={"backend": "other"}) is None


def test_rerun_on_stored_photometry(tmp_path):
    from bhcore.pipeline import run_calibration, write_table
    rng = np.random.default_rng(13)
    src, ref = synthetic(rng)
    write_table(src, tmp_path / "phot.ecsv")
    write_table(ref, tmp_path / "ref.ecsv")
    direct = calibrate(src, ref, {}, filter_name="V")
    again = run_calibration(tmp_path / "phot.ecsv", "calibrate_builtin", overrides={
        "calibrate_builtin.reference_path": str(tmp_path / "ref.ecsv"),
        "calibrate_builtin.filter": "V"})
    assert again.zero_point == pytest.approx(direct.zero_point, abs=1e-6)
    assert again.method_version == bh_cal.METHOD_VERSION
    with pytest.raises(CalibrationError, match="reference_path"):
        run_calibration(tmp_path / "phot.ecsv", "calibrate_builtin")


@pytest.mark.realdata
def test_real_ey_uma_epochs_calibrate_consistently(shared_data):
    """Feder R-band aperture photometry against APASS and ATLAS-RefCat2 (file backend)."""
    pytest.importorskip("bh_catalogs", reason="catalogue backends not installed")
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    folder = shared_data / "eyuma_feder"
    table = Table.read(folder / "2014-12-29-ey-uma-9.fits")
    pm = load_plugins(["file"])
    refcat2_columns = {"sdss_g": "gmag", "sdss_r": "rmag", "sdss_i": "imag",
                       "sdss_g_err": "e_gmag", "sdss_r_err": "e_rmag", "sdss_i_err": "e_imag"}
    zps = {"apass": [], "refcat2": []}
    for name in np.unique(table["file"])[:4]:
        epoch = table[table["file"] == name]
        src = SourceTable.build(epoch["xcenter"], epoch["ycenter"], epoch["aperture_net_flux"],
                                epoch["aperture_net_flux"] * epoch["mag_error"] / 1.0857,
                                ids=epoch["star_id"], ra=np.asarray(epoch["RA"]),
                                dec=np.asarray(epoch["Dec"]))
        center = SkyCoord(np.mean(epoch["RA"]) * u.deg, np.mean(epoch["Dec"]) * u.deg)
        for cat, extra in (("apass", {"path": str(folder / "all_apass_ey_uma.ecsv")}),
                           ("refcat2", {"path": str(folder / "all_refcat2_ey_uma.ecsv"),
                                        "columns": refcat2_columns})):
            ref = call_backend(pm, "catalog", "file", name="file", center=center,
                               radius_deg=0.3, epoch=None, settings={"backend": "file", **extra})
            res = calibrate(src, ref, {"pixel_scale_arcsec": 0.563}, filter_name="R")
            assert res.band == "sdss_r" and res.notes["bhtom_band"] == "GaiaSP/r"
            assert res.n_stars >= 20 and res.scatter < 0.12
            zps[cat].append((res.zero_point, res.zero_point_err))
    for cat, values in zps.items():
        zp = np.array(values)
        print(f"{cat}: zero points {np.round(zp[:, 0], 3)} ± {np.round(zp[:, 1], 3)}")
        mean = np.average(zp[:, 0], weights=zp[:, 1] ** -2)
        assert np.all(np.abs(zp[:, 0] - mean) < 3 * zp[:, 1] + 0.02)
    a, r = np.array(zps["apass"]), np.array(zps["refcat2"])
    assert abs(a[:, 0].mean() - r[:, 0].mean()) < 3 * np.hypot(a[:, 1].mean(), r[:, 1].mean())
