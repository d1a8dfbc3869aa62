"""`bhcore demo` end to end, judged against the simulation's truth.

One run of the demo (simulate the night, header, astrometry, photometry,
calibration, results database, light curves, transit fit, report) with the
engines the demo uses, on two workers; every number is compared with what was
injected, not with an earlier output of the code.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial import cKDTree

from bhcore.lightcurves import from_results
from bhcore.lightcurves.crossmatch import tangent_plane
from bhcore.lightcurves.transit import fit_transit

pytestmark = pytest.mark.slow
pytest.importorskip("bh_phot_python", reason="phot_python not installed")
pytest.importorskip("bh_calibrate_builtin", reason="calibrate_builtin not installed")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from bhcore.demo import run_demo
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BHCORE_HOME", str(root / "home"))
        start = time.perf_counter()
        run = run_demo(root / "out", workers=2)
        elapsed = time.perf_counter() - start
        lcs = from_results(run.results)
    print("\n" + "\n".join(run.lines))
    return run, lcs, elapsed


def catalogue_match(lcs, catalog):
    """Catalogue row of each light-curve source (-1 when none lies within 1")."""
    ra0, dec0 = float(np.mean(catalog["ra"])), float(np.mean(catalog["dec"]))
    cat_xy = np.column_stack(tangent_plane(np.asarray(catalog["ra"]),
                                           np.asarray(catalog["dec"]), ra0, dec0))
    src_xy = np.column_stack(tangent_plane(np.asarray(lcs.sources["ra"]),
                                           np.asarray(lcs.sources["dec"]), ra0, dec0))
    dist, row = cKDTree(cat_xy).query(src_xy)
    return np.where(dist < 1.0, row, -1)


def test_demo_runs_every_frame_and_writes_the_report_in_time(demo):
    run, lcs, elapsed = demo
    n_frames = len(run.night.lightcurve)
    print(f"demo: {elapsed:.0f} s for {n_frames} frames, {run.summary.done} done")
    assert elapsed < 180.0
    assert run.summary.done == n_frames and not run.summary.failed
    assert lcs.n_frames == n_frames
    assert run.report is not None and run.report.is_file()
    assert any(str(run.report) in line for line in run.lines)


def test_transit_depth_and_mid_time_match_the_injection(demo):
    run, lcs, _ = demo
    meta, catalog = run.night.lightcurve.meta, run.night.catalog
    target = catalog[catalog["id"] == run.night.target_id][0]
    lc = lcs.lightcurve(lcs.find(float(target["ra"]), float(target["dec"])),
                        upper_limits=False)
    # everything about the shape free; starting values deliberately off the truth
    depth_true, dip_true = meta["transit_depth"], meta["transit_dip"]
    t0_true = meta["transit_t0_mjd"]
    fit = fit_transit(lc["mjd"], lc["rel_flux"], lc["rel_flux_err"], meta["transit_period_d"],
                      t0_true + 10 / 1440, rp=0.1, a=10.0, b=0.5,
                      limb_darkening=meta["limb_darkening"],
                      exposure_s=float(np.median(run.night.lightcurve["exptime"])))
    dt_min = (fit.t0 - t0_true) * 1440
    print(f"depth (Rp/R*)^2 {fit.depth:.5f} ± {fit.depth_err:.5f} (truth {depth_true:.5f}, "
          f"{(fit.depth / depth_true - 1) * 100:+.2f} %); deepest dip {fit.dip:.5f} ± "
          f"{fit.dip_err:.5f} (truth {dip_true:.5f}, {(fit.dip / dip_true - 1) * 100:+.2f} %); "
          f"mid-time {dt_min:+.2f} ± "
          f"{fit.t0_err * 1440:.2f} min; chi2/dof {fit.chi2_red:.2f}, rms "
          f"{fit.rms_out * 100:.3f} %, {fit.n_points} points")
    # the injected light curve's depth (its deepest dip) within 5 %, and within errors
    assert abs(fit.dip - dip_true) < 0.05 * dip_true
    assert abs(fit.dip - dip_true) < 3 * fit.dip_err
    assert fit.dip_err < 0.025 * dip_true                     # measured, not just bounded
    # (Rp/R*)^2 is less certain with a/R* and b free (they trade off against rp)
    assert abs(fit.depth - depth_true) < 3 * fit.depth_err and fit.depth_err < 0.05 * depth_true
    assert abs(dt_min) < 2.0 and abs(dt_min) < 3 * fit.t0_err * 1440
    # the demo printed the same measurement
    assert run.fit is not None
    assert abs(run.fit.depth - fit.depth) < 0.2 * fit.depth_err
    assert abs(run.fit.t0 - fit.t0) < 0.2 * fit.t0_err


def test_calibrated_magnitudes_match_the_catalogue_in_every_frame(demo):
    """Per frame: median (calibrated - catalogue) mag of the matched constant stars."""
    run, lcs, _ = demo
    catalog = run.night.catalog
    row = catalogue_match(lcs, catalog)
    ids = np.where(row >= 0, np.asarray(catalog["id"])[row], -1)
    constant = (row >= 0) & (ids != run.night.target_id) & (ids != run.night.variable_id)
    cat_mag = np.asarray(catalog["mag"])[row]
    mag, err = lcs.cube["mag"], lcs.cube["mag_err"]
    flags = np.nan_to_num(lcs.cube["flags"], nan=-1)
    offsets, counts = [], []
    for f in range(lcs.n_frames):
        use = constant & np.isfinite(mag[f]) & (flags[f] == 0) & (err[f] < 0.02)
        offsets.append(float(np.median(mag[f, use] - cat_mag[use])))
        counts.append(int(use.sum()))
    offsets = np.asarray(offsets)
    print(f"zero point offsets per frame: median {np.median(offsets):+.4f}, range "
          f"{offsets.min():+.4f} .. {offsets.max():+.4f} mag, {min(counts)}-{max(counts)} "
          f"stars per frame; {int(np.sum(row >= 0))} of {lcs.n_sources} sources matched")
    assert min(counts) >= 20
    assert np.all(np.abs(offsets) < 0.02)


def test_the_variable_is_flagged_and_constant_stars_are_not(demo):
    run, lcs, _ = demo
    catalog, src = run.night.catalog, lcs.sources
    row = catalogue_match(lcs, catalog)
    ids = np.where(row >= 0, np.asarray(catalog["id"])[row], -1)
    variable = np.flatnonzero(ids == run.night.variable_id)
    assert variable.size == 1 and src["is_variable"][variable[0]]
    constant = ~np.isin(ids, [run.night.target_id, run.night.variable_id])
    judged = constant & np.isfinite(np.asarray(src["stetson_j"], float))
    false = int(np.sum(src["is_variable"] & judged))
    print(f"variable: J {src['stetson_j'][variable[0]]:.2f}, chi2 "
          f"{src['chi2_red'][variable[0]]:.1f}; {false} of {int(judged.sum())} constant "
          f"stars flagged; thresholds {lcs.meta['thresholds']}")
    assert judged.sum() >= 100
    assert false <= 0.01 * judged.sum()
