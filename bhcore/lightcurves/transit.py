"""Fit a planetary transit to a light curve: depth, mid-time, duration with errors.

Why a physical model and batman: the depth and mid-time users quote come from a
Mandel & Agol (2002) limb-darkened model, not from averaging points in a window
(which biases the depth by the ingress and egress and gives no mid-time at all).
batman computes that model fast and exactly, and integrates it over each exposure,
so long exposures do not smear the ingress into a shallower depth.

The fit is a bounded least-squares fit (scipy) of mid-time ``t0``, radius ratio
``rp``, scaled semi-major axis ``a`` and impact parameter ``b`` (or any subset:
fixed values come from the caller, e.g. a published ephemeris), times a polynomial
baseline in time that absorbs the slow trends differential photometry leaves.
Errors come from the Jacobian, scaled by the reduced chi-square when it exceeds one;
points more than ``clip`` sigma from the model are rejected and the fit repeated.

Two depths are reported: ``depth`` = (Rp/R*)^2, the transit depth of the usual
convention (catalogues, EXOTIC and most papers quote it), and ``dip``, the deepest
fractional dip of the fitted model, which limb darkening makes larger than
(Rp/R*)^2 (by ~20 % in red light). Compare like with like.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from ..errors import BhError

SHAPE_PARAMETERS = ("t0", "rp", "a", "b")


class TransitFitError(BhError):
    """The light curve cannot constrain a transit (too few points, no coverage)."""


def transit_model(t, t0: float, period: float, rp: float, a: float, b: float,
                  limb_darkening=(0.4, 0.25), exposure_s: float | None = None):
    """Relative flux of a transiting planet (1 out of transit); times in days.

    ``limb_darkening`` holds quadratic coefficients (u1, u2), or is empty for a
    uniform disc; ``exposure_s`` integrates the model over each exposure.
    """
    import batman
    t = np.asarray(t, float)
    params = batman.TransitParams()
    params.t0, params.per, params.rp, params.a = float(t0), float(period), float(rp), float(a)
    params.inc = float(np.degrees(np.arccos(np.clip(b / a, 0.0, 1.0))))
    params.ecc, params.w = 0.0, 90.0
    params.u = [float(u) for u in limb_darkening]
    params.limb_dark = "quadratic" if len(params.u) == 2 else "uniform"
    if params.limb_dark == "uniform":
        params.u = []
    kwargs = {}
    if exposure_s:
        kwargs = {"supersample_factor": 7, "exp_time": float(exposure_s) / 86400.0}
    return batman.TransitModel(params, t, **kwargs).light_curve(params)


def total_duration(period: float, rp: float, a: float, b: float) -> float:
    """First to fourth contact (days) of a circular orbit (Seager & Mallen-Ornelas 2003)."""
    inc = np.arccos(np.clip(b / a, 0.0, 1.0))
    arg = np.sqrt(max((1 + rp) ** 2 - b ** 2, 0.0)) / (a * np.sin(inc))
    return float(period / np.pi * np.arcsin(min(arg, 1.0)))


@dataclass
class TransitFit:
    """Fitted transit parameters, their 1-sigma errors and the fit's quality."""

    values: dict[str, float]
    errors: dict[str, float]
    depth: float                 # (Rp/R*)^2
    depth_err: float
    dip: float                   # deepest fractional dip of the model (limb darkening included)
    dip_err: float
    duration: float              # T14 in days
    chi2_red: float
    n_points: int
    n_rejected: int
    rms_out: float               # scatter of the residuals outside the transit
    rms_in: float
    baseline: np.ndarray         # polynomial coefficients in (t - t_ref), highest first
    t_ref: float
    period: float
    limb_darkening: tuple = ()
    exposure_s: float | None = None
    used: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def t0(self) -> float:
        return self.values["t0"]

    @property
    def t0_err(self) -> float:
        return self.errors.get("t0", 0.0)

    def model(self, t, with_baseline: bool = True):
        """The fitted model at times ``t`` (with or without the baseline trend)."""
        v = self.values
        flux = transit_model(t, v["t0"], self.period, v["rp"], v["a"], v["b"],
                             self.limb_darkening, self.exposure_s)
        if with_baseline:
            flux = flux * np.polyval(self.baseline, np.asarray(t, float) - self.t_ref)
        return flux

    def summary(self) -> str:
        e = self.errors
        return (f"t0 {self.t0:.5f} ± {self.t0_err * 1440:.1f} min, depth (Rp/R*)^2 "
                f"{self.depth * 100:.2f} ± {self.depth_err * 100:.2f} %, deepest dip "
                f"{self.dip * 100:.2f} ± {self.dip_err * 100:.2f} %, rp "
                f"{self.values['rp']:.4f} ± {e.get('rp', 0):.4f}, T14 {self.duration * 24:.2f} h, "
                f"chi2/dof {self.chi2_red:.2f}, out-of-transit rms {self.rms_out * 100:.2f} % "
                f"({self.n_points} points, {self.n_rejected} rejected)")


