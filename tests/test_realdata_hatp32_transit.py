"""The known answer of a real night: HAT-P-32 b transits in the MicroObservatory frames.

Every stage runs on real frames (header quirks, astrometry of a mirrored field with no
WCS, phot_python, calibration against the offline catalogue, ensemble light curve),
and the light curve must show the published transit: mid-transit 2458107.7111 BJD_TDB
(P = 2.1500079 d, T0 = 2456628.505625), duration ~3.1 h, depth 2.2-2.5 %.
"""
from __future__ import annotations

import numpy as np
import pytest

from bhcore.batch import run_batch
from bhcore.lightcurves import from_results
from bhcore.registry import Registry

TARGET = (31.042798, 46.687840)
MID_TRANSIT_BJD = 2456628.505625 + 688 * 2.1500079
HALF_DURATION_D = 3.1 / 24 / 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def night_lightcurve(tmp_path_factory, shared_data):
    folder = shared_data / "hatp32_microobservatory"
    files = sorted(folder.glob("*.fits.gz"))[::4]          # 36 of the 142 frames
    out = tmp_path_factory.mktemp("hatp32-night")
    with pytest.MonkeyPatch.context() as patch:             # a home of its own
        patch.setenv("BHCORE_HOME", str(out / "home"))
        registry = Registry()
        registry.ensure_builtin()
        obs = registry.get("MicroObservatory_Cecilia")
        summary = run_batch(files, obs, out / "products", workers=2,
                            overrides={"offline": True})
    assert summary.done == len(files), summary.failed
    lcs = from_results(out / "products")
    return lcs.lightcurve(lcs.find(*TARGET, 5.0))


def test_the_published_mid_transit_time_is_the_predicted_one():
    assert MID_TRANSIT_BJD == pytest.approx(2458107.7111, abs=1e-4)


def test_transit_depth_and_timing_match_the_published_values(night_lightcurve):
    lc = night_lightcurve
    bjd = np.asarray(lc["bjd_tdb"], float)
    flux = np.asarray(lc["rel_flux"], float)
    err = np.asarray(lc["rel_flux_err"], float)
    good = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    inside = good & (np.abs(bjd - MID_TRANSIT_BJD) < 0.7 * HALF_DURATION_D)
    outside = good & (np.abs(bjd - MID_TRANSIT_BJD) > 1.15 * HALF_DURATION_D)
    assert inside.sum() >= 6 and outside.sum() >= 8
    f_in = np.average(flux[inside], weights=err[inside] ** -2)
    f_out = np.average(flux[outside], weights=err[outside] ** -2)
    depth = 1 - f_in / f_out
    depth_err = np.hypot(np.sum(err[inside] ** -2) ** -0.5,
                         np.sum(err[outside] ** -2) ** -0.5) / f_out
    # published 2.2-2.5 %; allow three of our own error bars around that range
    assert 0.022 - 3 * depth_err < depth < 0.025 + 3 * depth_err, (depth, depth_err)
    assert depth > 5 * depth_err                             # a clear detection
    # out of transit the star is flat to within its errors (the ensemble works)
    chi2 = np.sum(((flux[outside] / f_out - 1) / err[outside]) ** 2) / (outside.sum() - 1)
    assert chi2 < 3.0
    # the faintest stretch of the night is the predicted transit
    order = np.argsort(bjd[good])
    t, f = bjd[good][order], flux[good][order]
    smooth = np.convolve(f, np.ones(5) / 5, mode="valid")
    t_min = t[2:-2][np.argmin(smooth)]
    assert abs(t_min - MID_TRANSIT_BJD) < HALF_DURATION_D
