"""The static HTML report: every plot is written as a PNG and linked from the page,
values are escaped, and a run whose frames could not be calibrated still reports.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from astropy.table import Table
from typer.testing import CliRunner

pytest.importorskip("bh_calibrate_builtin", reason="calibrate_builtin not installed")
pytest.importorskip("bh_catalogs", reason="catalogue backends not installed")
sep = pytest.importorskip("sep")

PNG = b"\x89PNG\r\n\x1a\n"


def small_run(root, calibrate=True, n_frames=8, images=False, residuals=None):
    """A short simulated night, measured at the truth positions and recorded.

    ``images``: also write each frame as its solved-frame product (``<stem>_wcs.fits``)
    and, for the frame indices in ``residuals`` (default all), a residual image through
    ``bhcore.frame.write_residual`` (the sky-subtracted frame with the measured stars'
    apertures blanked to zero), as the runner's earlier stages would.
    """
    from bhcore.frame import write_frame, write_residual
    from bhcore.results.stage import calibrate_and_record
    from bhcore.tables import SourceTable
    from bhcore.testing import make_night
    night = make_night(n_frames=n_frames, shape=(160, 160), n_stars=45, seed=7, blends=False,
                       flux_range=(3e3, 3e5), object_name="SIM <b>&")
    cat = night.catalog
    ref = Table({"ra": cat["ra"], "dec": cat["dec"], "V": cat["mag"],
                 "V_err": np.full(len(cat), 0.01)})
    ref.write(root / "ref.ecsv", overwrite=True)
    for i, sf in enumerate(night.frames):
        frame = sf.to_frame()
        data = np.ascontiguousarray(frame.data, dtype=np.float64)
        bkg = sep.Background(data)
        x, y = np.asarray(sf.truth["x"], float), np.asarray(sf.truth["y"], float)
        keep = (x > 8) & (y > 8) & (x < 151) & (y < 151)
        x, y = x[keep], y[keep]
        flux, ferr, _ = sep.sum_circle(data - bkg.back(), x, y, 6.0, err=bkg.globalrms,
                                       gain=sf.gain)
        table = SourceTable.build(x, y, flux, ferr, ids=np.asarray(sf.truth["id"])[keep])
        table["ra"], table["dec"] = frame.wcs.pixel_to_world_values(x, y)
        folder = root / "out" / f"f{i:03d}"
        if images:
            write_frame(frame, folder / f"f{i:03d}_wcs.fits")
            if residuals is None or i in residuals:
                yy, xx = np.mgrid[: data.shape[0], : data.shape[1]]
                resid = data - bkg.back()
                for xs, ys in zip(x, y):
                    resid[(xx - xs) ** 2 + (yy - ys) ** 2 < 36.0] = 0.0
                write_residual(frame.replace(path=f"f{i:03d}.fits"), resid, folder,
                               "test: apertures blanked")
        settings = {"catalogs": "file", "plots": False,
                    "target_ra": float(cat["ra"][0]), "target_dec": float(cat["dec"][0])}
        if calibrate:
            settings["file.path"] = str(root / "ref.ecsv")
        calibrate_and_record(frame, table, None, folder, settings)
    return night, root / "out"


def test_report_writes_html_and_plots(tmp_path):
    from bhcore.cli.main import app
    night, out = small_run(tmp_path)
    res = CliRunner().invoke(app, ["report", str(out), "--top", "3"])
    assert res.exit_code == 0, res.output
    page = out / "report" / "index.html"
    text = page.read_text()
    images = re.findall(r'<img src="([^"]+)"', text)
    assert set(images) == {"target.png", "variables.png", "zero_points.png",
                           "astrometry.png", "conditions.png"}
    for name in images:
        assert (out / "report" / name).read_bytes()[:8] == PNG, name
    assert "8 frames (8 calibrated)" in text
    assert "<b>" not in text.split("<body>")[1].replace("<b>bhcore", "")
    assert "Most variable sources" in text and "f000" in text


def test_report_of_an_uncalibrated_run(tmp_path):
    from bhcore.report import write_report
    _night, out = small_run(tmp_path, calibrate=False, n_frames=5)
    page = write_report(out, tmp_path / "rep")
    text = page.read_text()
    assert "5 frames (0 calibrated)" in text
    assert "calibration_failed" in text
    for name in ("zero_points.png", "astrometry.png", "conditions.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:8] == PNG


def test_report_frame_gallery(tmp_path):
    """A thumbnail per frame and per residual image (small 8-bit PNGs), a note where a
    frame has no residual, and a second report that rewrites none of them."""
    from PIL import Image

    from bhcore.report import THUMBNAIL_PX, write_report
    _night, out = small_run(tmp_path, n_frames=4, images=True, residuals={0, 2})
    page = write_report(out, tmp_path / "rep", n_variables=2)
    text = page.read_text()
    rep = tmp_path / "rep"
    assert "Frame images" in text
    thumbs = sorted(re.findall(r'<img src="(frames/[^"]+)"', text))
    assert thumbs == ["frames/f000.png", "frames/f000_residual.png", "frames/f001.png",
                      "frames/f002.png", "frames/f002_residual.png", "frames/f003.png"]
    for name in thumbs:
        data = (rep / name).read_bytes()
        assert data[:8] == PNG and len(data) < 100_000, name
        with Image.open(rep / name) as im:
            assert im.mode == "L" and max(im.size) <= THUMBNAIL_PX and im.size == (160, 160)
            pixels = np.asarray(im)
        assert pixels.std() > 5, f"{name} is flat"          # a stretch that shows the sky
    assert text.count("no residual image") == 2
    assert not list(rep.glob("frames/.*"))                    # no temporary file left
    stamps = {p.name: p.stat().st_mtime_ns for p in rep.glob("frames/*.png")}
    write_report(out, tmp_path / "rep", n_variables=2)      # up to date: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in rep.glob("frames/*.png")} == stamps


def test_thumbnail_downsamples_and_survives_nan(tmp_path):
    from astropy.io import fits
    from PIL import Image

    from bhcore.report import thumbnail
    rng = np.random.default_rng(3)
    data = rng.normal(100.0, 5.0, (1030, 700)).astype(np.float32)
    data[:40] = np.nan                                          # a masked strip
    fits.PrimaryHDU(data).writeto(tmp_path / "big.fits")
    png = thumbnail(tmp_path / "big.fits", tmp_path / "big.png")
    with Image.open(png) as im:
        assert im.size == (140, 206) and im.mode == "L"        # 5x5 blocks, long side <= 256
