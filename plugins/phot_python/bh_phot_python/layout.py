"""Where each star's PSF lives: its fit and render boxes and their values.

Per star two square boxes around a fixed centre pixel: the render box (the light
that is subtracted, wings included, to where it falls below a small fraction of
the sky noise) and the fit box inside it (the pixels that constrain the star,
where the derivatives are kept). Values are stored flat, star after star.
"""
from __future__ import annotations

import numpy as np

from . import kernels


class Layout:
    """Box sizes and flat-buffer offsets of every star, and its evaluated PSF."""

    def __init__(self, scene, stars, fit_radius=(1.5, 3.0),
                 render_max=10.0, wing_level=0.02):
        self.fit_radius = fit_radius
        self.render_max = render_max
        self.wing_level = wing_level
        self.fwhm, self.hf, self.hr = self._sizes(scene, stars.x, stars.y, stars.f)
        # box centres stay put while a star moves less than a pixel from them, so
        # the fitted pixels do not jump as a star crosses a pixel boundary
        self.bx = np.floor(stars.x + 0.5).astype(np.int64)
        self.by = np.floor(stars.y + 0.5).astype(np.int64)
        self.ex = np.full(stars.x.size, np.inf)      # where the wings were evaluated
        self.ey = np.full(stars.x.size, np.inf)
        self._allocate()
        # the PSF's shape at each star (it varies over ~1e-4 per px: fixed per star)
        self.refresh_args(scene, stars)

    def _sizes(self, scene, x, y, f):
        """FWHM, fit and render half-sizes: the fit box reaches where the star's
        light falls to 0.1 sky sigma (1.5..3 FWHM), the render box to
        ``wing_level`` sky sigma (at most ``render_max`` FWHM)."""
        psf = scene.psf
        f = np.clip(f, 0.0, None)
        ny, nx = scene.shape
        fw = psf.fwhm_at(x, y)
        _, _, _, beta, norm = psf.quad_at(x, y)
        s, _, _, _ = psf.shape_at(x, y)
        ix = np.clip(np.floor(x + 0.5).astype(int), 0, nx - 1)
        iy = np.clip(np.floor(y + 0.5).astype(int), 0, ny - 1)
        sigma = np.sqrt(scene.varsky[iy, ix])

        def radius(level):
            ratio = np.maximum(norm * f / np.maximum(level, 1e-30), 1.0)
            if psf.kind == "moffat":
                return s * np.sqrt(np.maximum(ratio ** (1.0 / beta) - 1.0, 0.0))
            return s * np.sqrt(2.0 * np.log(ratio))
        lo = np.ceil(self.fit_radius[0] * fw)
        hi = np.ceil(self.fit_radius[1] * fw)
        hf = np.clip(np.ceil(radius(0.1 * sigma)), lo, hi).astype(np.int64)
        hr = np.maximum(np.clip(np.ceil(radius(self.wing_level * sigma)), 0,
                                np.ceil(self.render_max * fw)), hf).astype(np.int64)
        if psf.table is not None and fw.size:
            hr = np.maximum(hr, min(psf.table_half, int(self.render_max * fw.max())))
        return fw, hf, hr

    def _allocate(self):
        S = 2 * self.hr + 1
        SF = 2 * self.hf + 1
        self.roff = np.concatenate([[0], np.cumsum(S * S)[:-1]]).astype(np.int64)
        self.foff = np.concatenate([[0], np.cumsum(SF * SF)[:-1]]).astype(np.int64)
        self.rvals = np.zeros(int((S * S).sum()))
        nf = int((SF * SF).sum())
        self.fP = np.zeros(nf)
        self.fPx = np.zeros(nf)
        self.fPy = np.zeros(nf)

    def extend(self, scene, x, y, f):
        """Make room for new stars (appended after the existing ones)."""
        fw, hf, hr = self._sizes(scene, x, y, f)
        old = (self.rvals, self.fP, self.fPx, self.fPy)
        self.fwhm = np.concatenate([self.fwhm, fw])
        self.bx = np.concatenate([self.bx, np.floor(np.asarray(x) + 0.5).astype(np.int64)])
        self.by = np.concatenate([self.by, np.floor(np.asarray(y) + 0.5).astype(np.int64)])
        self.ex = np.concatenate([self.ex, np.full(len(x), np.inf)])
        self.ey = np.concatenate([self.ey, np.full(len(x), np.inf)])
        self.hf = np.concatenate([self.hf, hf])
        self.hr = np.concatenate([self.hr, hr])
        self._allocate()
        for new, prev in zip((self.rvals, self.fP, self.fPx, self.fPy), old):
            new[:prev.size] = prev

    def refresh_args(self, scene, stars):
        """Per-star PSF arguments of the kernels. Faint stars (peak below 30 sky
        sigma) get the coarser quadratures (2x2 nodes in the core, the centre value
        plus its Laplacian term beyond 1 FWHM): their errors, < 1e-3 of the peak,
        are then far below the noise."""
        args = list(scene.psf.kernel_args(stars.x, stars.y))
        ny, nx = scene.shape
        ix = np.clip(np.floor(stars.x + 0.5).astype(int), 0, nx - 1)
        iy = np.clip(np.floor(stars.y + 0.5).astype(int), 0, ny - 1)
        peak = np.clip(stars.f, 0.0, None) * args[5]          # flux * norm
        faint = peak < 30.0 * np.sqrt(scene.varsky[iy, ix])
        args[13] = np.where(faint, args[12], args[13])        # r2_mid: 1 FWHM
        args[12] = np.where(faint, 0.0, args[12])             # r2_in
        self.args = tuple(args)

    def evaluate(self, scene, stars, sel):
        sel = np.asarray(sel, np.int64)
        if sel.size == 0:
            return
        # wings are re-evaluated only after a move of more than 0.02 px
        full = ((np.abs(stars.x - self.ex) > 0.02) | (np.abs(stars.y - self.ey) > 0.02)
                | (self.hr == self.hf))
        kernels.eval_boxes(sel, stars.x, stars.y, self.bx, self.by, self.hr, self.hf,
                           self.roff, self.foff, *self.args, self.rvals, self.fP,
                           self.fPx, self.fPy, full)
        done = sel[full[sel]]
        self.ex[done] = stars.x[done]
        self.ey[done] = stars.y[done]

    def paint(self, img, stars, sel, scale):
        kernels.add_boxes(img, np.asarray(sel, np.int64), self.bx, self.by, self.hr,
                          self.roff, self.rvals, np.asarray(scale, float))
