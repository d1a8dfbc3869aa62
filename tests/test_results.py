"""Results: the calibration-and-record stage, per-frame products and quality keywords,
the results database (frames, sources, measurements, calibration history) and
re-calibration of stored frames without re-measuring.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table

from bhcore.results import quality as qa
from bhcore.results.db import ResultsDB, ResultsError, results_url
from bhcore.results.exports import read_sextractor
from bhcore.results.stage import calibrate_and_record, quality_cards
from bhcore.tables import SourceFlag, SourceTable

pytest.importorskip("bh_calibrate_builtin", reason="calibrate_builtin not installed")
pytest.importorskip("bh_catalogs", reason="catalogue backends not installed")
sep = pytest.importorskip("sep")

CENTER = (210.0, 25.0)


def simulated_frame(tmp_path, seed=1, n=90, fwhm=3.2, ct=0.05):
    """A Gaussian-PSF frame with a TAN WCS, its aperture photometry and a catalogue file."""
    from bhcore.testing import make_star_field
    rng = np.random.default_rng(seed)
    ra = CENTER[0] + rng.uniform(-0.04, 0.04, n) / np.cos(np.radians(CENTER[1]))
    dec = CENTER[1] + rng.uniform(-0.04, 0.04, n)
    v = rng.uniform(11.5, 16.5, n)
    bv = rng.uniform(0.1, 1.4, n)
    cat = Table({"ra": ra, "dec": dec, "V": v, "V_err": np.full(n, 0.01),
                 "B": v + bv, "B_err": np.full(n, 0.01)})
    path = tmp_path / "catalogue.ecsv"
    cat.write(path, overwrite=True)
    stars = Table({"id": np.arange(1, n + 1), "ra": ra, "dec": dec, "mag": v - ct * bv})
    sf = make_star_field((300, 300), stars=stars, wcs="tan", center=CENTER, pixel_scale=1.0,
                         psf="gaussian", fwhm=fwhm, zero_point=25.0, seed=seed, blends=False,
                         header_cards={"FILTER": "V", "OBJECT": "TEST"})
    frame = sf.to_frame()
    frame = frame.replace(path=tmp_path / f"frame{seed}.fits")
    data = np.ascontiguousarray(frame.data, dtype=np.float64)
    bkg = sep.Background(data)
    x, y = np.asarray(sf.truth["x"], float), np.asarray(sf.truth["y"], float)
    inside = (x > 6) & (y > 6) & (x < 293) & (y < 293)
    x, y = x[inside], y[inside]
    flux, ferr, _ = sep.sum_circle(data - bkg.back(), x, y, 6.0, err=bkg.globalrms,
                                   gain=sf.gain)
    table = SourceTable.build(x, y, flux, ferr, ids=np.asarray(sf.truth["id"])[inside])
    table["ra"], table["dec"] = frame.wcs.pixel_to_world_values(x, y)
    return frame, table, path, sf


def overrides(cat_path, **extra):
    return {"catalogs": "file", "file.path": str(cat_path), **extra}


def test_calibrate_and_record_writes_every_product_and_the_database(tmp_path):
    frame, table, cat, sf = simulated_frame(tmp_path)
    folder = tmp_path / "out" / "frame1"
    result, products, notes = calibrate_and_record(
        frame, table, None, folder, overrides(cat, target_ra=float(table["ra"][0]),
                                              target_dec=float(table["dec"][0])))
    assert result is not None, notes
    print(f"zero point {result.zero_point:.4f} ± {result.zero_point_err:.4f}, colour term "
          f"{result.color_term:.4f}, {result.n_stars} stars, scatter {result.scatter:.4f}")
    assert abs(result.zero_point - 25.0) < 4 * result.zero_point_err + 0.01
    for kind in ("reference", "calibrated", "sextractor", "calibration_stars",
                 "calibration_plot", "quality"):
        assert products[kind].is_file(), kind
    assert products["calibration_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cal = Table.read(products["calibrated"], format="ascii.ecsv")
    assert {"mag", "mag_err", "mag_inst", "pos_err"} <= set(cal.colnames)
    assert cal.meta["reference_path"] == str(products["reference"])

    q = json.loads(products["quality"].read_text())
    print(f"quality: FWHM {q['fwhm_x']:.3f}/{q['fwhm_y']:.3f} px (truth 3.2), sky "
          f"{q['sky']:.1f} ± {q['sky_noise']:.2f}, limit {q['lim_mag']:.2f}")
    assert q["fwhm_x"] == pytest.approx(3.2, rel=0.06) and q["ellipticity"] < 0.08
    assert q["sky"] == pytest.approx(600.0, rel=0.02)
    assert q["numstars"] == len(table) and q["seeing"] == pytest.approx(q["fwhm"])
    assert q["photflag"] == 0 and q["target_in_field"] is True
    assert 16.0 < q["lim_mag"] < 21.0
    cards = quality_cards(folder)
    for key in ("FWHM_X", "FWHM_Y", "SEEING", "ELLIPTIC", "SKYLEVEL", "SKYNOISE", "NUMSTARS",
                "ZEROPNT", "ZPSCATR", "LIMMAG", "PHOTFLAG", "CALBAND", "MATCHRAD"):
        assert key in cards, key

    cat_rows = read_sextractor(products["sextractor"])
    assert {"ALPHA_J2000", "DELTA_J2000", "MAG_AUTO", "MAGERR_AUTO", "XWIN_IMAGE"} <= set(
        cat_rows.colnames)
    first = cat_rows[cat_rows["NUMBER"] == table["id"][0]][0]
    assert first["XWIN_IMAGE"] == pytest.approx(table["x"][0] + 1.0, abs=1e-3)   # 1-based
    assert first["MAG_AUTO"] == pytest.approx(25 - 2.5 * np.log10(table["flux"][0]),
                                              abs=1e-3)

    db = ResultsDB(tmp_path / "out")
    (row,) = db.frames()
    assert row.stem == "frame1" and row.status == "done" and row.filter == "V"
    assert row.zero_point == pytest.approx(result.zero_point)
    assert row.calib_version == result.method_version and row.bhtom_band == "GaiaSP/V"
    assert row.mjd == pytest.approx(sf.header["MJD-OBS"] + 30 / 86400, abs=1e-7)
    assert set(db.products(row.id)) >= {"calibrated", "reference", "quality"}
    meas = db.measurements()
    assert len(meas) == len(table)
    assert np.isfinite(meas["mag"]).sum() == len(table)
    (calib,) = db.calibrations(row.id)
    assert calib.current and calib.status == "success"
    assert json.loads(calib.settings_json)["reference_path"] == str(products["reference"])


def test_failed_calibration_keeps_products_and_is_recorded(tmp_path):
    frame, table, cat, _ = simulated_frame(tmp_path, seed=2)
    few = Table.read(cat)[:2]
    few.write(tmp_path / "few.ecsv", overwrite=True)
    folder = tmp_path / "out" / "frame2"
    result, products, notes = calibrate_and_record(frame, table, None, folder,
                                                   overrides(tmp_path / "few.ecsv"))
    assert result is None
    assert any("need at least 3" in n for n in notes)
    assert products["calibrated"].is_file() and products["quality"].is_file()
    cal = Table.read(products["calibrated"], format="ascii.ecsv")
    assert np.isfinite(cal["mag_inst"]).all() and not np.isfinite(cal["mag"]).any()
    row = ResultsDB(tmp_path / "out").frame("frame2")
    assert row.status == "calibration_failed" and "need at least 3" in row.status_reason
    assert row.photflag & qa.FLAG_NOT_CALIBRATED

    result, products, notes = calibrate_and_record(frame, table, None, tmp_path / "out" / "f3",
                                                   {"catalogs": "file"})
    assert result is None and any("no catalogue path" in n for n in notes)
    assert ResultsDB(tmp_path / "out").frame("f3").status == "calibration_failed"


def test_database_replaces_a_rerun_frame_and_keeps_history(tmp_path):
    db = ResultsDB(":memory:")
    table = SourceTable.build([1.0, 2.0], [3.0, 4.0], [100.0, 200.0], [10.0, 10.0],
                              [0, int(SourceFlag.SATURATED)], ra=[1.0, 1.1], dec=[2.0, 2.1])
    fid = db.record_frame("a", {"mjd": 60000.5, "filter": "V"}, table, {"x": "a.ecsv"},
                          {"status": "success", "zero_point": 25.0})
    again = db.record_frame("a", {"mjd": 60000.5, "filter": "R"}, table[:1], {},
                            {"status": "success", "zero_point": 25.1})
    db.record_frame("b", {"mjd": 59999.0}, None)
    assert fid == again
    assert [f.stem for f in db.frames()] == ["b", "a"]
    assert db.frame("a").filter == "R"
    assert len(db.measurements()) == 1
    history = db.calibrations(fid)
    assert [c.zero_point for c in history] == [25.0, 25.1]
    assert [c.current for c in history] == [False, True]
    sources = Table({"ra": [1.0], "dec": [2.0], "n_obs": [1], "is_variable": [False]})
    db.set_sources(sources, db.measurements()["id"], [0])
    assert db.measurements()["source_id"][0] == 1 and len(db.sources()) == 1


def test_results_urls(tmp_path):
    assert results_url(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'results.db'}"
    assert results_url(tmp_path / "x.db") == f"sqlite:///{(tmp_path / 'x.db').resolve()}"
    url = "postgresql+psycopg://user@db.example/results"
    assert results_url(url) == url
    with pytest.raises(ResultsError):
        ResultsDB("nosuchdialect://x/y")


def test_recalibrate_adds_a_current_version_and_updates_magnitudes(tmp_path):
    from bhcore.results.recalibrate import recalibrate
    frame, table, cat, _ = simulated_frame(tmp_path, seed=3, ct=0.15)
    folder = tmp_path / "out" / "frame3"
    first, _products, _ = calibrate_and_record(frame, table, None, folder,
                                               overrides(cat, plots=False))
    db = ResultsDB(tmp_path / "out")
    before = db.measurements()["mag"]
    summary = recalibrate(db, overrides={"calibrate_builtin.fit_color_term": "never"},
                          plots=False)
    assert [s for s, *_ in summary.done] == ["frame3"] and not summary.failed
    row = db.frame("frame3")
    history = db.calibrations(row.id)
    assert [c.current for c in history] == [False, True]
    assert history[-1].color_term == 0.0 and history[0].color_term == pytest.approx(
        first.color_term)
    assert history[-1].method_version == first.method_version
    assert row.color_term == 0.0 and row.zero_point != pytest.approx(first.zero_point)
    after = db.measurements()["mag"]
    assert not np.allclose(before, after)
    summary = recalibrate(db, overrides={"calibrate_builtin.min_stars": 10000}, plots=False)
    assert summary.failed and "need at least 10000" in summary.failed[0][1]
    history = db.calibrations(row.id)
    assert [c.current for c in history] == [False, True, False]
    assert history[-1].status == "error" and db.frame("frame3").color_term == 0.0


def test_photflag_bits():
    class R:
        n_stars, scatter, outlier_fraction = 5, 0.2, 0.25
    assert qa.photflag({"has_wcs": True}, None) == qa.FLAG_NOT_CALIBRATED
    flag = qa.photflag({"has_wcs": False, "sun_alt": -5.0}, R())
    assert flag == (qa.FLAG_FEW_STARS | qa.FLAG_SCATTER | qa.FLAG_OUTLIERS | qa.FLAG_NO_WCS
                    | qa.FLAG_TWILIGHT)


def test_database_rebuilt_from_products(tmp_path):
    """A cluster run writes products only; the database is built from them afterwards."""
    from bhcore.results.stage import ingest
    frame, table, cat, _ = simulated_frame(tmp_path, seed=4)
    for stem in ("a", "b"):
        result, products, _ = calibrate_and_record(
            frame, table, None, tmp_path / "run" / stem, overrides(cat, record=False,
                                                                   plots=False))
        assert result is not None and products["calibration"].is_file()
    assert not (tmp_path / "run" / "results.db").exists()
    assert ingest(tmp_path / "run") == 2
    db = ResultsDB(tmp_path / "run")
    assert [f.stem for f in db.frames()] == ["a", "b"]
    assert all(f.zero_point == pytest.approx(result.zero_point) for f in db.frames())
    assert len(db.measurements()) == 2 * len(table)
    assert db.calibrations(db.frame("b").id)[0].method_version == result.method_version
    assert ingest(tmp_path / "run") == 2                     # again: replaced, not doubled
    assert len(db.measurements()) == 2 * len(table)
