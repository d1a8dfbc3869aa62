"""The transit fitter against truth: injected transits in white noise.

Honest errors matter more than a good-looking fit: over many noise realisations the
pulls (fit - truth) / error of mid-time and depth must be unbiased with unit width.
"""
from __future__ import annotations

import numpy as np
import pytest

from bhcore.lightcurves.transit import TransitFitError, fit_transit, transit_model

PERIOD, T0 = 2.15, 0.2
TIMES = np.arange(0.0, 0.4, 60 / 86400)          # one night of 60 s exposures


def test_transit_model_basics():
    flat = transit_model(TIMES, T0, PERIOD, 0.1, 8.0, 0.0, limb_darkening=())
    assert flat.max() == pytest.approx(1.0)
    assert 1 - flat.min() == pytest.approx(0.01, rel=1e-3)        # uniform disc: rp^2
    limb = transit_model([T0], T0, PERIOD, 0.1, 8.0, 0.0)
    assert 1 - limb[0] > 0.01                                      # limb darkening deepens the centre
    fit = fit_transit(TIMES, limb_curve := transit_model(TIMES, T0, PERIOD, 0.1, 8.0, 0.0),
                      np.full(TIMES.size, 1e-4), PERIOD, T0, rp=0.09, a=8.0, b=0.0,
                      free=("t0", "rp"))
    assert fit.depth == pytest.approx(0.01, rel=1e-3)               # (Rp/R*)^2
    assert fit.dip == pytest.approx(1 - limb_curve.min(), rel=1e-3)  # the deepest point


@pytest.mark.slow
def test_pulls_of_mid_time_and_depth_are_unit_normal():
    rng = np.random.default_rng(11)
    truth = transit_model(TIMES, T0, PERIOD, 0.15, 6.05, 0.1, exposure_s=60)
    dip_true = 1 - transit_model([T0], T0, PERIOD, 0.15, 6.05, 0.1)[0]
    sigma = 0.008
    pulls_t, pulls_d, pulls_dip = [], [], []
    for _ in range(60):
        trend = 1 + 0.003 * (TIMES - 0.2)
        flux = 1.7e4 * (truth * trend + rng.normal(0, sigma, TIMES.size))
        fit = fit_transit(TIMES, flux, np.full(TIMES.size, 1.7e4 * sigma), PERIOD, T0 + 0.01,
                          rp=0.12, a=7.0, b=0.3, exposure_s=60)
        pulls_t.append((fit.t0 - T0) / fit.t0_err)
        pulls_d.append((fit.depth - 0.15 ** 2) / fit.depth_err)
        pulls_dip.append((fit.dip - dip_true) / fit.dip_err)
    for name, pulls in (("t0", pulls_t), ("depth", pulls_d), ("dip", pulls_dip)):
        pulls = np.asarray(pulls)
        print(f"{name}: pull mean {pulls.mean():+.2f}, std {pulls.std(ddof=1):.2f}")
        assert abs(pulls.mean()) < 0.35 and 0.75 < pulls.std(ddof=1) < 1.3
    assert fit.rms_out == pytest.approx(sigma, rel=0.15)
    assert fit.model(TIMES).shape == TIMES.shape


def test_outliers_are_rejected_and_fixed_shape_fits_only_what_is_free():
    rng = np.random.default_rng(2)
    truth = transit_model(TIMES, T0, PERIOD, 0.12, 7.0, 0.2, exposure_s=60)
    flux = truth + rng.normal(0, 0.003, TIMES.size)
    flux[::50] += 0.1                                               # cosmic-ray-like hits
    fit = fit_transit(TIMES, flux, np.full(TIMES.size, 0.003), PERIOD, T0 - 0.005,
                      a=7.0, b=0.2, free=("t0", "rp"), exposure_s=60)
    assert fit.n_rejected == len(flux[::50])
    assert set(fit.errors) == {"t0", "rp"} and fit.values["a"] == 7.0
    assert abs(fit.t0 - T0) < 3 * fit.t0_err and abs(fit.values["rp"] - 0.12) < 3 * fit.errors["rp"]


def test_too_few_points_is_a_clear_error():
    with pytest.raises(TransitFitError, match="usable points"):
        fit_transit(TIMES[:5], np.ones(5), np.full(5, 0.01), PERIOD, T0)


def test_cli_fits_an_exported_light_curve_and_plots_it(tmp_path):
    import json

    from astropy.table import Table
    from typer.testing import CliRunner

    from bhcore.cli.main import app
    rng = np.random.default_rng(4)
    bjd = 2458107.5 + TIMES
    truth = transit_model(bjd, 2458107.7, PERIOD, 0.12, 7.0, 0.2, exposure_s=60)
    lc = Table({"bjd_tdb": bjd, "rel_flux": truth + rng.normal(0, 0.002, bjd.size),
                "rel_flux_err": np.full(bjd.size, 0.002), "exptime": np.full(bjd.size, 60.0)})
    lc.write(tmp_path / "lc.ecsv")
    plot = tmp_path / "fit.png"
    # an epoch many periods back: the command picks the transit nearest the data
    done = CliRunner().invoke(app, ["transit", str(tmp_path / "lc.ecsv"), "--period",
                                    str(PERIOD), "--t0", str(2458107.705 - 100 * PERIOD),
                                    "--plot", str(plot), "--json"])
    assert done.exit_code == 0, done.output
    fit = json.loads(done.output[done.output.index("{"):])
    assert abs(fit["t0"] - 2458107.7) < 3 * fit["t0_err"]
    assert abs(fit["depth"] - 0.12 ** 2) < 3 * fit["depth_err"]
    dip_true = 1 - transit_model([2458107.7], 2458107.7, PERIOD, 0.12, 7.0, 0.2)[0]
    assert abs(fit["dip"] - dip_true) < 3 * fit["dip_err"]
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad = CliRunner().invoke(app, ["transit", str(tmp_path / "lc.ecsv"), "--period", "2",
                                   "--t0", "0", "--free", "t0,q"])
    assert bad.exit_code != 0 and "--free" in bad.output
