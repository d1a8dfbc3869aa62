"""A night measures the gain its camera's registry entry could not give.

Truth: constant stars with photon noise of a 4 e/ADU camera, sky noise, a noise
common to all stars of a frame (which the ensemble divides out) and, in one case,
0.1 % of independent noise per star (scintillation-like); the photometry assumed
1 e/ADU (as engines do without a GAIN) or no photon noise at all (SExtractor's GAIN
0), so its errors are far off. The light curves must find the gain and give errors
that describe the scatter.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from bhcore.lightcurves import build, ensemble
from bhcore.lightcurves.ensemble import choose_comparisons
from bhcore.lightcurves.noise import gain_from_scatter, rebuilt_errors

GAIN, SKY_VAR, COMMON = 4.0, 300.0, 5e-4


def night(seed=1, n_frames=120, n_stars=60, assumed=1.0, floor=0.0):
    rng = np.random.default_rng(seed)
    true_flux = np.geomspace(2e3, 2e5, n_stars)
    transparency = np.exp(-0.2 * np.abs(rng.normal(size=n_frames)))
    common = 1 + rng.normal(0, COMMON, n_frames)
    mean = true_flux[None, :] * (transparency * common)[:, None]
    flux = mean + rng.normal(0, 1, mean.shape) * np.sqrt(mean / GAIN + SKY_VAR +
                                                         (floor * mean) ** 2)
    flux_err = np.sqrt(np.clip(flux, 0, None) / assumed + SKY_VAR) if assumed else \
        np.full_like(flux, np.sqrt(SKY_VAR))
    return flux, flux_err


@pytest.mark.parametrize("assumed, floor", [(1.0, 0.0), (0.0, 0.0), (1.0, 1e-3)])
def test_the_gain_is_measured_and_errors_describe_the_scatter(assumed, floor):
    """assumed 1: phot_python and DAOPHOT without a gain; 0: SExtractor's GAIN 0."""
    flux, flux_err = night(assumed=assumed, floor=floor)
    comps = choose_comparisons(flux, flux_err)
    rel, _, info = ensemble(flux, flux_err, comps)
    n = flux.shape[0]
    fit = gain_from_scatter(flux, flux_err, rel, info["comparisons"], np.full(n, assumed),
                            np.ones(n, bool))
    print(f"assumed {assumed}: gain {fit['gain']:.2f} (truth {GAIN}), floor "
          f"{fit['floor']:.2e} (truth {floor:.0e}), {fit['n_stars']} stars")
    assert fit["gain"] == pytest.approx(GAIN, rel=0.25)
    assert abs(fit["floor"] - floor) < 6e-4
    new = rebuilt_errors(flux, flux_err, fit)
    truth = np.sqrt(np.clip(flux, 0, None) / GAIN + SKY_VAR + (floor * flux) ** 2)
    assert np.median(np.abs(new / truth - 1)) < 0.1
    # the stars' own relative curves now scatter as their errors say
    rel2, rel_err2, _ = ensemble(flux, new, comps)
    pull = (rel2 - np.nanmedian(rel2, axis=0)) / rel_err2
    assert 0.85 < np.nanstd(pull) < 1.25


def test_known_gain_frames_are_left_alone_and_build_reports_the_gain():
    flux, flux_err = night(seed=2)
    n_f, n_s = flux.shape
    ra = 150 + np.arange(n_s) * 0.01
    meas = Table({"frame": np.repeat(np.arange(n_f), n_s), "ra": np.tile(ra, n_f),
                  "dec": np.full(n_f * n_s, 10.0), "flux": flux.ravel(),
                  "flux_err": flux_err.ravel()})
    frames = Table({"mjd": 60000 + np.arange(n_f) / 1440, "gain_used": np.ones(n_f),
                    "gain_known": np.zeros(n_f)})
    lcs = build(frames, meas)
    assert lcs.meta["gain_measured"]["gain"] == pytest.approx(GAIN, rel=0.25)
    chi2 = np.asarray(lcs.sources["chi2_red"], float)
    assert 0.7 < np.nanmedian(chi2) < 1.4              # was ~0.3 with the assumed gain
    frames["gain_known"] = 1.0
    same = build(frames, meas)
    assert "gain_measured" not in same.meta
    assert np.nanmedian(np.asarray(same.sources["chi2_red"], float)) < 0.6
