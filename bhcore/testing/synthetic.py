"""Synthetic CCD star fields with a truth table and per-star Cramér-Rao bounds.

Why: every photometry and astrometry engine of the project is judged against these
frames, so they follow the physics of a CCD: the PSF is integrated over each pixel
(see ``psf_models``), counts are Poisson in electrons, read noise is Gaussian in
electrons, and the result is converted to ADU with the gain, offset by the bias and
clipped at saturation. The truth table gives what an ideal engine should report and
the limit it cannot beat (``crlb``).

Conventions: positions are 0-based pixel centres (pixel (0, 0) is centred on
x = y = 0); ``flux`` is the total integrated star flux in ADU above sky over an
infinite detector; ``sky`` is ADU per pixel above bias; ``gain`` is e/ADU;
``read_noise`` is in electrons (header RDNOISEE); the header's RDNOISE is in ADU,
the obs.info convention every stage reads.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, Sip
from scipy.spatial import cKDTree

from ..frame import Frame, atomic_write_text, write_frame
from .crlb import _windows, blend_bounds, cramer_rao_bounds
from .psf_models import PSFModel

DEFAULT_CENTER = (301.5, 35.78)           # deg; an NGC 6871-like Milky Way field
DEFAULT_DATE = "2024-08-15T21:30:00.000"
_MJD0 = datetime(1858, 11, 17)


@dataclass
class StarField:
    """One simulated frame: image, header, truth, and the noiseless model behind it."""

    image: np.ndarray                  # ADU, float64, what a camera would deliver
    header: fits.Header
    truth: Table
    noiseless: np.ndarray              # expectation of image: stars + sky + bias (unclipped)
    sky: np.ndarray                    # ADU per pixel above bias
    wcs: WCS | None
    psf: PSFModel
    gain: float
    read_noise: float
    bias: float = 0.0
    saturation: float | None = None
    mask: np.ndarray | None = None     # known bad pixels (dead columns), True = bad
    cosmic_rays: Table = field(default_factory=Table)

    @property
    def stars_only(self) -> np.ndarray:
        """Noiseless star light in ADU (no sky, no bias)."""
        return self.noiseless - self.sky - self.bias

    def variance(self) -> np.ndarray:
        """True per-pixel variance of ``image`` in ADU^2 (before clipping)."""
        mu = np.clip(self.noiseless - self.bias, 0.0, None)
        return (mu * self.gain + self.read_noise**2) / self.gain**2

    def to_frame(self, with_error: bool = False) -> Frame:
        """The frame a pipeline would read (copies; optional true 1-sigma errors).

        The WCS is attached only when the header carries one (a night may be made
        with ``header_wcs=False`` to leave astrometry to the pipeline).
        """
        wcs = copy.deepcopy(self.wcs) if "CTYPE1" in self.header else None
        return Frame(data=self.image.copy(), header=self.header.copy(),
                     wcs=wcs, mask=None if self.mask is None
                     else self.mask.copy(),
                     error=np.sqrt(self.variance()) if with_error else None)

    def write(self, path: str | Path, truth: bool = True) -> Path:
        """Write the FITS frame atomically, and the truth as ``<stem>.truth.ecsv``."""
        path = write_frame(self.to_frame(), path)
        if truth:
            write_table(self.truth, path.with_name(path.stem + ".truth.ecsv"))
        return path


def write_table(table: Table, path: str | Path) -> Path:
    """Write an astropy table as ECSV atomically (via a temporary file and rename)."""
    import io
    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    return atomic_write_text(path, buf.getvalue())


# --- WCS -----------------------------------------------------------------------------
def _poly_terms(order: int, min_degree: int):
    return [(p, q) for p in range(order + 1) for q in range(order + 1 - p)
            if p + q >= min_degree]


def make_wcs(shape, center=DEFAULT_CENTER, pixel_scale: float = 0.6,
             rotation: float = 0.0, sip: dict | None = None) -> WCS:
    """A TAN (or TAN-SIP when ``sip`` is given) WCS with the reference at the centre.

    ``pixel_scale`` arcsec/px; ``rotation`` deg (north from +y, east to -x at 0);
    ``sip``: {"a": {(p, q): coeff}, "b": {...}} forward distortion in pixels, or
    "default" for a pincushion of ~1.5 px plus a small quadratic term at the corner.
    The inverse polynomials (AP, BP) are fitted so other tools can use them too.
    """
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [float(center[0]), float(center[1])]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    c, s = np.cos(np.radians(rotation)), np.sin(np.radians(rotation))
    w.wcs.cd = pixel_scale / 3600.0 * np.array([[-c, s], [s, c]])
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (nx, ny)
    if sip is None:
        return w
    rc = np.hypot(nx / 2.0, ny / 2.0)
    if isinstance(sip, str):
        k3, k2 = 1.5 / rc**3, 0.3 / rc**2
        sip = {"a": {(3, 0): k3, (1, 2): k3, (2, 0): k2, (0, 2): -0.5 * k2},
               "b": {(2, 1): k3, (0, 3): k3, (1, 1): k2}}
    order = max(p + q for part in ("a", "b") for p, q in sip[part])
    a = np.zeros((order + 1, order + 1))
    b = np.zeros((order + 1, order + 1))
    for (p, q), v in sip["a"].items():
        a[p, q] = v
    for (p, q), v in sip["b"].items():
        b[p, q] = v
    # fit the inverse on a grid a little larger than the detector
    uu, vv = np.meshgrid(np.linspace(-0.6 * nx, 0.6 * nx, 41),
                         np.linspace(-0.6 * ny, 0.6 * ny, 41))
    uu, vv = uu.ravel(), vv.ravel()
    fa = sum(a[p, q] * uu**p * vv**q for p, q in _poly_terms(order, 2))
    fb = sum(b[p, q] * uu**p * vv**q for p, q in _poly_terms(order, 2))
    U, V = uu + fa, vv + fb
    inv_order = order + 1
    terms = _poly_terms(inv_order, 1)
    design = np.column_stack([U**p * V**q for p, q in terms])
    ca = np.linalg.lstsq(design, uu - U, rcond=None)[0]
    cb = np.linalg.lstsq(design, vv - V, rcond=None)[0]
    ap = np.zeros((inv_order + 1, inv_order + 1))
    bp = np.zeros_like(ap)
    for (p, q), va, vb in zip(terms, ca, cb):
        ap[p, q], bp[p, q] = va, vb
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
    return w


# --- rendering ----------------------------------------------------------------------
def render_stars(psf: PSFModel, x, y, flux, shape, order: int = 5,
                 wing_tol: float = 1e-4):
    """Noiseless star light (ADU) on a detector and each star's fraction on it.

    Each star is drawn to the radius outside which less than ``wing_tol`` of its flux
    falls. The core (3 FWHM) uses ``order`` Gauss-Legendre nodes per axis per pixel,
    the wings 2x2 nodes (relative pixel error < 1e-4 there, ~1e-7 of the flux).
    """
    ny, nx = shape
    scene = np.zeros(shape)
    x, y, flux = (np.atleast_1d(np.asarray(v, float)) for v in (x, y, flux))
    fw = psf.fwhm_at(x, y)
    core = psf.core_radius(fw)
    wing = np.maximum(psf.wing_radius(fw, wing_tol), core)
    on_image = np.zeros(x.size)
    keys = np.column_stack([wing, core])
    for w_half, c_half in np.unique(keys, axis=0) if x.size else []:
        idx = np.flatnonzero((wing == w_half) & (core == c_half))
        nodes = 1 if psf.separable else (order * order if w_half == c_half else 4)
        chunk = max(1, int(4e6 // ((2 * w_half + 1) ** 2 * nodes)))
        for start in range(0, idx.size, chunk):
            sel = idx[start:start + chunk]
            if psf.separable or w_half == c_half:
                ix, iy, S = psf.stamps(x[sel], y[sel], int(w_half), fw[sel], order)
            else:
                ix, iy, S = psf.stamps(x[sel], y[sel], int(w_half), fw[sel], 2)
                _, _, C = psf.stamps(x[sel], y[sel], int(c_half), fw[sel], order)
                lo = w_half - c_half
                S[:, lo:lo + 2 * c_half + 1, lo:lo + 2 * c_half + 1] = C
            S *= flux[sel][:, None, None]
            for k, i in enumerate(sel):
                y0, x0 = iy[k] - w_half, ix[k] - w_half
                a0, a1 = max(y0, 0), min(y0 + 2 * w_half + 1, ny)
                b0, b1 = max(x0, 0), min(x0 + 2 * w_half + 1, nx)
                if a1 <= a0 or b1 <= b0:
                    continue
                part = S[k, a0 - y0:a1 - y0, b0 - x0:b1 - x0]
                scene[a0:a1, b0:b1] += part
                on_image[i] = part.sum() / flux[i] if flux[i] else 0.0
    return scene, on_image


def add_noise(expected, gain: float, read_noise: float, rng, bias: float = 0.0,
              extra_electrons=None):
    """A noisy image (ADU) from the expected ADU above bias: Poisson in electrons,
    plus Gaussian read noise in electrons, divided by the gain, plus the bias.
    Works on any shape, so many realisations can be drawn at once.
    """
    electrons = rng.poisson(np.clip(expected, 0.0, None) * gain).astype(float)
    if extra_electrons is not None:
        electrons += extra_electrons
    if read_noise:
        electrons += rng.normal(0.0, read_noise, size=electrons.shape)
    return electrons / gain + bias


def _positions(rng, n, shape, min_sep):
    ny, nx = shape
    if not min_sep:
        return rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)
    cell, grid, xs, ys = float(min_sep), {}, [], []
    for _ in range(200 * n + 1000):
        if len(xs) == n:
            break
        px, py = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
        cx, cy = int(px // cell), int(py // cell)
        if all((px - qx) ** 2 + (py - qy) ** 2 >= cell * cell
               for i in (-1, 0, 1) for j in (-1, 0, 1) for qx, qy in grid.get((cx + i, cy + j), ())):
            grid.setdefault((cx, cy), []).append((px, py))
            xs.append(px)
            ys.append(py)
    if len(xs) < n:
        raise ValueError(f"cannot place {n} stars {min_sep} px apart on {shape}")
    return np.array(xs), np.array(ys)


def _magnitudes(rng, n, mag_range, slope):
    """Magnitudes with dlog10 N / dm = slope (0 is uniform in magnitude)."""
    m1, m2 = sorted(mag_range)
    if not slope:
        return rng.uniform(m1, m2, n)
    lo, hi = 10 ** (slope * (m1 - m2)), 1.0
    return m2 + np.log10(rng.uniform(lo, hi, n)) / slope


def _mjd(when: datetime) -> float:
    return (when.replace(tzinfo=None) - _MJD0).total_seconds() / 86400.0


def _catalogue(stars, n_stars, shape, rng, w, flux_range, mag_range, zero_point, slope,
               min_sep):
    if stars is None:
        x, y = _positions(rng, n_stars, shape, min_sep)
        if mag_range is None:
            f1, f2 = flux_range or (300.0, 3e5)
            mag_range = (zero_point - 2.5 * np.log10(f2), zero_point - 2.5 * np.log10(f1))
        mag = _magnitudes(rng, n_stars, mag_range, slope)
        return np.arange(1, n_stars + 1), x, y, 10 ** (-0.4 * (mag - zero_point))
    cols = set(stars.colnames)
    if {"x", "y"} <= cols:
        x, y = np.asarray(stars["x"], float), np.asarray(stars["y"], float)
    elif {"ra", "dec"} <= cols:
        if w is None:
            raise ValueError("a catalogue with ra/dec needs a WCS (wcs='tan' ...)")
        x, y = w.all_world2pix(np.asarray(stars["ra"], float),
                               np.asarray(stars["dec"], float), 0)
    else:
        raise ValueError("stars needs columns x, y or ra, dec")
    if "flux" in cols:
        flux = np.asarray(stars["flux"], float)
    elif "mag" in cols:
        flux = 10 ** (-0.4 * (np.asarray(stars["mag"], float) - zero_point))
    else:
        raise ValueError("stars needs a flux or mag column")
    ids = np.asarray(stars["id"]) if "id" in cols else np.arange(1, len(x) + 1)
    return ids, x, y, flux


def _cosmic_rays(rng, n, shape):
    """Short straight tracks of 1-5 pixels with 1e3-3e4 electrons each."""
    ny, nx = shape
    extra = np.zeros(shape)
    rows = []
    for _ in range(n):
        x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        length, angle = rng.integers(1, 6), rng.uniform(0, np.pi)
        total = np.exp(rng.uniform(np.log(1e3), np.log(3e4)))
        steps = np.arange(length)
        px = np.clip(np.round(x0 + steps * np.cos(angle)).astype(int), 0, nx - 1)
        py = np.clip(np.round(y0 + steps * np.sin(angle)).astype(int), 0, ny - 1)
        np.add.at(extra, (py, px), total / length)
        rows.append((px[0], py[0], length, total))
    t = Table(rows=rows or None, names=("x", "y", "length", "electrons"),
              dtype=(int, int, int, float))
    return extra, t


def make_star_field(shape=(512, 512), n_stars: int = 200, *, psf: str = "moffat",
                    fwhm: float = 3.0, beta: float = 2.8, fwhm_gradient: float = 0.0,
                    ellipticity: float = 0.0, theta: float = 0.0, sky=600.0,
                    gain: float = 1.6, read_noise: float = 9.0,
                    saturation: float | None = None, bias: float = 0.0,
                    flux_range=None, mag_range=None, zero_point: float = 25.0,
                    mag_slope: float = 0.3, min_separation: float | None = None,
                    stars: Table | None = None, wcs=None, center=DEFAULT_CENTER,
                    pixel_scale: float = 0.6, rotation: float = 0.0, sip=None,
                    cosmic_rays: int = 0, bad_columns: int = 0, noise: bool = True,
                    seed=None, oversample: int = 5, wing_tol: float = 1e-4,
                    exptime: float = 60.0, date_obs: str = DEFAULT_DATE,
                    header_cards: dict | None = None, blends: bool = True) -> StarField:
    """Simulate one CCD frame of stars; see the module docstring for conventions.

    Fluxes: ``flux_range`` (ADU, default 300..3e5) or ``mag_range`` with
    ``zero_point`` (mag of 1 ADU), drawn with dlogN/dm = ``mag_slope``. ``stars``: a
    catalogue with x, y (or ra, dec and a WCS) and flux (or mag); stars whose light
    cannot reach the detector are dropped. ``wcs``: None, "tan", "tan-sip" (``sip``
    coefficients or the default distortion) or a WCS. ``oversample``: Gauss-Legendre
    nodes per axis per pixel in the core. ``blends``: also compute the joint bounds.
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    model = PSFModel(psf, fwhm, beta, ellipticity, theta, fwhm_gradient, shape)
    if isinstance(wcs, str):
        if wcs not in ("tan", "tan-sip"):
            raise ValueError("wcs must be None, 'tan', 'tan-sip' or an astropy WCS")
        wcs = make_wcs(shape, center, pixel_scale, rotation,
                       (sip or "default") if wcs == "tan-sip" else None)
    elif wcs is not None:
        wcs = copy.deepcopy(wcs)
    ids, x, y, flux = _catalogue(stars, n_stars, shape, rng, wcs, flux_range, mag_range,
                                 zero_point, mag_slope, min_separation)
    reach = model.wing_radius(model.fwhm_at(x, y), wing_tol) + 1
    keep = ((x > -reach) & (x < shape[1] - 1 + reach) & (y > -reach)
            & (y < shape[0] - 1 + reach))
    ids, x, y, flux = ids[keep], x[keep], y[keep], flux[keep]

    scene, on_image = render_stars(model, x, y, flux, shape, oversample, wing_tol)
    sky_img = np.broadcast_to(np.asarray(sky, float), shape)
    expected = scene + sky_img
    extra, cr_table = _cosmic_rays(rng, cosmic_rays, shape)
    if noise:
        image = add_noise(expected, gain, read_noise, rng, bias, extra)
    else:
        image = expected + extra / gain + bias
    mask = None
    columns = np.sort(rng.choice(shape[1], size=min(bad_columns, shape[1]), replace=False))
    if columns.size:
        mask = np.zeros(shape, dtype=bool)
        mask[:, columns] = True
        image[:, columns] = bias + (rng.normal(0.0, read_noise / gain, (shape[0], columns.size))
                                    if noise else 0.0)
    clipped = np.zeros(shape, dtype=bool)
    if saturation is not None:
        clipped = image >= saturation
        image = np.minimum(image, saturation)

    fw = model.fwhm_at(x, y)
    bounds = cramer_rao_bounds(model, x, y, flux, sky_img, gain, read_noise, scene=scene,
                               mask=mask, saturation=saturation, bias=bias, order=oversample)
    truth = Table()
    truth["id"] = ids
    truth["x"] = x
    truth["y"] = y
    truth["flux"] = flux
    with np.errstate(divide="ignore"):
        truth["mag"] = zero_point - 2.5 * np.log10(flux)
    truth["fwhm"] = fw
    level = np.inf if saturation is None else saturation
    truth["saturated"] = _saturated(x, y, fw, clipped | (scene + sky_img + bias >= level))
    truth["snr"] = flux / bounds["crlb_flux"]
    for name in ("crlb_flux", "crlb_x", "crlb_y", "crlb_flux_skyfree",
                 "crlb_x_skyfree", "crlb_y_skyfree"):
        truth[name] = bounds[name]
    if blends:
        joint = blend_bounds(model, x, y, flux, sky_img, gain, read_noise, scene,
                             mask=mask, saturation=saturation, bias=bias, order=oversample)
        for name in ("crlb_flux_blend", "crlb_x_blend", "crlb_y_blend", "n_group"):
            truth[name] = joint[name]
    truth["nn_dist"] = _nearest(x, y)
    truth["frac_on_image"] = on_image
    if wcs is not None:
        ra, dec = wcs.all_pix2world(x, y, 0) if x.size else (x, y)
        truth["ra"], truth["dec"] = ra, dec
    _describe(truth)

    header = _header(shape, model, gain, read_noise, saturation, bias, sky, exptime,
                     date_obs, seed, zero_point, oversample, len(ids), cosmic_rays,
                     columns, wcs, header_cards)
    truth.meta.update({"psf": psf, "fwhm_centre": float(fwhm), "beta": float(beta),
                       "fwhm_gradient": float(fwhm_gradient), "gain": float(gain),
                       "read_noise_e": float(read_noise), "sky_adu": float(np.mean(sky_img)),
                       "bias": float(bias), "zero_point": float(zero_point),
                       "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
                       "bad_columns": [int(c) for c in columns],
                       "crlb_model": "flux,x,y free; sky and neighbours known; box "
                                     "2*ceil(3 FWHM_major)+1"})
    return StarField(image=image, header=header, truth=truth,
                     noiseless=expected + bias, sky=sky_img, wcs=wcs, psf=model,
                     gain=gain, read_noise=read_noise, bias=bias, saturation=saturation,
                     mask=mask, cosmic_rays=cr_table)


