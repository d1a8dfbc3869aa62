"""A static HTML report of a run: light curves, calibration, astrometry, conditions.

Why static files: a report must open from a results folder copied anywhere (an
observer's laptop, a web server, a ticket attachment) without a running service.
Plots are PNGs drawn with matplotlib's Agg canvas (no display, thread-safe) and
the page is plain HTML with every value escaped, every image a relative path. Each
frame and its residual image get a small grey thumbnail under ``frames/``, made once
and remade only when the FITS file is newer (a night of hundreds of frames).
"""
from __future__ import annotations

import html
import io
import json
import warnings
from pathlib import Path
from urllib.parse import quote

import numpy as np
from astropy.table import Table

from .frame import atomic_write_bytes, atomic_write_text, file_stem
from .results.plots import _umask, draw_calibration, new_figure, save

THUMBNAIL_PX = 256          # longest side of a frame thumbnail (PNG, 8-bit grey)
FRAMES_DIR = "frames"       # thumbnails, inside the report folder
PROGRESS_FROM = 20          # thumbnails to make before a progress bar is worth showing


def _hours(mjd, ref):
    return (np.asarray(mjd, float) - ref) * 24.0


def plot_lightcurve(ax, lc: Table, ref_mjd: float, label: str = "") -> None:
    """Calibrated magnitudes (upper limits as triangles), else relative flux in mag."""
    t = _hours(lc["mjd"], ref_mjd)
    lim = (np.asarray(lc["upper_limit"], bool) if "upper_limit" in lc.colnames
           else np.zeros(len(lc), bool))
    mag = np.asarray(lc["mag"], float) if "mag" in lc.colnames else np.full(len(lc), np.nan)
    if np.isfinite(mag[~lim]).sum() >= 2:
        err = np.abs(np.asarray(lc["mag_err"], float))
        ax.errorbar(t[~lim], mag[~lim], err[~lim], fmt="o", ms=3, elinewidth=0.6, label=label)
        if lim.any():
            ax.plot(t[lim], mag[lim], "v", color="0.5", ms=4, label="upper limit")
        ax.set_ylabel("magnitude")
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = -2.5 * np.log10(np.asarray(lc["rel_flux"], float))
            err = 1.0857 * np.asarray(lc["rel_flux_err"], float) / np.asarray(lc["rel_flux"], float)
        ok = np.isfinite(rel)
        ax.errorbar(t[ok], rel[ok], err[ok], fmt="o", ms=3, elinewidth=0.6, label=label)
        ax.set_ylabel("relative magnitude")
    ax.invert_yaxis()
    ax.set_xlabel(f"hours from MJD {ref_mjd:.4f}")


