"""Per-frame calibration plot (PNG, matplotlib Agg): what BHTOM shows for each calibration.

Why a figure object and no pyplot: the runner may plot from worker threads and
pyplot's global state is not thread-safe; ``Figure`` + ``FigureCanvasAgg`` is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def new_figure(width: float = 8.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def save(fig, path) -> Path:
    """Save through a temporary name and rename, like every other product."""
    import os
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp makes 0600; plots are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


def draw_calibration(axes_pair, stars, zero_point: float, color_term: float | None,
                     pivot: float, label: str = "") -> None:
    """Left: m_cat - m_inst vs colour with the fit; right (if given): residuals vs m_cat."""
    ax1, ax2 = axes_pair
    colour = np.array([np.nan if v is None else v for v in stars["colour"]], float)
    y = np.asarray(stars["m_cat"], float) - np.asarray(stars["m_inst"], float)
    resid = np.array([np.nan if v is None else v for v in stars["residual"]], float)
    used = np.asarray(stars["used"], bool)
    names = stars.colnames if hasattr(stars, "colnames") else stars
    cand = (np.asarray(stars["candidate"], bool) if "candidate" in names
            else np.ones(used.size, bool))
    err = np.hypot(np.asarray(stars["m_cat_err"], float), np.asarray(stars["m_inst_err"], float))
    m_cat = np.asarray(stars["m_cat"], float)
    has_colour = bool(np.isfinite(colour).any())
    x = np.where(np.isfinite(colour), colour, pivot) if has_colour else m_cat
    for mask, style, name in ((cand & ~used, dict(fmt="x", ms=4, color="C3"), "rejected"),
                              (used, dict(fmt="o", ms=3, color="C0"), "used")):
        if mask.any():
            ax1.errorbar(x[mask], y[mask], err[mask], ls="none", label=name, elinewidth=0.6,
                         **style)
            if ax2 is not None:
                ax2.errorbar(m_cat[mask], resid[mask], err[mask], ls="none", elinewidth=0.6,
                             **style)
    if (cand & np.isfinite(y)).any():         # stars cut before the fit stay off the scale
        lo, hi = np.nanpercentile(y[cand], [0, 100])
        pad = max(0.1, 0.1 * (hi - lo))
        ax1.set_ylim(lo - pad, hi + pad)
    if np.isfinite(x).any():
        grid = np.linspace(np.nanmin(x), np.nanmax(x), 10)
        slope = (color_term or 0.0) if has_colour else 0.0
        ax1.plot(grid, zero_point + (color_term or 0.0) * (0 if has_colour else pivot)
                 + slope * grid, "k-", lw=1)
    ax1.set_xlabel("catalogue colour" if has_colour else "catalogue magnitude (no colours)")
    ax1.set_ylabel("m_cat - m_inst [mag]")
    ax1.legend(fontsize=7, loc="best")
    if ax2 is not None:
        ax2.axhline(0.0, color="k", lw=0.8)
        ax2.set_xlabel("catalogue magnitude")
        ax2.set_ylabel("residual [mag]")
    if label:
        ax1.figure.suptitle(label, fontsize=8, x=0.01, ha="left")


def calibration_plot(result, stars, path) -> Path:
    """The calibration figure of one frame, written to ``path``."""
    fig = new_figure()
    axes = fig.subplots(1, 2)
    notes = result.notes
    cterm = "" if result.color_term_err is None else f" ± {result.color_term_err:.3f}"
    label = (f"{notes.get('bhtom_band', result.band)}: ZP {result.zero_point:.3f} ± "
             f"{result.zero_point_err:.3f}, colour term {result.color_term:.3f}{cterm} "
             f"({notes.get('color_index') or 'no colour'}, {notes.get('color_term_status')}), "
             f"scatter {result.scatter:.3f}, {result.n_stars} stars, "
             f"outliers {result.outlier_fraction:.2f}")
    draw_calibration(axes, stars, result.zero_point, result.color_term,
                     notes.get("color_pivot", 0.0), label)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.13, top=0.9, wspace=0.28)
    return save(fig, path)


def transit_plot(time, flux, flux_err, fit, path) -> Path:
    """Detrended light curve with the fitted model, binned points and residuals."""
    t = np.asarray(time, float)
    base = np.polyval(fit.baseline, t - fit.t_ref)
    rel, err = np.asarray(flux, float) / base, np.asarray(flux_err, float) / base
    hours = (t - fit.t0) * 24.0
    grid = np.linspace(np.nanmin(t), np.nanmax(t), 800)
    fig = new_figure(8.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    used = fit.used if fit.used.size == t.size else np.ones(t.size, bool)
    top.errorbar(hours[used], rel[used], err[used], fmt=".", color="0.6", lw=0.5, ms=3,
                 label="points")
    if (~used).any():
        top.plot(hours[~used], rel[~used], "x", color="tab:red", label="rejected")
    top.plot((grid - fit.t0) * 24.0, fit.model(grid, with_baseline=False), color="tab:blue",
             label="model")
    centres, means, errors = _binned(hours[used], rel[used], err[used], width=1 / 6)
    top.errorbar(centres, means, errors, fmt="o", color="k", ms=4, lw=1,
                 label="10-min bins")
    resid = rel - fit.model(t, with_baseline=False)
    bottom.errorbar(hours[used], resid[used], err[used], fmt=".", color="0.6", lw=0.5, ms=3)
    bottom.axhline(0.0, color="tab:blue")
    top.set_ylabel("relative flux (detrended)")
    bottom.set_ylabel("residual")
    bottom.set_xlabel(f"hours from mid-transit (BJD_TDB {fit.t0:.5f})")
    top.set_title(f"(Rp/R*)² {fit.depth * 100:.2f} ± {fit.depth_err * 100:.2f} %, dip "
                  f"{fit.dip * 100:.2f} %, "
                  f"mid-time ± {fit.t0_err * 1440:.1f} min, chi2/dof {fit.chi2_red:.2f}")
    top.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def _binned(x, y, err, width: float):
    """Inverse-variance means of ``y`` in bins of ``width`` along ``x`` (empty bins out)."""
    edges = np.arange(np.nanmin(x), np.nanmax(x) + width, width)
    k = np.digitize(x, edges)
    centres, means, errors = [], [], []
    for i in np.unique(k):
        m = k == i
        w = 1.0 / err[m] ** 2
        centres.append(float(np.mean(x[m])))
        means.append(float(np.sum(w * y[m]) / np.sum(w)))
        errors.append(float(np.sum(w) ** -0.5))
    return np.array(centres), np.array(means), np.array(errors)
