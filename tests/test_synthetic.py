"""The synthetic generator must be physically right: every engine is judged by it.

The key test draws ~2000 noise realisations of one star, fits each with the true PSF
by weighted least squares and checks that the scatter equals the Cramér-Rao bound
in the truth table (within 5 %; the statistical error of the scatter is ~1.6 %).
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.integrate import dblquad

from bhcore.frame import read_frame
from bhcore.testing import (PSFModel, add_noise, cramer_rao_bounds, make_night,
                            make_star_field)


def one_star(x, y, flux, shape=(121, 121), **kw):
    kw.setdefault("noise", False)
    kw.setdefault("blends", False)
    return make_star_field(shape, stars=Table({"x": [x], "y": [y], "flux": [flux]}), **kw)


# --- pixel integration ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["moffat", "gaussian"])
def test_pixel_values_are_integrals_over_the_pixel(kind):
    psf = PSFModel(kind, fwhm=2.6, beta=2.8, ellipticity=0.25, theta=35.0)
    x0, y0 = 0.23, -0.41
    for i, j in [(0, 0), (1, 0), (-1, 2), (3, -2), (6, 5)]:
        got = psf.integrate(np.array(i - x0), np.array(j - y0), 2.6)
        ref = dblquad(lambda yy, xx: psf.profile(xx - x0, yy - y0, 2.6),
                      i - 0.5, i + 0.5, j - 0.5, j + 0.5, epsabs=1e-15, epsrel=1e-12)[0]
        assert got == pytest.approx(ref, rel=1e-7)
    # sampled at the centre instead would be several per cent off in the core
    assert abs(psf.profile(-x0, -y0, 2.6) / psf.integrate(np.array(-x0), np.array(-y0), 2.6)
               - 1) > 0.02


def test_exact_erf_gaussian_agrees_with_quadrature():
    exact = PSFModel("gaussian", fwhm=2.2)
    assert exact.separable
    k = np.arange(-7, 8.0)
    dx, dy = k[None, :] - 0.31, k[:, None] + 0.17
    ref = np.array([[dblquad(lambda yy, xx: exact.profile(xx, yy, 2.2), a - 0.5, a + 0.5,
                             b - 0.5, b + 0.5, epsabs=1e-15)[0] for a in dx[0, 5:10]]
                    for b in dy[5:10, 0]])
    assert np.allclose(exact.integrate(dx, dy, 2.2)[5:10, 5:10], ref, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kind", ["moffat", "gaussian"])
@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.5, 0.5), (0.25, -0.37), (-0.49, 0.11)])
def test_flux_is_conserved(kind, offset):
    flux = 1.0e5
    field = one_star(60 + offset[0], 60 + offset[1], flux, psf=kind, ellipticity=0.15,
                     theta=20.0)
    total = field.stars_only.sum()
    assert abs(total / flux - 1) < 2e-4            # the requirement is 1e-3
    assert field.truth["frac_on_image"][0] == pytest.approx(total / flux, rel=1e-12)


def test_pixel_integration_has_converged():
    coarse = one_star(60.3, 59.8, 1e5, fwhm=2.0, oversample=5).stars_only
    fine = one_star(60.3, 59.8, 1e5, fwhm=2.0, oversample=12).stars_only
    assert np.abs(coarse - fine).max() < 1e-7 * coarse.max()


# --- noise ---------------------------------------------------------------------------
@pytest.mark.parametrize("gain,read_noise,bias", [(1.6, 9.0, 0.0), (4.0, 15.0, 1000.0)])
def test_sky_noise_matches_the_ccd_model(gain, read_noise, bias):
    sky = 600.0
    field = make_star_field((256, 256), 0, sky=sky, gain=gain, read_noise=read_noise,
                            bias=bias, seed=5)
    expected_var = (sky * gain + read_noise**2) / gain**2
    assert field.image.var() == pytest.approx(expected_var, rel=0.02)
    assert field.image.mean() == pytest.approx(sky + bias, abs=5 * np.sqrt(expected_var) / 256)
    assert field.header["GAIN"] == gain and field.header["RDNOISEE"] == read_noise
    assert field.header["RDNOISE"] == pytest.approx(read_noise / gain)
    assert np.allclose(field.variance(), expected_var)


def test_counts_are_poisson_in_electrons():
    field = make_star_field((128, 128), 0, sky=3.0, gain=2.0, read_noise=0.0, seed=2)
    electrons = field.image * 2.0
    assert np.allclose(electrons, np.round(electrons))
    assert electrons.var() == pytest.approx(electrons.mean(), rel=0.05)


# --- Cramér-Rao bounds -----------------------------------------------------------------
def test_crlb_agrees_with_the_analytic_gaussian_limit():
    """Faint star, sky-dominated: sigma_F^2 = 4 pi s^2 var, sigma_x^2 = 8 pi s^4 var / F^2."""
    sigma = 2.0
    psf = PSFModel("gaussian", fwhm=sigma * 2 * np.sqrt(2 * np.log(2)))
    bounds = cramer_rao_bounds(psf, [10.0], [20.0], [1.0], 600.0, 1.6, 9.0, box=41)
    var = (600.0 * 1.6 + 81.0) / 1.6**2
    s2 = sigma**2 + 1.0 / 12.0                     # the pixel adds 1/12 px^2
    assert bounds["crlb_flux"][0] == pytest.approx(np.sqrt(4 * np.pi * s2 * var), rel=1e-3)
    assert bounds["crlb_x"][0] == pytest.approx(np.sqrt(8 * np.pi * s2**2 * var), rel=1e-3)
    assert bounds["crlb_flux_skyfree"][0] > bounds["crlb_flux"][0]


def _fit(psf, fwhm, data, weight, X, Y, p0, n_star, skyfree, iters=20):
    """Vectorised Gauss-Newton weighted least squares: (F, x, y) per star [+ sky]."""
    p = np.array(p0, float)
    for _ in range(iters):
        model, cols = 0.0, []
        for s in range(n_star):
            F, x, y = (p[:, 3 * s + i, None, None] for i in range(3))
            P, Px, Py = psf.integrate(X - x, Y - y, fwhm, derivatives=True)
            model = model + F * P
            cols += [P, F * Px, F * Py]
        if skyfree:
            model = model + p[:, -1, None, None]
            cols.append(np.ones_like(cols[0]))
        J = np.stack(cols, axis=1)
        A = np.einsum("ij,naij,nbij->nab", weight, J, J)
        b = np.einsum("ij,naij,nij->na", weight, J, data - model)
        step = np.linalg.solve(A, b[..., None])[..., 0]
        p += step
        xy = step[:, :3 * n_star].reshape(len(p), n_star, 3)[..., 1:]
        if np.abs(xy).max() < 1e-5:          # px; the scatter is ~0.05 px
            break
    return p


def _monte_carlo(field, stars, skyfree, n_real=2000, seed=11):
    """Fit ``n_real`` noisy copies of ``field`` over the union of the stars' boxes."""
    truth, psf = field.truth, field.psf
    half = psf.core_radius(truth["fwhm"][0])
    ix = np.round(np.asarray(truth["x"])[stars]).astype(int)
    iy = np.round(np.asarray(truth["y"])[stars]).astype(int)
    rows = slice(iy.min() - half, iy.max() + half + 1)
    cols = slice(ix.min() - half, ix.max() + half + 1)
    X = np.arange(cols.start, cols.stop, dtype=float)[None, :]
    Y = np.arange(rows.start, rows.stop, dtype=float)[:, None]
    expected = (field.noiseless - field.bias)[rows, cols]
    weight = 1.0 / field.variance()[rows, cols]
    sky = field.sky[rows, cols]
    start = np.concatenate([[truth["flux"][s], truth["x"][s], truth["y"][s]] for s in stars])
    start = np.concatenate([start, [sky.mean()]]) if skyfree else start
    rng = np.random.default_rng(seed)
    fits_ = []
    for chunk in np.array_split(np.arange(n_real), n_real // 250):
        data = add_noise(np.broadcast_to(expected, (chunk.size,) + expected.shape),
                         field.gain, field.read_noise, rng)
        data = data if skyfree else data - sky
        fits_.append(_fit(psf, truth["fwhm"][0], data, weight, X, Y,
                          np.tile(start, (chunk.size, 1)), len(stars), skyfree))
    p = np.concatenate(fits_)
    err = p[:, :3] - start[:3]
    return np.sqrt(np.mean(err**2, axis=0))      # rms about the truth (bias included)


@pytest.mark.parametrize("kind,flux,skyfree,n_real", [("moffat", 2.0e4, False, 3000),
                                                      ("moffat", 4.0e3, True, 2000),
                                                      ("gaussian", 6.0e3, False, 3000)])
def test_least_squares_scatter_reaches_the_cramer_rao_bound(kind, flux, skyfree, n_real):
    field = one_star(15.27, 14.81, flux, shape=(31, 31), psf=kind)
    rms = _monte_carlo(field, [0], skyfree, n_real)
    suffix = "_skyfree" if skyfree else ""
    bound = np.array([field.truth[f"crlb_{n}{suffix}"][0] for n in ("flux", "x", "y")])
    ratio = rms / bound
    assert np.all(np.abs(ratio - 1) < 0.05), f"scatter/CRLB (flux, x, y) = {ratio}"


def test_blend_bound_is_reached_by_a_joint_fit():
    stars = Table({"x": [15.3, 18.3], "y": [16.8, 17.7], "flux": [1.0e4, 6.0e3]})
    field = make_star_field((36, 38), stars=stars, noise=False)
    truth = field.truth
    assert truth["n_group"][0] == 2
    assert truth["crlb_flux_blend"][0] > 1.3 * truth["crlb_flux"][0]   # the blend matters
    rms = _monte_carlo(field, [0, 1], skyfree=False, n_real=1500)
    ratio = rms / [truth["crlb_flux_blend"][0], truth["crlb_x_blend"][0],
                   truth["crlb_y_blend"][0]]
    assert np.all(np.abs(ratio - 1) < 0.06), f"joint-fit scatter/blend CRLB = {ratio}"


# --- conventions -----------------------------------------------------------------------
def test_positions_are_zero_based_pixel_centres():
    field = one_star(10.0, 15.0, 1e4, shape=(31, 21), psf="gaussian", fwhm=2.5)
    img = field.stars_only
    yy, xx = np.indices(img.shape)
    assert np.unravel_index(img.argmax(), img.shape) == (15, 10)
    assert (img * xx).sum() / img.sum() == pytest.approx(10.0, abs=1e-9)
    assert (img * yy).sum() / img.sum() == pytest.approx(15.0, abs=1e-9)
    moffat = one_star(60.25, 59.6, 1e4).stars_only        # wings fit on 121x121
    assert (moffat * np.indices(moffat.shape)[1]).sum() / moffat.sum() == pytest.approx(
        60.25, abs=1e-3)


def test_wcs_round_trip_through_the_header_and_a_file(tmp_path):
    field = make_star_field((300, 400), 60, wcs="tan-sip", rotation=17.0, pixel_scale=0.9,
                            seed=3, blends=False)
    truth = field.truth
    header_wcs = WCS(field.header)
    x, y = header_wcs.all_world2pix(truth["ra"], truth["dec"], 0)
    assert np.abs(x - truth["x"]).max() < 1e-6 and np.abs(y - truth["y"]).max() < 1e-6
    frame = read_frame(field.write(tmp_path / "f.fits"))
    x, y = frame.wcs.all_world2pix(truth["ra"], truth["dec"], 0)
    assert np.abs(x - truth["x"]).max() < 1e-6
    assert frame.data.shape == (300, 400)
    # the distortion is real: ignoring SIP moves corner stars by more than half a pixel
    xs, ys = header_wcs.wcs_world2pix(truth["ra"], truth["dec"], 0)
    assert np.hypot(xs - truth["x"], ys - truth["y"]).max() > 0.5
    # the fitted inverse (AP, BP) agrees with the forward SIP
    u = np.array([-180.0, 150.0]), np.array([-140.0, 120.0])
    foc = header_wcs.sip_pix2foc(u[0] + 200.5, u[1] + 150.5, 1)
    back = header_wcs.sip_foc2pix(foc[0], foc[1], 1)
    assert np.allclose(back, (u[0] + 200.5, u[1] + 150.5), atol=0.01)
    got = Table.read(tmp_path / "f.truth.ecsv")
    assert np.allclose(got["x"], truth["x"])


def test_catalogue_on_the_sky_lands_where_the_wcs_says():
    base = make_star_field((200, 200), 20, wcs="tan", seed=8, noise=False, blends=False)
    again = make_star_field((200, 200), stars=base.truth["ra", "dec", "mag"], wcs=base.wcs,
                            noise=False, blends=False)
    assert np.allclose(again.truth["x"], base.truth["x"], atol=1e-8)
    assert np.allclose(again.image, base.image, rtol=1e-10)


def test_saturated_stars_are_flagged():
    field = make_star_field((200, 200), 80, flux_range=(1e3, 1e6), saturation=30000.0, mag_slope=0.0,
                            seed=4, blends=False)
    truth, img = field.truth, field.image
    assert img.max() == 30000.0 and field.header["SATURATE"] == 30000.0
    assert 0 < truth["saturated"].sum() < len(truth)
    for row in truth:
        iy, ix = int(round(row["y"])), int(round(row["x"]))
        if 1 <= ix < 199 and 1 <= iy < 199:
            clipped = (img[iy - 1:iy + 2, ix - 1:ix + 2] >= 30000.0).any()
            assert not clipped or row["saturated"]
    bright = truth["flux"] > 1e6 * 0.9
    assert np.all(truth["saturated"][bright])
    assert np.all(truth["crlb_flux"][truth["saturated"]] > 0)


def test_same_seed_same_field_different_seed_different_field():
    a = make_star_field((96, 96), 30, seed=21, cosmic_rays=3, bad_columns=1)
    b = make_star_field((96, 96), 30, seed=21, cosmic_rays=3, bad_columns=1)
    c = make_star_field((96, 96), 30, seed=22, cosmic_rays=3, bad_columns=1)
    assert np.array_equal(a.image, b.image)
    assert all(np.array_equal(a.truth[n], b.truth[n]) for n in a.truth.colnames)
    assert not np.array_equal(a.image, c.image)


def test_defects_are_recorded():
    field = make_star_field((64, 64), 5, cosmic_rays=4, bad_columns=2, seed=1, bias=300.0)
    assert len(field.cosmic_rays) == 4 and field.header["SIMNCR"] == 4
    columns = field.truth.meta["bad_columns"]
    assert field.mask[:, columns].all() and field.mask.sum() == 2 * 64
    assert np.abs(field.image[:, columns].mean() - 300.0) < 3.0
    assert field.to_frame().mask is not None


def test_field_dependent_fwhm():
    field = make_star_field((256, 256), 40, fwhm=3.0, fwhm_gradient=0.24, seed=2,
                            blends=False)
    assert field.psf.fwhm_at(0.0, 0.0) == pytest.approx(3.0 * 1.24)
    assert field.psf.fwhm_at(127.5, 127.5) == pytest.approx(3.0)
    assert np.allclose(field.truth["fwhm"], field.psf.fwhm_at(field.truth["x"],
                                                              field.truth["y"]))


# --- a night -------------------------------------------------------------------------
def test_night_has_the_transit_the_drift_and_the_files(tmp_path):
    # a uniform disc: the flat bottom is rp^2 deep, and the middle exposure lies on it
    night = make_night(tmp_path, n_frames=9, shape=(128, 128), n_stars=25, seed=6,
                       drift=(0.5, -0.3), jitter=0.0, transit_rp=np.sqrt(0.02),
                       limb_darkening=(), variable_amplitude=0.1,
                       transparency_variation=0.0, seeing_variation=0.0)
    lc = night.lightcurve
    depth = 1 - lc["target_rel_flux"].min()
    assert depth == pytest.approx(0.02, rel=1e-6)                  # full depth mid-transit
    assert lc.meta["transit_depth"] == pytest.approx(0.02, rel=1e-6)
    assert lc["target_rel_flux"][0] == 1.0 and lc["target_rel_flux"][-1] == 1.0
    span = lc["mjd_mid"][-1] - lc["mjd_mid"][0] + 60 / 86400
    assert lc.meta["transit_duration_d"] == pytest.approx(span / 2, rel=1e-6)
    # limb darkening makes the centre deeper than rp^2 and rounds the bottom
    limb = make_night(n_frames=9, shape=(64, 64), n_stars=5, seed=6, keep_frames=False,
                      transit_rp=np.sqrt(0.02)).lightcurve
    assert limb.meta["transit_depth"] == pytest.approx(0.02, rel=1e-6)
    assert limb.meta["transit_dip"] > 0.02 and np.sum(limb["target_rel_flux"] < 1) >= 3
    assert np.ptp(lc["variable_rel_flux"]) > 0.05
    # the image itself carries the transit: noiseless light around the target
    inside, outside = int(np.argmin(lc["target_rel_flux"])), 0
    sums = []
    for i in (inside, outside):
        f = night.frames[i]
        row = f.truth[f.truth["id"] == night.target_id][0]
        iy, ix = int(round(row["y"])), int(round(row["x"]))
        sums.append(f.stars_only[iy - 12:iy + 13, ix - 12:ix + 13].sum())
    assert sums[0] / sums[1] == pytest.approx(0.98, rel=1e-3)
    # stars move with the drift
    t0, t8 = night.truth[0], night.truth[8]
    common = np.intersect1d(t0["id"], t8["id"])
    dx = t8["x"][np.searchsorted(t8["id"], common)] - t0["x"][np.searchsorted(t0["id"], common)]
    assert np.allclose(dx, 8 * 0.5, atol=0.01)
    # files: frames with observatory keywords, truth per frame, light-curve truth
    assert len(night.paths) == 9
    header = fits.getheader(night.paths[3])
    for key in ("DATE-OBS", "EXPTIME", "FILTER", "OBJECT", "TELESCOP", "RA", "DEC", "GAIN"):
        assert key in header
    assert Table.read(tmp_path / "lightcurve.ecsv")["target_rel_flux"].min() == lc[
        "target_rel_flux"].min()
    assert len(Table.read(night.paths[3].with_name("frame_0004.truth.ecsv"))) == len(
        night.truth[3])


def test_simulate_command_writes_a_night(tmp_path):
    import typer
    from typer.testing import CliRunner

    from bhcore.cli.simulate_cmd import simulate

    app = typer.Typer()
    app.command("simulate")(simulate)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "out"), "--n-frames", "2",
                                      "--size", "64", "--n-stars", "10"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "frame_0002.fits").exists()
    assert (tmp_path / "out" / "lightcurve.ecsv").exists()