def _target_figure(lcs, j, path, ref):
    """Calibrated magnitudes (with upper limits) above, relative flux below."""
    fig = new_figure(8, 6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    src = lcs.sources[j]
    lc = lcs.lightcurve(j)
    plot_lightcurve(top, lc, ref, f"source {src['source_id']}")
    top.set_xlabel("")
    top.set_title(f"target: RA {src['ra']:.5f} Dec {src['dec']:+.5f}", fontsize=9)
    top.legend(fontsize=7)
    rel = lc[~np.asarray(lc["upper_limit"], bool)]
    bottom.errorbar(_hours(rel["mjd"], ref), rel["rel_flux"], rel["rel_flux_err"], fmt="o",
                    ms=3, elinewidth=0.6, color="C2")
    bottom.set_ylabel("relative flux (ensemble)")
    bottom.set_xlabel(f"hours from MJD {ref:.4f}")
    fig.subplots_adjust(hspace=0.1, left=0.12, right=0.98, top=0.94, bottom=0.09)
    return save(fig, path)


def _variables_figure(lcs, indices, path, ref):
    fig = new_figure(8, 2.2 * max(len(indices), 1))
    axes = np.atleast_1d(fig.subplots(max(len(indices), 1), 1, sharex=True))
    for ax, j in zip(axes, indices):
        lc = lcs.lightcurve(j, upper_limits=False)
        src = lcs.sources[j]
        lc["mag"] = np.full(len(lc), np.nan)          # relative light curves here
        plot_lightcurve(ax, lc, ref)
        if ax is not axes[-1]:
            ax.set_xlabel("")
        ax.set_title(f"source {src['source_id']}: J {src['stetson_j']:.2f}, chi2 "
                     f"{src['chi2_red']:.1f}, rms {src['rms']:.3f} (expected "
                     f"{src['expected_rms']:.3f}){' variable' if src['is_variable'] else ''}",
                     fontsize=8, loc="left")
    fig.subplots_adjust(hspace=0.6, left=0.12, right=0.98, top=0.95, bottom=0.08)
    return save(fig, path)


def _zero_point_figure(frames, stars_by_frame, path, ref):
    n_fit = min(len(stars_by_frame), 6)
    fig = new_figure(9, 3 + 2.6 * ((n_fit + 2) // 3))
    grid = fig.add_gridspec(1 + (n_fit + 2) // 3, 3)
    ax = fig.add_subplot(grid[0, :])
    zp = np.asarray(frames["zero_point"], float)
    ok = np.isfinite(zp)
    if ok.any():
        ax.errorbar(_hours(frames["mjd"], ref)[ok], zp[ok],
                    np.asarray(frames["zero_point_err"], float)[ok], fmt="o", ms=3)
    ax.set_ylabel("zero point [mag]")
    ax.set_xlabel(f"hours from MJD {ref:.4f}")
    ax.invert_yaxis()
    picks = sorted(stars_by_frame)[:: max(1, len(stars_by_frame) // max(n_fit, 1))][:n_fit]
    for k, stem in enumerate(picks):
        stars, cal = stars_by_frame[stem]
        sub = fig.add_subplot(grid[1 + k // 3, k % 3])
        draw_calibration((sub, None), stars, cal["zero_point"], cal["color_term"],
                         cal.get("color_pivot", 0.0))
        sub.set_title(f"{stem}: ZP {cal['zero_point']:.3f}", fontsize=7)
        sub.legend().set_visible(False)
    fig.subplots_adjust(hspace=0.55, wspace=0.3, left=0.08, right=0.98, top=0.96, bottom=0.07)
    return save(fig, path)


def _astrometry_figure(stars_by_frame, lcs, path):
    fig = new_figure(6, 6)
    ax = fig.subplots()
    rows = [(s["ra"], s["dec"], s["dra_arcsec"], s["ddec_arcsec"])
            for s, _ in stars_by_frame.values() if "dra_arcsec" in s.colnames]
    if rows:
        ra, dec, dra, ddec = (np.concatenate([np.asarray(r[k], float) for r in rows])
                              for k in range(4))
        key = np.round(ra, 5) * 1e6 + np.round(dec, 5)
        uniq, inv = np.unique(key, return_inverse=True)
        mean = [np.bincount(inv, v) / np.bincount(inv) for v in (ra, dec, dra, ddec)]
        rms = float(np.sqrt(np.nanmean(dra**2 + ddec**2)))
        title = f"source - catalogue, mean per star ({uniq.size} stars, rms {rms:.3f}\")"
    else:                                    # no catalogue: scatter about the mean position
        cube_ra, cube_dec = lcs.cube["ra"], lcs.cube["dec"]
        with np.errstate(invalid="ignore"):
            dra = (cube_ra - np.nanmean(cube_ra, 0)) * np.cos(np.radians(cube_dec)) * 3600
            ddec = (cube_dec - np.nanmean(cube_dec, 0)) * 3600
        mean = [np.asarray(lcs.sources["ra"]), np.asarray(lcs.sources["dec"]),
                np.nanstd(dra, 0), np.nanstd(ddec, 0)]
        title = "scatter of each source about its mean position (no catalogue)"
    ok = np.all([np.isfinite(m) for m in mean], axis=0)
    if ok.any():
        # arrows magnified so that a typical offset spans ~6 % of the field
        width = max(np.ptp(mean[1][ok]), 1e-3)
        typical = max(float(np.median(np.hypot(mean[2][ok], mean[3][ok]))), 1e-3)
        magnify = float(10 ** np.round(np.log10(0.06 * width * 3600.0 / typical)))
        key = float(10 ** np.round(np.log10(typical)))
        # RA grows to the left (inverted axis), so +dRA is drawn as +x in data units
        q = ax.quiver(mean[0][ok], mean[1][ok], mean[2][ok], mean[3][ok], angles="xy",
                      scale_units="xy", scale=3600.0 / magnify)
        ax.quiverkey(q, 0.8, 1.03, key, f'{key:g}" (x{magnify:g})', labelpos="E")
    ax.invert_xaxis()
    ax.set_xlabel("RA [deg]")
    ax.set_ylabel("Dec [deg]")
    ax.set_title(title, fontsize=8, loc="left")
    return save(fig, path)


def _conditions_figure(frames, path, ref):
    panels = (("fwhm", "FWHM [px]"), ("zero_point", "zero point [mag]"),
              ("airmass", "airmass"), ("sky", "sky [ADU]"))
    fig = new_figure(8, 7.5)
    axes = fig.subplots(len(panels), 1, sharex=True)
    t = _hours(frames["mjd"], ref)
    for ax, (name, label) in zip(axes, panels):
        if name in frames.colnames:
            values = np.asarray(frames[name], float)
            ax.plot(t[np.isfinite(values)], values[np.isfinite(values)], "o-", ms=3)
        if name == "zero_point":
            ax.invert_yaxis()
        ax.set_ylabel(label)
    axes[-1].set_xlabel(f"hours from MJD {ref:.4f}")
    fig.subplots_adjust(hspace=0.15, left=0.12, right=0.98, top=0.97, bottom=0.08)
    return save(fig, path)


def _image_data(path) -> np.ndarray:
    """The first 2-D image of a FITS file (the first plane of a cube), as float32."""
    from astropy.io import fits
    with fits.open(path, memmap=True) as hdul:
        for hdu in hdul:
            if getattr(hdu, "is_image", False) and hdu.data is not None and hdu.data.ndim >= 2:
                data = hdu.data
                while data.ndim > 2:
                    data = data[0]
                return np.array(data, dtype=np.float32)
    raise ValueError("no image data in any HDU")


def _downsample(data: np.ndarray, max_px: int) -> np.ndarray:
    """Block means (NaN ignored) so that the longest side is at most ``max_px``."""
    k = max(1, int(np.ceil(max(data.shape) / max_px)))
    if k == 1:
        return data
    ky, kx = min(k, data.shape[0]), min(k, data.shape[1])
    ny, nx = data.shape[0] // ky, data.shape[1] // kx
    blocks = data[: ny * ky, : nx * kx].reshape(ny, ky, nx, kx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)        # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3))


def thumbnail(source, path, *, residual: bool = False, max_px: int = THUMBNAIL_PX) -> Path:
    """A small 8-bit grey PNG of a FITS image: block means down to ``max_px``; from
    the zscale lower limit to the 99.7th percentile (at least the zscale upper limit)
    in an asinh stretch, so that faint stars show and bright cores do not saturate;
    a residual image, whose structure sits at the sky level, in zscale limits and a
    linear stretch. Row 0 at the bottom as DS9 shows it; written atomically. Nothing
    is done when ``path`` is already newer than ``source`` (long runs: written once)."""
    from astropy.visualization import (AsinhStretch, ImageNormalize, LinearStretch,
                                       ZScaleInterval)
    from PIL import Image
    source, path = Path(source), Path(path)
    if path.is_file() and path.stat().st_size and path.stat().st_mtime_ns >= \
            source.stat().st_mtime_ns:
        return path
    small = _downsample(_image_data(source), max_px)
    finite = np.isfinite(small)
    if finite.sum() >= 2:
        values = small[finite]
        vmin, vmax = ZScaleInterval().get_limits(values)
        if not residual:
            vmax = max(vmax, float(np.percentile(values, 99.7)))
        if not vmax > vmin:
            vmin, vmax = float(np.min(values)), float(np.max(values)) + 1.0
        norm = ImageNormalize(vmin=vmin, vmax=vmax, clip=True,
                              stretch=LinearStretch() if residual else AsinhStretch(0.02))
        scaled = np.ma.filled(norm(np.where(finite, small, vmin)), 0.0)
    else:
        scaled = np.zeros(small.shape)
    grey = (np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey[::-1])).save(buffer, format="PNG",
                                                           optimize=True)
    atomic_write_bytes(path, buffer.getvalue())
    path.chmod(0o666 & ~_umask())
    return path


def _frame_images(db, frame) -> tuple[Path | None, str, Path | None]:
    """(image, what it is, residual) of a recorded frame; None where there is none.

    """
    products = db.products(frame.id)
    image, kind = None, ""
    for key, what in (("astrometry", "solved frame"), ("header", "standardised frame")):
        if key in products and Path(products[key]).is_file():
            image, kind = Path(products[key]), what
            break
    residual = products.get("residual")
    if residual is None or not Path(residual).is_file():
        residual = None
    return image, kind, (Path(residual) if residual is not None else None)


def _frame_thumbnails(db, frames, out: Path) -> list[dict]:
    """Thumbnails of every frame and its residual under ``out/frames``, made only when
    missing or older than the FITS file; a rich progress bar when there are many."""
    folder = out / FRAMES_DIR
    jobs, entries, used = [], [], set()
    for f in frames:
        name = file_stem(f.stem)
        if name in used:
            name = f"{name}-{f.id}"
        used.add(name)
        image, kind, residual = _frame_images(db, f)
        entry = {"frame": f, "name": name, "kind": kind, "image": None, "residual": None,
                 "image_note": "no frame image (neither a solved nor a standardised "
                               "frame among the products)",
                 "residual_note": "no residual image (the photometry engine wrote none)"}
        for key, src, png in (("image", image, folder / f"{name}.png"),
                              ("residual", residual, folder / f"{name}_residual.png")):
            if src is None:
                png.unlink(missing_ok=True)          # a product that went away
            else:
                jobs.append((entry, key, src, png))
        entries.append(entry)
    stale = [not (png.is_file() and png.stat().st_mtime_ns >= src.stat().st_mtime_ns)
             for _entry, _key, src, png in jobs]
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    with Progress(TextColumn("report: frame thumbnails"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True,
                  disable=sum(stale) < PROGRESS_FROM) as bar:
        task = bar.add_task("thumbnails", total=sum(stale))
        for (entry, key, src, png), make in zip(jobs, stale):
            try:
                entry[key] = thumbnail(src, png, residual=key == "residual")
            except (OSError, ValueError, TypeError, MemoryError) as exc:
                png.unlink(missing_ok=True)
                entry[f"{key}_note"] = f"{src.name} unreadable: {exc}"
            if make:
                bar.advance(task)
    return entries


def _img_tag(path: Path, out: Path, alt: str) -> str:
    rel = path.relative_to(out).as_posix()
    size = ""
    try:
        from PIL import Image
        with Image.open(path) as im:
            size = f' width="{im.width}" height="{im.height}"'
    except OSError:
        pass
    src = html.escape(quote(rel))
    return f'<a href="{src}"><img src="{src}" alt="{html.escape(alt)}"{size}></a>'


def _gallery(entries, out: Path) -> str:
    """One figure per frame: caption, frame thumbnail, residual thumbnail (or a note)."""
    if not entries:
        return ""
    cells = []
    for e in entries:
        f = e["frame"]
        facts = [f"MJD {f.mjd:.5f}" if f.mjd is not None else "",
                 f.filter or "", f.status or "",
                 f"FWHM {f.fwhm:.2f} px" if f.fwhm is not None else "",
                 f"ZP {f.zero_point:.3f}" if f.zero_point is not None else ""]
        caption = html.escape(" · ".join(x for x in facts if x))
        parts = [f"<figcaption><strong>{html.escape(f.stem)}</strong><br>{caption}"
                 "</figcaption>"]
        for key, label in (("image", e["kind"] or "frame"), ("residual", "residual")):
            if e[key] is not None:
                tag = _img_tag(e[key], out, f"{f.stem} {label}")
                parts.append(f'<div class="thumb">{tag}<span>{html.escape(label)}</span></div>')
            else:
                parts.append(f'<p class="none">{html.escape(e[key + "_note"])}</p>')
        cells.append(f'<figure class="frame" id="frame-{html.escape(e["name"])}">'
                     + "".join(parts) + "</figure>")
    return ("<h2>Frame images</h2><p>Each frame (solved, else standardised) and its "
            "residual image after star subtraction, block-averaged to at most "
            f"{THUMBNAIL_PX} px (frame: asinh stretch from the zscale lower limit; "
            "residual: zscale limits, linear), pixel row 0 at the bottom. Click a "
            "thumbnail to enlarge it.</p>"
            f'<div class="gallery">{"".join(cells)}</div>')


def _cell(value, fmt="{:.3f}"):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return html.escape(fmt.format(value))
    return html.escape(str(value))


def _html_table(table: Table, columns, formats=None) -> str:
    formats = formats or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns if c in table.colnames)
    rows = []
    for row in table:
        rows.append("<tr>" + "".join(f"<td>{_cell(row[c], formats.get(c, '{:.3f}'))}</td>"
                                     for c in columns if c in table.colnames) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _calibration_stars(db, frames):
    out = {}
    for f in db.frames():
        if f.zero_point is None:
            continue
        path = db.products(f.id).get("calibration_stars")
        if path is None or not Path(path).is_file():
            continue
        current = [c for c in db.calibrations(f.id) if c.current and c.status == "success"]
        notes = json.loads(current[-1].notes_json) if current else {}
        stars = Table.read(path, format="ascii.ecsv")
        stars["used"] = np.asarray(stars["used"], bool)
        out[f.stem] = (stars, {"zero_point": f.zero_point, "color_term": f.color_term,
                               "color_pivot": notes.get("color_pivot", 0.0)})
    return out


def write_report(results, out_dir=None, *, target: tuple[float, float] | None = None,
                 n_variables: int = 5, radius_arcsec: float | None = None) -> Path:
    """Write ``index.html`` and its PNGs; returns the page's path."""
    from .lightcurves import NoSuchSource, from_results
    from .results.db import ResultsDB, frame_rows_table
    db = results if isinstance(results, ResultsDB) else ResultsDB(results)
    out = Path(out_dir) if out_dir is not None else (db.folder or Path(".")) / "report"
    out.mkdir(parents=True, exist_ok=True)
    lcs = from_results(db, save=True)
    frames = lcs.frames
    ref = float(np.floor(np.nanmin(frames["mjd"]) * 24) / 24)
    sections, images = [], {}
    j_target = None
    if target is None:
        for f in db.frames():
            q = json.loads(f.quality_json or "{}").get("target")
            if q:
                target = (q["ra"], q["dec"])
                break
    if target is not None:
        try:
            j_target = lcs.find(target[0], target[1], radius_arcsec)
            images["target"] = _target_figure(lcs, j_target, out / "target.png", ref)
        except NoSuchSource as exc:
            sections.append(f"<p>target: {html.escape(str(exc))}</p>")
    top = [j for j in lcs.most_variable(n_variables + 1) if j != j_target][:n_variables]
    if top:
        images["variables"] = _variables_figure(lcs, top, out / "variables.png", ref)
    stars = _calibration_stars(db, frames)
    images["zero_points"] = _zero_point_figure(frames, stars, out / "zero_points.png", ref)
    images["astrometry"] = _astrometry_figure(stars, lcs, out / "astrometry.png")
    images["conditions"] = _conditions_figure(frames, out / "conditions.png", ref)
    recorded = db.frames()
    all_frames = frame_rows_table(recorded)
    gallery = _gallery(_frame_thumbnails(db, recorded, out), out)
    captions = {"target": "Target light curve", "variables": "Most variable sources "
                "(relative to the comparison ensemble)", "zero_points": "Zero point per "
                "frame and calibration fits of some frames", "astrometry": "Astrometric "
                "residual map", "conditions": "FWHM, zero point, airmass and sky against "
                "time"}
    figs = "".join(f"<h2>{html.escape(captions[k])}</h2><img src=\"{html.escape(p.name)}\" "
                   f"alt=\"{html.escape(k)}\">" for k, p in images.items())
    var = lcs.sources[[j for j in lcs.most_variable(20)]] if lcs.n_sources else lcs.sources
    summary = (f"<p>{len(all_frames)} frames ({int(np.sum(all_frames['status'] == 'done'))} "
               f"calibrated), {lcs.n_sources} sources, {lcs.meta['n_comparisons']} comparison "
               f"stars, {int(np.sum(lcs.sources['is_variable']))} flagged variable.</p>")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>bhcore report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
            "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
            ".gallery{display:flex;flex-wrap:wrap;gap:8px}figure.frame{margin:0;padding:4px;"
            "border:1px solid #ccc;font-size:11px;width:calc(2*180px + 12px)}"
            ".thumb{display:inline-block;margin:2px;text-align:center}.thumb img{width:180px;"
            "height:auto;display:block}"
            "p.none{display:inline-block;width:180px;color:#777}"
            "</style></head><body><h1>bhcore report</h1>"
            f"<p>results: {html.escape(str(db.url))}</p>{summary}{''.join(sections)}{figs}"
            "<h2>Most variable sources</h2>"
            + _html_table(var, ["source_id", "ra", "dec", "n_obs", "mean_mag", "rms",
                                "expected_rms", "chi2_red", "stetson_j", "is_variable",
                                "is_comparison"], {"ra": "{:.6f}", "dec": "{:+.6f}"})
            + "<h2>Frames</h2>"
            + _html_table(all_frames, ["stem", "mjd", "filter", "airmass", "fwhm", "seeing",
                                       "sky", "zero_point", "zero_point_err", "scatter",
                                       "n_cal_stars", "lim_mag", "photflag", "status",
                                       "status_reason"], {"mjd": "{:.5f}"})
            + gallery + "</body></html>\n")
    path = atomic_write_text(out / "index.html", page)
    path.chmod(0o666 & ~_umask())
    return path