def _saturated(x, y, fw, bad):
    """True where a clipped pixel lies within max(FWHM, 1.5) px of the star centre."""
    if x.size == 0 or not bad.any():
        return np.zeros(x.size, dtype=bool)
    half = int(np.ceil(max(fw.max(), 1.5)))
    ix, iy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    win = _windows(np.pad(bad.astype(float), half), half, ix, iy, half) > 0
    k = np.arange(-half, half + 1)
    dx = k[None, None, :] + ix[:, None, None] - x[:, None, None]
    dy = k[None, :, None] + iy[:, None, None] - y[:, None, None]
    radius = np.maximum(fw, 1.5)[:, None, None]
    return np.any(win & (dx * dx + dy * dy <= radius * radius), axis=(1, 2))


def _nearest(x, y):
    if x.size < 2:
        return np.full(x.size, np.inf)
    dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    return dist[:, 1]


def _describe(truth: Table) -> None:
    units = {"x": u.pix, "y": u.pix, "flux": u.adu, "mag": u.mag, "fwhm": u.pix,
             "crlb_flux": u.adu, "crlb_x": u.pix, "crlb_y": u.pix,
             "crlb_flux_skyfree": u.adu, "crlb_x_skyfree": u.pix,
             "crlb_y_skyfree": u.pix, "crlb_flux_blend": u.adu, "crlb_x_blend": u.pix,
             "crlb_y_blend": u.pix, "nn_dist": u.pix, "ra": u.deg, "dec": u.deg}
    text = {"x": "0-based column of the centroid", "y": "0-based row of the centroid",
            "flux": "total integrated flux above sky (infinite detector)",
            "fwhm": "geometric-mean FWHM of the PSF at the star",
            "saturated": "a clipped pixel within max(FWHM, 1.5) px",
            "snr": "flux / crlb_flux: the best achievable S/N",
            "crlb_flux": "Cramer-Rao bound, flux/x/y fit, sky and neighbours known",
            "crlb_flux_skyfree": "Cramer-Rao bound with a free constant local sky",
            "crlb_flux_blend": "Cramer-Rao bound fitting the overlapping group jointly",
            "n_group": "stars in the joint (blend) group",
            "nn_dist": "distance to the nearest other star",
            "frac_on_image": "fraction of the flux that lands on the detector"}
    for name, unit in units.items():
        if name in truth.colnames:
            truth[name].unit = unit
    for name, desc in text.items():
        if name in truth.colnames:
            truth[name].description = desc


