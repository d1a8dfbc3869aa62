"""Simultaneous PSF fitting of every star in the frame.

All stars are fitted together by damped Gauss-Newton on the whole image: the
residual is the data minus the sky minus *every* star's model (wings included),
the weights are the inverse model variance (sky and read noise plus each star's
own Poisson noise), and stars whose fit boxes share pixels form a group whose
normal equations are solved jointly (small dense blocks, so cost grows linearly
with the number of stars). Converged groups leave the active set; a group is
refitted only when a member is still moving. The covariance of every star is the
inverse of its group's Fisher matrix, so blended stars get honest errors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from . import solve_kernels as kernels
from .grouping import (candidate_pairs, group_arrays, groups_of, overlap_pairs,
                       pairs_by_group)
from .layout import Layout
from .psf import PSFModel


@dataclass
class Scene:
    """What the fit sees: data minus sky, sky variance, bad pixels, gain, PSF."""

    dsub: np.ndarray
    varsky: np.ndarray
    bad: np.ndarray
    gain_inv: float
    psf: PSFModel

    @property
    def shape(self):
        return self.dsub.shape


@dataclass
class Stars:
    """Current parameters and per-star bookkeeping of the fit."""

    x: np.ndarray
    y: np.ndarray
    f: np.ndarray
    alive: np.ndarray
    converged: np.ndarray
    cov: np.ndarray = None              # (n, 3, 3) flux, x, y
    chi2: np.ndarray = None
    npix: np.ndarray = None
    group: np.ndarray = None
    group_size: np.ndarray = None
    sky_offset: np.ndarray = None       # local sky fitted per group (0 if not fitted)
    iterations: int = 0

    @classmethod
    def new(cls, x, y, f):
        n = len(x)
        return cls(np.asarray(x, float).copy(), np.asarray(y, float).copy(),
                   np.asarray(f, float).copy(), np.ones(n, bool), np.zeros(n, bool))

    def subset(self, keep) -> "Stars":
        out = Stars(self.x[keep], self.y[keep], self.f[keep], self.alive[keep],
                    self.converged[keep])
        for name in ("cov", "chi2", "npix", "group", "group_size", "sky_offset"):
            value = getattr(self, name)
            if value is not None:
                setattr(out, name, value[keep])
        return out

    def append(self, x, y, f) -> "Stars":
        n_new = len(x)
        return Stars(np.concatenate([self.x, x]), np.concatenate([self.y, y]),
                     np.concatenate([self.f, f]),
                     np.concatenate([self.alive, np.ones(n_new, bool)]),
                     np.concatenate([self.converged, np.zeros(n_new, bool)]))


@dataclass
class FitOptions:
    fit_positions: bool = True
    fit_sky: bool = False
    max_iter: int = 20
    max_step: float = 1.0           # px per iteration
    drop_snr: float = 1.0           # remove stars fainter than this (flux / error)
    merge_fwhm: float = 0.4         # merge stars closer than this many FWHM
    tol: float = 0.1                # converged when every step < tol * its error
    fit_radius: tuple = (1.5, 3.0)  # fit box half-size limits, in FWHM
    render_max: float = 10.0        # render box half-size limit, in FWHM
    allow_negative: bool = False    # forced photometry: a flux may come out negative


class Fitter:
    """Fit all stars of a scene together; keeps the model image up to date."""

    def __init__(self, scene: Scene, stars: Stars, options: FitOptions | None = None):
        self.scene = scene
        self.stars = stars
        self.opt = options or FitOptions()
        self.model = np.zeros(scene.shape)
        self.skyimg = np.zeros(scene.shape) if self.opt.fit_sky else None
        self.star_sky = np.zeros(len(stars.x))
        self.layout = Layout(scene, stars, self.opt.fit_radius, self.opt.render_max)
        n = len(stars.x)
        live = np.flatnonzero(stars.alive)
        self.layout.evaluate(scene, stars, live)
        self.layout.paint(self.model, stars, live, np.where(stars.alive, stars.f, 0.0))
        self.npar = 3 if self.opt.fit_positions else 1
        self.D = np.zeros((n, 3, 3))
        self.g = np.zeros((n, 3))
        self.chi2 = np.zeros(n)
        self.npix = np.zeros(n, np.int64)
        self.skyc = np.zeros((n, 3))
        self.prev_step = np.zeros((n, 3))
        self.damp = np.ones(n)
        self.stalled = np.zeros(n, bool)
        self._cand = None

    def add_stars(self, x, y, f):
        """Append new stars (already-fitted ones keep their state); returns their
        indices, to be passed as ``active`` to :meth:`run`."""
        st = self.stars
        n_old = len(st.x)
        self.stars = st = st.append(np.asarray(x, float), np.asarray(y, float),
                                    np.asarray(f, float))
        new = np.arange(n_old, len(st.x))
        self.layout.extend(self.scene, st.x[new], st.y[new], st.f[new])
        self.layout.refresh_args(self.scene, st)
        self._cand = None
        self.layout.evaluate(self.scene, st, new)
        self.layout.paint(self.model, st, new, np.where(np.isin(np.arange(len(st.x)), new),
                                                         st.f, 0.0))
        n = len(st.x)
        grow3 = lambda a: np.concatenate([a, np.zeros((n - a.shape[0],) + a.shape[1:])])
        self.D = grow3(self.D)
        self.g = grow3(self.g)
        self.chi2 = grow3(self.chi2)
        self.npix = np.concatenate([self.npix, np.zeros(n - self.npix.size, np.int64)])
        self.skyc = grow3(self.skyc)
        self.prev_step = grow3(self.prev_step)
        self.damp = np.concatenate([self.damp, np.ones(n - self.damp.size)])
        self.stalled = np.concatenate([self.stalled, np.zeros(n - self.stalled.size, bool)])
        self.star_sky = np.concatenate([self.star_sky, np.zeros(n - self.star_sky.size)])
        return new

    # -- one linearisation ----------------------------------------------------------
    def _normals(self, members, pi, pj):
        st, sc, L = self.stars, self.scene, self.layout
        total = self.model if self.skyimg is None else self.model + self.skyimg
        kernels.normal_diag(members, L.bx, L.by, st.f, L.hf, L.foff, L.fP, L.fPx, L.fPy,
                            sc.dsub, total, sc.varsky, sc.bad, sc.gain_inv, self.D,
                            self.g, self.chi2, self.npix, self.skyc)
        Bk = np.zeros((pi.size, 3, 3))
        if pi.size:
            kernels.normal_pairs(pi, pj, L.bx, L.by, st.f, L.hf, L.foff, L.fP, L.fPx,
                                 L.fPy, total, sc.varsky, sc.bad, sc.gain_inv, Bk)
        return Bk

    def _solve(self, labels, members, pi_all, pj_all, lam, want_cov):
        st = self.stars
        order, gstart, uniq = group_arrays(labels, members)
        pi, pj, pstart = pairs_by_group(labels, pi_all, pj_all, uniq)
        Bk = self._normals(order, pi, pj)
        ng = uniq.size
        gsky = np.zeros((ng, 3))
        if self.opt.fit_sky:
            claim = np.full(self.scene.shape, -1, np.int64) if not hasattr(self, "_claim") \
                else self._claim
            self._claim = claim
            total = self.model + self.skyimg
            kernels.group_sky_terms(order, gstart, self.layout.bx, self.layout.by,
                                    self.layout.hf, total,
                                    self.scene.dsub, self.scene.varsky, self.scene.bad,
                                    self.scene.gain_inv, claim, gsky)
        n = len(st.x)
        delta = np.zeros((n, 3))
        cov = np.zeros((n, 3, 3)) if want_cov else np.zeros((1, 3, 3))
        gdelta = np.zeros(ng)
        D = self.D if self.npar == 3 else np.ascontiguousarray(self.D)
        kernels.solve_groups(order, gstart, D, self.g, pstart, pi, pj, Bk, self.npar,
                             lam, want_cov, self.opt.fit_sky, self.skyc, gsky, delta,
                             cov, gdelta)
        return order, gstart, delta, cov, gdelta

    # -- iterations -----------------------------------------------------------------
    def run(self, active=None, _relayout=True):
        st, opt, L = self.stars, self.opt, self.layout
        n = len(st.x)
        st.converged[:] = active is not None
        if active is not None:
            st.converged[np.asarray(active, dtype=np.int64)] = False
        # stars that turned out much brighter than their first guess get boxes that
        # hold their light, or at least the finer core quadrature
        if self._outgrown():
            st.converged[self._relayout()] = False
            L = self.layout
        old = L.args[12]
        L.refresh_args(self.scene, st)
        changed = np.flatnonzero((old != L.args[12]) & st.alive)
        if changed.size:
            L.paint(self.model, st, changed, self._scale(changed, -st.f[changed]))
            L.ex[changed] = np.inf
            L.evaluate(self.scene, st, changed)
            L.paint(self.model, st, changed, self._scale(changed, st.f[changed]))
            st.converged[changed] = False
        it = 0
        for it in range(1, opt.max_iter + 1):
            pi, pj = overlap_pairs(L.bx, L.by, L.hf, st.alive, self._candidates())
            labels = groups_of(n, pi, pj, st.alive)
            busy = np.unique(labels[st.alive & ~st.converged])
            members = np.flatnonzero(st.alive & np.isin(labels, busy))
            if members.size == 0:
                break
            order, gstart, delta, _, gdelta = self._solve(labels, members, pi, pj,
                                                          1e-4, False)
            self._apply(members, delta, it)
            if opt.fit_sky:
                self._apply_sky(labels, order, gstart, gdelta)
        st.iterations = it
        if _relayout and self._outgrown():
            # some stars came out much brighter than their first guess: polish
            # them in boxes that hold their light
            return self.run(active=np.zeros(0, np.int64), _relayout=False)
        return self

    def _outgrown(self):
        st, L = self.stars, self.layout
        _, hf, hr = L._sizes(self.scene, st.x, st.y, st.f)
        return bool(np.any(st.alive & ((hr > 1.25 * L.hr + 1) | (hf > L.hf + 1))))

    def _relayout(self):
        """New boxes for every star from the current fluxes; returns the grown ones."""
        st, L = self.stars, self.layout
        _, hf, hr = L._sizes(self.scene, st.x, st.y, st.f)
        grown = np.flatnonzero(st.alive & ((hr > 1.25 * L.hr + 1) | (hf > L.hf + 1)))
        self.layout = Layout(self.scene, st, L.fit_radius, L.render_max, L.wing_level)
        self.model[:] = 0.0
        live = np.flatnonzero(st.alive)
        self.layout.evaluate(self.scene, st, live)
        self.layout.paint(self.model, st, live, np.where(st.alive, st.f, 0.0))
        self._cand = None
        return grown

    def _candidates(self):
        """Candidate overlapping pairs, rebuilt when a star has moved > 2 px since."""
        st = self.stars
        if (self._cand is None or self._cand_xy[0].size != st.x.size
                or np.max(np.abs(st.x - self._cand_xy[0]), initial=0.0) > 2.0
                or np.max(np.abs(st.y - self._cand_xy[1]), initial=0.0) > 2.0):
            self._cand = candidate_pairs(st.x, st.y, self.layout.hf, st.alive)
            self._cand_xy = (st.x.copy(), st.y.copy())
        return self._cand

    def _apply(self, members, delta, it):
        st, opt, L = self.stars, self.opt, self.layout
        d = delta[members].copy()
        # damp stars whose steps reverse (a faint star bouncing between pixels)
        prev = self.prev_step[members]
        flip = np.any((d * prev < 0) & (np.abs(d) > 0.3 * np.abs(prev)), axis=1)
        self.damp[members[flip]] *= 0.5
        self.prev_step[members] = d
        D = self.D[members]
        with np.errstate(divide="ignore", invalid="ignore"):
            sig = 1.0 / np.sqrt(np.einsum("nii->ni", D))
        sig = np.where(np.isfinite(sig), sig, np.inf)
        # convergence is judged on the full (undamped) Gauss-Newton step, or on the
        # damped one for a star that keeps bouncing (damped three times or more)
        damp = self.damp[members][:, None]
        test = np.where(damp <= 0.125, d * damp, d)
        small = np.abs(test[:, 0]) < opt.tol * sig[:, 0]
        if self.npar == 3:
            small &= np.all((np.abs(test[:, 1:3]) < opt.tol * sig[:, 1:3])
                            | (np.abs(test[:, 1:3]) < 1e-4), axis=1)
        d *= damp
        # a star damped five times over is not going anywhere: stop refitting its
        # group for it, and remember it did not converge
        stalled = (damp[:, 0] <= 1.0 / 32.0) & ~small
        if stalled.any():
            self.stalled[members[stalled]] = True
            small |= stalled
        f_old = st.f[members].copy()
        f_new = f_old + d[:, 0]
        if not opt.allow_negative:
            f_new = np.where(f_new > 0, f_new, 0.3 * np.abs(f_old) + 1e-3)
        step = np.zeros((members.size, 2))
        if self.npar == 3:
            step = np.clip(d[:, 1:3], -opt.max_step, opt.max_step)
        # take the old light out, move, put the new light in
        L.paint(self.model, st, members, self._scale(members, -f_old))
        st.f[members] = f_new
        st.x[members] += step[:, 0]
        st.y[members] += step[:, 1]
        st.converged[members] = small
        far = (np.abs(st.x[members] - L.bx[members]) > 1.0) | (
            np.abs(st.y[members] - L.by[members]) > 1.0)
        if far.any():
            moved = members[far]
            L.bx[moved] = np.floor(st.x[moved] + 0.5).astype(np.int64)
            L.by[moved] = np.floor(st.y[moved] + 0.5).astype(np.int64)
            L.ex[moved] = np.inf
        L.evaluate(self.scene, st, members)
        # drop stars that faded into the noise (after the first iterations)
        snr = f_new / np.maximum(sig[:, 0], 1e-30)
        faint = (snr < opt.drop_snr) & (it >= 3)
        ny, nx = self.scene.shape
        off = ((st.x[members] < -0.5) | (st.x[members] > nx - 0.5)
               | (st.y[members] < -0.5) | (st.y[members] > ny - 0.5))
        dead = faint | off | ~np.isfinite(f_new)
        st.alive[members[dead]] = False
        L.paint(self.model, st, members, self._scale(members, st.f[members]))
        if opt.merge_fwhm > 0:
            self._merge(members)

    def _scale(self, members, values):
        scale = np.zeros(len(self.stars.x))
        scale[members] = np.where(self.stars.alive[members], values, 0.0)
        return scale

    def _merge(self, members):
        """Merge stars that converged onto the same spot (keep the flux-weighted one)."""
        st, L = self.stars, self.layout
        live = np.flatnonzero(st.alive)
        if live.size < 2:
            return
        tree = cKDTree(np.column_stack([st.x[live], st.y[live]]))
        limit = self.opt.merge_fwhm * float(np.median(L.fwhm[live]))
        pairs = tree.query_pairs(limit, output_type="ndarray")
        if pairs.size == 0:
            return
        for a, b in pairs:
            i, j = live[a], live[b]
            if not (st.alive[i] and st.alive[j]):
                continue
            if st.f[j] > st.f[i]:
                i, j = j, i
            sel = np.array([i, j])
            L.paint(self.model, st, sel, self._scale(sel, -st.f[sel]))
            ftot = max(st.f[i] + st.f[j], 1e-3)
            st.x[i] = (st.x[i] * st.f[i] + st.x[j] * st.f[j]) / ftot
            st.y[i] = (st.y[i] * st.f[i] + st.y[j] * st.f[j]) / ftot
            st.f[i] = ftot
            st.alive[j] = False
            st.converged[i] = False
            L.bx[i] = int(np.floor(st.x[i] + 0.5))
            L.by[i] = int(np.floor(st.y[i] + 0.5))
            L.ex[i] = np.inf
            L.evaluate(self.scene, st, np.array([i]))
            L.paint(self.model, st, np.array([i]), self._scale(np.array([i]), st.f[[i]]))

    def _apply_sky(self, labels, order, gstart, gdelta):
        """Add the fitted sky steps to the groups, then repaint the sky of all groups."""
        st = self.stars
        sizes = np.diff(gstart)
        gid = np.repeat(np.arange(gdelta.size), sizes)
        mean = np.bincount(gid, self.star_sky[order], gdelta.size) / np.maximum(sizes, 1)
        self.star_sky[order] = (mean + gdelta)[gid]
        live = np.flatnonzero(st.alive)
        o_all, g_all, _ = group_arrays(labels, live)
        s_all = np.diff(g_all)
        gid_all = np.repeat(np.arange(s_all.size), s_all)
        value = (np.bincount(gid_all, self.star_sky[o_all], s_all.size)
                 / np.maximum(s_all, 1))
        self.star_sky[o_all] = value[gid_all]
        self.skyimg[:] = 0.0
        kernels.paint_group_sky(o_all, g_all, self.layout.bx, self.layout.by,
                                self.layout.hf, value,
                                self.skyimg)

    # -- final errors ---------------------------------------------------------------
    def finish(self):
        """Covariances (group Fisher inverse), chi^2, groups and local sky per star."""
        st, L = self.stars, self.layout
        n = len(st.x)
        live = np.flatnonzero(st.alive)
        pi, pj = overlap_pairs(L.bx, L.by, L.hf, st.alive, self._candidates())
        labels = groups_of(n, pi, pj, st.alive)
        order, gstart, delta, cov, gdelta = self._solve(labels, live, pi, pj, 0.0, True)
        st.cov = cov
        st.chi2 = self.chi2.copy()
        st.npix = self.npix.copy()
        st.group = labels
        sizes = np.bincount(labels[live], minlength=labels.max() + 1 if live.size else 1)
        st.group_size = np.where(st.alive, sizes[np.clip(labels, 0, None)], 0)
        st.sky_offset = self.star_sky.copy()
        return st
