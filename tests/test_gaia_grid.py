"""The Gaia grid refinement: order choice, accuracy against the truth, honest errors,
outlier rejection, and the astrometry products (frame copy, matched stars, QA cards).

Sources are true pixel positions plus Gaussian noise of known size, so the quoted
per-source errors can be judged against what really happened.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from bhcore.errors import AstrometryNotSolved
from bhcore.frame import Frame, read_frame
from bhcore.gaia_grid import (choose_max_order, extrapolation_ratio, qa_cards, refine_frame,
                              refine_wcs, wcs_error_rms, write_products)
from bhcore.tables import AstrometryResult, SourceTable
from bhcore.testing import make_wcs


def field(shape, scale, sip=None, n=600, noise_px=0.03, n_outliers=0, seed=2):
    """(true WCS, reference table, sources, true sky of sources, outlier mask)."""
    rng = np.random.default_rng(seed)
    truth = make_wcs(shape, center=(210.0, 54.0), pixel_scale=scale, rotation=12.0, sip=sip)
    ny, nx = shape
    x, y = rng.uniform(-20, nx + 20, n), rng.uniform(-20, ny + 20, n)
    ra, dec = truth.all_pix2world(x, y, 0)
    reference = Table({"ra": ra, "dec": dec, "ra_err": np.full(n, 0.05),
                       "dec_err": np.full(n, 0.05), "G": rng.uniform(10, 18, n)})
    inside = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
    xs, ys = x[inside], y[inside]
    m = len(xs)
    snr = np.full(m, 1e9)                                     # flux_err ~ 0: use x_err
    sources = SourceTable.build(xs + rng.normal(0, noise_px, m), ys + rng.normal(0, noise_px, m),
                                np.full(m, 1e5), np.full(m, 1e5) / snr,
                                x_err=np.full(m, noise_px), y_err=np.full(m, noise_px))
    outliers = np.zeros(m, bool)
    if n_outliers:
        pick = rng.choice(m, n_outliers, replace=False)
        sources["x"][pick] += rng.choice([-1, 1], n_outliers) * rng.uniform(0.6, 1.5, n_outliers)
        outliers[pick] = True
    return truth, reference, sources, (ra[inside], dec[inside]), outliers


def perturbed(truth, shape, scale):
    return make_wcs(shape, center=tuple(truth.wcs.crval + [1.5 / 3600, -1.0 / 3600]),
                    pixel_scale=scale * 1.0003, rotation=12.03)


def test_small_tan_field_gets_a_linear_fit_close_to_the_truth():
    shape, scale = (1024, 1024), 0.6
    truth, ref, sources, (ra, dec), _ = field(shape, scale)
    sol = refine_wcs(perturbed(truth, shape, scale), sources, ref, shape)
    error = wcs_error_rms(truth, sol.wcs, shape)
    print(f"\nGaia grid, 10' TAN field: order {sol.order}, {sol.n_stars} stars, "
          f"fit RMS {sol.rms_arcsec:.4f}\", WCS error vs truth {error:.4f}\"")
    assert sol.order == 1 and sol.n_stars == len(sources)
    assert error < 0.005
    # every source gets RA/Dec and an error that matches what really happened
    true_err = np.hypot((sol.sources["ra"] - ra) * np.cos(np.radians(dec)),
                        sol.sources["dec"] - dec) * 3600.0
    quoted = np.hypot(sol.sources["ra_err_arcsec"], sol.sources["dec_err_arcsec"])
    ratio = np.sqrt(np.mean((true_err / quoted) ** 2))
    assert 0.7 < ratio < 1.4


def test_distorted_wide_field_gets_a_higher_order():
    shape, scale = (2048, 2048), 2.0                          # 68' field
    rc = np.hypot(1024, 1024)
    sip = {"a": {(3, 0): 6.0 / rc**3, (1, 2): 6.0 / rc**3, (2, 0): 1.0 / rc**2},
           "b": {(2, 1): 6.0 / rc**3, (0, 3): 6.0 / rc**3, (1, 1): 1.0 / rc**2}}
    truth, ref, sources, _sky, _ = field(shape, scale, sip=sip, n=900)
    sol = refine_wcs(perturbed(truth, shape, scale), sources, ref, shape)
    error = wcs_error_rms(truth, sol.wcs, shape)
    print(f"\nGaia grid, 68' SIP field: order {sol.order}, {sol.n_stars} stars, "
          f"WCS error vs truth {error:.4f}\"")
    assert sol.order >= 3 and error < 0.02
    assert sol.wcs.sip is not None and sol.wcs.sip.ap is not None   # inverse for other tools
    pix = np.array([[100.0, 1900.0], [1024.0, 30.0], [2000.0, 2000.0]])
    back = sol.wcs.sip_foc2pix(sol.wcs.sip_pix2foc(pix, 0), 0)
    assert np.abs(back - pix).max() < 0.05


def test_outliers_are_rejected_and_not_in_the_rms():
    shape, scale = (1024, 1024), 0.6
    truth, ref, sources, _sky, outliers = field(shape, scale, n_outliers=25)
    sol = refine_wcs(perturbed(truth, shape, scale), sources, ref, shape)
    used = np.zeros(len(sources), bool)
    used[sol.matches["source_index"][sol.matches["used"]]] = True
    assert not (used & outliers).any()
    assert used.sum() >= (~outliers).sum() - 3
    assert wcs_error_rms(truth, sol.wcs, shape) < 0.01


def test_the_floor_comes_from_the_stars_that_carry_the_fit():
    """Quoted errors are often far too small for bright stars and too large for faint
    ones (a sqrt-flux noise model in arbitrary units, saturation). A floor set by the
    unweighted median sat among the faint stars: none, and every bright star (really
    0.15 px) was rejected; the WCS error was 0.028". Weighted, the floor is found and
    every star is kept."""
    shape, scale = (2048, 2048), 0.6
    rng = np.random.default_rng(0)
    truth = make_wcs(shape, center=(210.0, 54.0), pixel_scale=scale, rotation=12.0)
    n = 300
    x, y = rng.uniform(0, 2048, n), rng.uniform(0, 2048, n)
    ra, dec = truth.all_pix2world(x, y, 0)
    bright = np.arange(n) < 60
    quoted = np.where(bright, 0.005, 0.4)
    really = np.where(bright, 0.15, 0.25)
    sources = SourceTable.build(x + rng.normal(0, 1, n) * really,
                                y + rng.normal(0, 1, n) * really, np.full(n, 1e5),
                                np.full(n, 1.0), x_err=quoted, y_err=quoted)
    sol = refine_wcs(perturbed(truth, shape, scale), sources, Table({"ra": ra, "dec": dec}),
                     shape)
    used = np.zeros(n, bool)
    used[sol.matches["source_index"][sol.matches["used"]]] = True
    floor_px = sol.notes["systematic_floor_arcsec"] / scale
    error = wcs_error_rms(truth, sol.wcs, shape)
    print(f"\nGaia grid, bright stars' errors quoted 30x too small: floor {floor_px:.3f} px, "
          f"{used[bright].sum()}/{bright.sum()} bright stars kept, WCS error {error:.4f}\"")
    assert used.all() and 0.09 < floor_px < 0.2
    assert error < 0.025


def test_extrapolation_ratio_measures_coverage():
    shape = (2048, 2048)
    x, y = np.random.default_rng(1).uniform(0, 2048, (2, 500))
    central = (np.abs(x - 1024) < 350) & (np.abs(y - 1024) < 350)
    spread = [extrapolation_ratio(x, y, shape, k) for k in (1, 2, 3)]
    third = [extrapolation_ratio(x[central], y[central], shape, k) for k in (1, 2, 3)]
    assert all(0.9 < r < 1.3 for r in spread)
    assert 2.0 < third[0] < third[1] < third[2] and third[2] > 20
    assert extrapolation_ratio(x[:5], y[:5], shape, 2) == np.inf          # 6 terms, 5 stars


@pytest.mark.parametrize("noise_px, expected_order, max_error", [(0.2, 1, 0.4), (0.03, 3, 0.1)])
def test_reference_on_the_central_part_of_the_frame(noise_px, expected_order, max_error):
    """A deep catalogue on the central 40% of a cubic-distorted frame: with noisy stars
    the BIC keeps a linear fit (0.29" over the frame; a quadratic extrapolated from
    there 0.37", a cubic 0.46"), with precise ones it fixes the cubic, whose
    extrapolation is then good (0.07"; a cap by coverage alone would keep a linear or
    quadratic fit: 0.31")."""
    shape, scale = (2048, 2048), 0.6
    rc = np.hypot(1024, 1024)
    sip = {"a": {(3, 0): 2.0 / rc**3, (1, 2): 2.0 / rc**3, (2, 0): 0.5 / rc**2},
           "b": {(2, 1): 2.0 / rc**3, (0, 3): 2.0 / rc**3, (1, 1): 0.5 / rc**2}}
    rng = np.random.default_rng(0)
    truth = make_wcs(shape, center=(210.0, 54.0), pixel_scale=scale, rotation=12.0, sip=sip)
    n = 1500
    x, y = rng.uniform(0, 2048, n), rng.uniform(0, 2048, n)
    ra, dec = truth.all_pix2world(x, y, 0)
    central = (np.abs(x - 1024) < 400) & (np.abs(y - 1024) < 400)
    sources = SourceTable.build(x + rng.normal(0, noise_px, n), y + rng.normal(0, noise_px, n),
                                np.full(n, 1e5), np.full(n, 1.0), x_err=np.full(n, noise_px),
                                y_err=np.full(n, noise_px))
    sol = refine_wcs(perturbed(truth, shape, scale), sources,
                     Table({"ra": ra[central], "dec": dec[central]}), shape)
    error = wcs_error_rms(truth, sol.wcs, shape)
    print(f"\nGaia grid, reference on the central 40%, noise {noise_px} px: order {sol.order}, "
          f"extrapolation ratio {sol.notes['extrapolation_ratio']:.1f}, WCS error {error:.3f}\"")
    assert sol.order == expected_order and error < max_error
    assert sol.notes["extrapolation_ratio"] > 2.0


def test_too_few_stars_is_refused():
    shape, scale = (512, 512), 0.6
    truth, ref, sources, _sky, _ = field(shape, scale, n=8)
    with pytest.raises(AstrometryNotSolved, match="stars match"):
        refine_wcs(truth, sources[:3], ref, shape, min_stars=6)


def test_order_limits():
    assert choose_max_order(0.15, 500) == 3        # small field: at most cubic
    assert choose_max_order(2.0, 500) == 5
    assert choose_max_order(2.0, 20) == 2          # few stars limit the order
    assert choose_max_order(2.0, 5) == 1


def test_wcs_error_rms_measures_a_known_shift():
    shape = (512, 512)
    a = make_wcs(shape, center=(10.0, 0.0), pixel_scale=1.0)
    b = make_wcs(shape, center=(10.0, 1.0 / 3600), pixel_scale=1.0)
    assert wcs_error_rms(a, a, shape) == pytest.approx(0.0, abs=1e-6)
    assert wcs_error_rms(a, b, shape) == pytest.approx(1.0, rel=1e-3)


def test_products_frame_copy_matches_and_qa_keywords(tmp_path):
    shape = (64, 64)
    wcs = make_wcs(shape, center=(10.0, 20.0), pixel_scale=1.0)
    header = fits.Header({"OBJECT": "test", "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                          "CRVAL1": 0.0, "CRVAL2": 0.0})
    frame = Frame(data=np.zeros(shape), header=header)
    matches = Table({"x": [1.0], "y": [2.0], "sep_arcsec": [0.1]})
    result = AstrometryResult(wcs=wcs, solved=True, n_matched=42, rms_arcsec=0.031,
                              backend="astrometry_scamp", catalog="Gaia DR3", matches=matches)
    attempts = [("astrometry_scamp", "solved")]
    products = write_products(frame, result, tmp_path, "f1", attempts)
    copy = read_frame(products["frame"])
    assert copy.header["ASTRBACK"] == "astrometry_scamp" and copy.header["ASTRNMAT"] == 42
    assert copy.header["ASTRRMS"] == pytest.approx(0.031)
    assert copy.header["ASTRCAT"] == "Gaia DR3"
    assert copy.header["ASTRTR01"] == "astrometry_scamp: solved"
    assert copy.wcs.wcs.crval[0] == pytest.approx(10.0)
    assert frame.header["CRVAL1"] == 0.0                      # the input is untouched
    assert len(Table.read(products["matches"], format="ascii.ecsv")) == 1
    assert qa_cards(result)["ASTRNMAT"][0] == 42


def test_refine_frame_fetches_the_catalogue_at_the_frame_epoch(tmp_path):
    shape, scale = (1024, 1024), 0.6
    truth, ref, sources, _sky, _ = field(shape, scale)
    ref["pmra"] = np.zeros(len(ref))
    ref["pmdec"] = np.full(len(ref), 100.0)          # 100 mas/yr north
    path = tmp_path / "ref.ecsv"
    # positions at 2000.0 that reach the true ones at 2020.0
    moved = ref.copy()
    moved["dec"] = ref["dec"] - 2.0 / 3600.0
    moved.write(path)
    header = fits.Header({"DATE-OBS": "2020-01-01T12:00:00", "EXPTIME": 0.0})
    frame = Frame(data=np.zeros(shape), header=header)
    sol = refine_frame(frame, perturbed(truth, shape, scale), sources, catalogs=("file",),
                       per_catalog={"file": {"path": str(path), "ref_epoch": 2000.0}})
    assert sol.notes["catalog"].startswith("file")
    assert wcs_error_rms(truth, sol.wcs, shape) < 0.01