def _header(shape, model, gain, read_noise, saturation, bias, sky, exptime, date_obs,
            seed, zero_point, order, n_stars, n_cr, columns, wcs, extra):
    when = datetime.fromisoformat(str(date_obs))
    h = fits.Header()
    h["BUNIT"] = ("ADU", "pixel unit")
    h["IMAGETYP"] = ("LIGHT", "frame type")
    h["DATE-OBS"] = (when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23], "UTC start of exposure")
    h["MJD-OBS"] = (round(_mjd(when), 8), "MJD (UTC) start of exposure")
    h["EXPTIME"] = (float(exptime), "[s] exposure time")
    h["GAIN"] = (float(gain), "[e-/ADU] gain")
    h["RDNOISE"] = (float(read_noise / gain), "[ADU] read noise (obs.info convention)")
    h["RDNOISEE"] = (float(read_noise), "[e-] read noise")
    if saturation is not None:
        h["SATURATE"] = (float(saturation), "[ADU] saturation level (raw)")
    h["SIMULATE"] = (True, "synthetic frame made by bhcore.testing")
    h["SIMPSF"] = (model.kind, "truth: PSF profile")
    h["SIMFWHM"] = (float(model.fwhm), "[px] truth: FWHM at the detector centre")
    if model.kind == "moffat":
        h["SIMBETA"] = (float(model.beta), "truth: Moffat beta")
    h["SIMFWGRD"] = (float(model.fwhm_gradient), "truth: fractional FWHM growth to corner")
    h["SIMELL"] = (float(model.ellipticity), "truth: PSF ellipticity 1-b/a")
    h["SIMTHETA"] = (float(model.theta), "[deg] truth: PSF major axis from +x")
    h["SIMSKY"] = (float(np.mean(sky)), "[ADU] truth: mean sky above bias")
    h["SIMBIAS"] = (float(bias), "[ADU] truth: bias offset")
    h["SIMZP"] = (float(zero_point), "truth: mag of 1 ADU total flux")
    h["SIMNSTAR"] = (int(n_stars), "truth: stars drawn")
    h["SIMNCR"] = (int(n_cr), "truth: cosmic rays")
    h["SIMNBADC"] = (int(len(columns)), "truth: dead columns (see mask)")
    h["SIMORDER"] = (int(order), "pixel integration nodes per axis")
    if isinstance(seed, (int, np.integer)):
        h["SIMSEED"] = (int(seed), "random seed")
    for key, value in (extra or {}).items():
        h[key] = value
    if wcs is not None:
        h.update(wcs.to_header(relax=True))
    return h
