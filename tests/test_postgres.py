"""PostgreSQL for real: the registry and the results database on a throw-away server.

Why: both promise "any SQLAlchemy URL, PostgreSQL by URL", and SQLite forgives what
PostgreSQL refuses (type names in migrations, collation-dependent ORDER BY, NULL
ordering, first-use races handled by an advisory lock instead of a file lock).
Every test here goes through the same public code paths as the SQLite tests and,
where the data allow, compares the two backends row for row.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from sqlalchemy import inspect
from sqlmodel import Session, select
from typer.testing import CliRunner

from bhcore.registry import Registry
from bhcore.registry.db import MIGRATIONS, applied_migrations
from bhcore.registry.models import Camera
from bhcore.results.db import ResultsDB
from bhcore.tables import SourceFlag, SourceTable

from pg_server import pg_database, pg_server, pg_url  # noqa: F401  (fixtures)
from test_registry import _open_and_fill


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# --- registry ------------------------------------------------------------------------------
def test_registry_migrates_seeds_and_answers(pg_url):
    """Migrations (m002 adds columns with dialect types), seeding, lookups, removal."""
    registry = Registry(pg_url)
    assert applied_migrations(registry.engine) == [name for name, _ in MIGRATIONS]
    columns = {c["name"] for c in inspect(registry.engine).get_columns("camera")}
    assert {"source_path", "updated_at"} <= columns
    added = registry.ensure_builtin()
    assert len(added) == registry.count() >= 70
    assert Registry(pg_url).ensure_builtin() == []            # second use: nothing new
    names = registry.onames()
    assert names == sorted(names)               # code-point order despite en-US collation
    assert [r["oname"] for r in registry.list()] == names
    oname = "GoChile-GoT1_ASI6200" if "GoChile-GoT1_ASI6200" in names else names[0]
    settings = registry.get(oname)
    assert settings.oname == oname and registry.export(oname).strip()
    registry.remove(oname)
    assert registry.count() == len(names) - 1 and oname not in registry.onames()
    assert registry.add_obsinfo(registry_file(oname)) == oname
    with Session(registry.engine) as session:                 # stored as UTC, naive
        stamp = session.exec(select(Camera.updated_at).where(Camera.oname == oname)).one()
    assert abs(stamp - _utcnow()) < timedelta(minutes=5)


def registry_file(oname):
    from bhcore.registry import builtin_dir
    from bhcore.registry.obsinfo import read_obsinfo, settings_from_obsinfo
    for path in sorted(builtin_dir().glob("*_obs.info")):
        if settings_from_obsinfo(read_obsinfo(path)).oname == oname:
            return path
    raise LookupError(oname)


def test_plain_postgresql_url_opens_with_psycopg3(pg_url):
    """``postgresql://`` means psycopg2 to SQLAlchemy; without it psycopg 3 is used."""
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    assert Registry(plain).count() == 0
    assert ResultsDB(plain).frames() == []


def test_processes_opening_a_new_registry_at_once_all_succeed(pg_database):
    """Parallel workers first using one PostgreSQL registry: the advisory lock holds."""
    from concurrent.futures import ProcessPoolExecutor
    for _ in range(2):
        url = pg_database()
        with ProcessPoolExecutor(4) as pool:
            counts = list(pool.map(_open_and_fill, [url] * 4))
        assert len(set(counts)) == 1 and counts[0] >= 70, counts


def _open_results(url: str) -> int:
    return len(ResultsDB(url).frames())


def test_processes_opening_a_new_results_db_at_once_all_succeed(pg_url):
    """Worker processes create the results tables together: one wins, none fails."""
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(4) as pool:
        assert list(pool.map(_open_results, [pg_url] * 4)) == [0] * 4


# --- results ---------------------------------------------------------------------------------
def test_results_rows_replace_history_sources_and_null_order(pg_url):
    """The small API on PostgreSQL: replacement, history, booleans, sources, NaN->NULL."""
    db = ResultsDB(pg_url)
    table = SourceTable.build([1.0, 2.0], [3.0, 4.0], [100.0, np.nan], [10.0, 10.0],
                              [0, int(SourceFlag.SATURATED)], ra=[1.0, 1.1], dec=[2.0, 2.1])
    fid = db.record_frame("a", {"mjd": 60000.5, "filter": "V", "target_in_field": np.True_,
                                "object": "M\x0031",          # a NUL from a broken header
                                "numstars": np.int64(2), "airmass": np.float32(1.5)},
                          table, {"x": "/data/a.ecsv"},
                          {"status": "success", "zero_point": 25.0})
    again = db.record_frame("a", {"mjd": 60000.5, "filter": "R"}, table[:1], {},
                            {"status": "success", "zero_point": 25.1})
    db.record_frame("b", {"mjd": 59999.0}, None)
    db.record_frame("c", {"mjd": None}, None)                   # no time: listed first
    assert fid == again
    assert [f.stem for f in db.frames()] == ["c", "b", "a"]
    row = db.frame("a")
    assert row.filter == "R" and row.target_in_field is True and row.airmass == 1.5
    assert row.object == "M31" and abs(row.recorded_at - _utcnow()) < timedelta(minutes=5)
    assert [c.zero_point for c in db.calibrations(fid)] == [25.0, 25.1]
    assert [c.current for c in db.calibrations(fid)] == [False, True]
    db.record_frame("a", {"mjd": 60000.5}, table, {"x": "/data/a.ecsv"})
    meas = db.measurements()
    assert len(meas) == 2 and np.isnan(meas["flux"][1]) and meas["flags"][1] == int(
        SourceFlag.SATURATED)
    assert db.products(fid) == {"x": Path("/data/a.ecsv")}
    sources = {"ra": [1.0, 1.1], "dec": [2.0, 2.1], "n_obs": [1, 1],
               "is_variable": [np.False_, np.True_]}
    for _ in range(2):                                          # replaced, not doubled
        db.set_sources(Table(sources), meas["id"], [0, 1])
    assert list(db.measurements()["source_id"]) == [1, 2]
    assert list(db.sources()["is_variable"]) == [False, True]