def fit_transit(time, flux, flux_err, period: float, t0: float, *, rp: float = 0.1,
                a: float = 8.0, b: float = 0.3, free=SHAPE_PARAMETERS,
                limb_darkening=(0.4, 0.25), exposure_s: float | None = None,
                baseline_order: int = 1, clip: float = 5.0, max_shift: float | None = None
                ) -> TransitFit:
    """Fit a transit near ``t0`` (days) to relative fluxes; see the module docstring.

    ``free`` lists the shape parameters to fit (the others keep the given values);
    ``max_shift`` bounds the mid-time search (default: a quarter of the period).
    """
    t, f, e = (np.asarray(v, float) for v in (time, flux, flux_err))
    good = np.isfinite(t) & np.isfinite(f) & np.isfinite(e) & (e > 0)
    if good.sum() < len(free) + baseline_order + 4:
        raise TransitFitError(f"{int(good.sum())} usable points cannot constrain a transit")
    free = tuple(p for p in SHAPE_PARAMETERS if p in free)
    start = {"t0": float(t0), "rp": float(rp), "a": float(a), "b": float(b)}
    shift = period / 4 if max_shift is None else float(max_shift)
    bounds = {"t0": (t0 - shift, t0 + shift), "rp": (1e-3, 0.5), "a": (1.2, 200.0),
              "b": (0.0, 1.0)}
    t_ref = float(np.median(t[good]))
    f_scale = float(np.median(f[good]))
    norm = lambda v: v / f_scale                                           # noqa: E731

    # t0 is fitted as an offset from its start: finite-difference steps are relative
    # to the value, and a BJD of 2.46e6 would give steps of an hour
    origin = np.array([start["t0"] if k == "t0" else 0.0 for k in free])

    def unpack(p):
        shape = dict(start)
        shape.update(zip(free, p[:len(free)] + origin))
        return shape, p[len(free):]

    def model(p, tt):
        shape, poly = unpack(p)
        base = np.polyval(poly, tt - t_ref)
        return base * transit_model(tt, shape["t0"], period, shape["rp"], shape["a"],
                                    shape["b"], limb_darkening, exposure_s)

    p0 = np.array([start[k] for k in free] + [0.0] * baseline_order + [1.0])
    lo = [bounds[k][0] for k in free] + [-np.inf] * (baseline_order + 1)
    hi = [bounds[k][1] for k in free] + [np.inf] * (baseline_order + 1)
    p0[:len(free)] -= origin
    lo[:len(free)] = list(np.array(lo[:len(free)]) - origin)
    hi[:len(free)] = list(np.array(hi[:len(free)]) - origin)
    p0[:len(free)] = np.clip(p0[:len(free)], np.array(lo[:len(free)]) + 1e-9,
                             np.array(hi[:len(free)]) - 1e-9)
    used = good.copy()
    for _ in range(5):
        tt, ff, ee = t[used], norm(f[used]), norm(e[used])
        res = least_squares(lambda p: (ff - model(p, tt)) / ee, p0, bounds=(lo, hi),
                            x_scale="jac", method="trf")
        p0 = res.x
        pull = (norm(f) - model(p0, t)) / norm(e)
        keep = good & (np.abs(pull) < clip)
        if np.array_equal(keep, used):
            break
        used = keep
    dof = max(int(used.sum()) - len(p0), 1)
    chi2_red = float(np.sum(res.fun ** 2) / dof)
    # pinv: a shape parameter at a bound where the model is flat (b = 0) gets no error
    cov = np.linalg.pinv(res.jac.T @ res.jac) * max(chi2_red, 1.0)
    shape, poly = unpack(p0)
    errors = {k: float(np.sqrt(max(cov[i, i], 0.0))) for i, k in enumerate(free)}

    def dip_of(p):
        s, _ = unpack(p)
        return 1.0 - float(transit_model([s["t0"]], s["t0"], period, s["rp"], s["a"],
                                         s["b"], limb_darkening)[0])

    def propagated(func):
        """Value and 1-sigma error of ``func(p)`` through the covariance."""
        value = func(p0)
        grad = np.zeros(len(p0))
        for i in range(len(free)):
            step = max(abs(p0[i]) * 1e-6, 1e-8)
            dp = p0.copy()
            dp[i] += step
            grad[i] = (func(dp) - value) / step
        return value, float(np.sqrt(max(grad @ cov @ grad, 0.0)))

    depth, depth_err = propagated(lambda p: unpack(p)[0]["rp"] ** 2)
    dip, dip_err = propagated(dip_of)
    duration = total_duration(period, shape["rp"], shape["a"], shape["b"])
    resid = norm(f) / model(p0, t) - 1.0
    inside = np.abs(t - shape["t0"]) < duration / 2
    rms = lambda m: float(np.std(resid[m], ddof=1)) if m.sum() > 1 else float("nan")  # noqa
    return TransitFit(values=shape, errors=errors, depth=depth, depth_err=depth_err,
                      dip=dip, dip_err=dip_err,
                      duration=duration, chi2_red=chi2_red, n_points=int(used.sum()),
                      n_rejected=int(good.sum() - used.sum()), rms_out=rms(used & ~inside),
                      rms_in=rms(used & inside), baseline=np.asarray(poly) * f_scale,
                      t_ref=t_ref, period=float(period),
                      limb_darkening=tuple(limb_darkening), exposure_s=exposure_s, used=used)