@pytest.fixture(scope="module")
def night_pg(pg_server, tmp_path_factory):  # noqa: F811
    """8 simulated frames calibrated and recorded straight into PostgreSQL; the same
    products also ingested into a SQLite file, the reference to compare against."""
    pytest.importorskip("bh_calibrate_builtin", reason="calibrate_builtin not installed")
    pytest.importorskip("bh_catalogs", reason="catalogue backends not installed")
    pytest.importorskip("sep")
    from bhcore.results.stage import ingest
    from test_lightcurves import record_night
    url = pg_server.create_database("night")
    root = tmp_path_factory.mktemp("pgnight")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BHCORE_HOME", str(root / "home"))
        _night, target = record_night(root, {"results_url": url}, n_frames=8,
                                      shape=(160, 160), n_stars=40, seed=7,
                                      flux_range=(5e3, 3e5))
        assert ingest(root / "out") == 8                # the SQLite twin
        yield url, root / "out", target


def _columns_equal(a, b, skip=()):
    for name in a.colnames:
        if name in skip:
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind == "f":
            assert np.allclose(x, y, equal_nan=True, rtol=1e-12, atol=0), name
        else:
            assert (x == y).all(), name


def test_recorded_frames_match_the_sqlite_twin(night_pg):
    """calibrate_and_record into PostgreSQL stores what SQLite stores (float64 kept)."""
    from bhcore.results.db import frame_rows_table
    url, out, _ = night_pg
    pg, lite = ResultsDB(url), ResultsDB(out)
    pg_frames, lite_frames = pg.frames(), lite.frames()
    assert [f.stem for f in pg_frames] == [f.stem for f in lite_frames]
    assert len(pg_frames) == 8 and all(f.status == "done" for f in pg_frames)
    _columns_equal(frame_rows_table(pg_frames), frame_rows_table(lite_frames),
                   skip=("id", "folder"))
    assert [json.loads(f.quality_json) for f in pg_frames] == [
        json.loads(f.quality_json) for f in lite_frames]
    _columns_equal(pg.measurements(), lite.measurements(), skip=("id", "frame_id"))
    first = pg_frames[0]
    assert pg.products(first.id) == lite.products(lite_frames[0].id)   # absolute paths
    (calib,) = pg.calibrations(first.id)
    assert calib.current and calib.status == "success" and calib.created_at is not None


def test_light_curves_and_cli_from_the_postgresql_url(night_pg, tmp_path):
    """from_results(url) equals the SQLite result; sources are saved back; the
    ``bhcore lightcurve URL`` command reads PostgreSQL."""
    from bhcore.cli.main import app
    from bhcore.lightcurves import from_results
    from bhcore.results.exports import bhtom_csv_text
    url, out, target = night_pg
    lcs, twin = from_results(url, save=True), from_results(out)
    assert lcs.n_frames == 8 and lcs.n_sources == twin.n_sources
    j = lcs.find(*target)
    lc = lcs.lightcurve(j)
    _columns_equal(lc, twin.lightcurve(twin.find(*target)), skip=("frame_id", "id"))
    db = ResultsDB(url)
    assert len(db.sources()) == lcs.n_sources
    assert (db.measurements()["source_id"] > 0).sum() > 0
    res = CliRunner().invoke(app, ["lightcurve", url, "--ra", str(target[0]), "--dec",
                                   str(target[1]), "-o", str(tmp_path / "lc.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lc.csv").read_text() == bhtom_csv_text(lc, "V")


def test_recalibrate_on_postgresql(night_pg):
    """A new current calibration per frame; magnitudes follow; history kept."""
    from bhcore.results.recalibrate import recalibrate
    url, _, _ = night_pg
    db = ResultsDB(url)
    stems = [f.stem for f in db.frames()][:2]
    before = db.measurements()
    summary = recalibrate(url, overrides={"calibrate_builtin.fit_color_term": "never"},
                          stems=stems, plots=False)
    assert [s for s, *_ in summary.done] == stems and not summary.failed
    after = db.measurements()
    for stem in stems:
        row = db.frame(stem)
        history = db.calibrations(row.id)
        assert [c.current for c in history] == [False, True]
        assert row.color_term == 0.0 and history[-1].color_term == 0.0
        mine = np.asarray(after["frame_id"]) == row.id
        assert not np.allclose(before["mag"][mine], after["mag"][mine])
    others = ~np.isin(np.asarray(after["frame_id"]), [db.frame(s).id for s in stems])
    assert np.array_equal(before["mag"][others], after["mag"][others], equal_nan=True)
    summary = recalibrate(url, overrides={"calibrate_builtin.min_stars": 10000},
                          stems=stems[:1], plots=False)
    assert summary.failed and "need at least 10000" in summary.failed[0][1]
    history = db.calibrations(db.frame(stems[0]).id)
    assert [c.current for c in history] == [False, True, False]
    assert history[-1].status == "error"
