"""The results database: a SQLite file beside the products by default, any SQLAlchemy
URL (PostgreSQL) when a node shares one.

Why its own small API instead of sessions everywhere: frames arrive one by one
from the runner (possibly from several worker processes, hence SQLite's busy
timeout), measurements arrive by the thousand (bulk inserts), and a re-run of a
frame must replace its rows rather than duplicate them.
"""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from astropy.table import Table
from sqlalchemy import bindparam, delete, insert, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import Session, select

from ..dbengine import exclusive, open_engine
from ..errors import ConfigError
from .models import (CalibrationRow, FrameRow, MeasurementRow, ProductRow, ResultsBase,
                     ResultsMigration, SourceRow)

DB_NAME = "results.db"
MEASUREMENT_COLUMNS = ("row", "number", "x", "y", "ra", "dec", "flux", "flux_err", "flags",
                       "mag_inst", "mag_inst_err", "mag", "mag_err", "fwhm", "pos_err")


class ResultsError(ConfigError):
    """The results database cannot be opened or written."""


def results_url(spec) -> str:
    """A URL from a URL, a results folder (``<folder>/results.db``) or a database file."""
    text = str(spec)
    if "://" in text:
        return text
    path = Path(text).expanduser()
    if path.is_dir() or (not path.suffix and not path.exists()):
        path = path / DB_NAME
    return f"sqlite:///{path.resolve()}"


def make_engine(url: str) -> Engine:
    try:
        return open_engine(url)
    except (ArgumentError, NoSuchModuleError, ValueError, OSError) as exc:
        raise ResultsError(f"cannot open results database {url!r}: {exc}") from None


MIGRATIONS = [("r001_create_tables", lambda conn: ResultsBase.metadata.create_all(conn))]


def _clean(value):
    """Database-friendly scalar: numpy -> python, NaN/inf -> None, and no NUL
    characters in text (a broken header may carry them; PostgreSQL refuses them)."""
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "")
    return value


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ResultsDB:
    """Open (and create or migrate) a results database."""

    def __init__(self, spec=":memory:"):
        self.url = "sqlite://" if str(spec) == ":memory:" else results_url(spec)
        self.engine = make_engine(self.url)
        parsed = make_url(self.url)
        self.folder = (Path(parsed.database).parent if parsed.get_backend_name() == "sqlite"
                       and parsed.database and parsed.database != ":memory:" else None)
        for attempt in range(5):      # worker processes may create the file together
            try:
                with exclusive(self.engine):
                    self._migrate()
                break
            except SQLAlchemyError as exc:
                if attempt == 4:
                    raise ResultsError(f"results database {self.url}: "
                                       f"{exc.__class__.__name__}: "
                                       f"{str(exc).splitlines()[0]}") from None
                time.sleep(0.2 * (attempt + 1))

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            ResultsMigration.__table__.create(conn, checkfirst=True)
            done = {r[0] for r in conn.execute(select(ResultsMigration.__table__.c.name))}
            for name, func in MIGRATIONS:
                if name not in done:
                    func(conn)
                    conn.execute(insert(ResultsMigration.__table__),
                                 [{"name": name, "applied_at": _now()}])

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- writing -----------------------------------------------------------------------
    def record_frame(self, stem: str, info: Mapping[str, Any], table: Table | None = None,
                     products: Mapping[str, Any] | None = None,
                     calibration: Mapping[str, Any] | None = None) -> int:
        """Insert or replace one frame with its measurements, products and calibration.

        ``info``: FrameRow fields; ``calibration``: CalibrationRow fields (or None).
        A previous record of the same stem is replaced, its calibration history kept.
        """
        fields = {k: _clean(v) for k, v in info.items() if k in FrameRow.model_fields}
        fields["recorded_at"] = _now()
        with self.session() as s:
            row = s.exec(select(FrameRow).where(FrameRow.stem == stem)).first()
            history = []
            if row is not None:
                history = [c for c in s.exec(select(CalibrationRow).where(
                    CalibrationRow.frame_id == row.id)).all()]
                s.execute(delete(MeasurementRow.__table__).where(
                    MeasurementRow.__table__.c.frame_id == row.id))
                s.execute(delete(ProductRow.__table__).where(
                    ProductRow.__table__.c.frame_id == row.id))
                for key, value in fields.items():
                    setattr(row, key, value)
            else:
                row = FrameRow(stem=stem, **fields)
                s.add(row)
            s.flush()
            fid = row.id
            for old in history:
                old.current = False
            if calibration is not None:
                s.add(CalibrationRow(frame_id=fid, created_at=_now(),
                                     **{k: _clean(v) for k, v in calibration.items()}))
            for kind, path in (products or {}).items():
                s.add(ProductRow(frame_id=fid, kind=kind, path=self._rel(path)))
            s.commit()
        if table is not None and len(table):
            self._insert_measurements(fid, table)
        return fid

    def _insert_measurements(self, frame_id: int, table: Table) -> None:
        n = len(table)
        cols = {}
        for name in MEASUREMENT_COLUMNS:
            source = "id" if name == "number" else name
            if name == "row":
                cols[name] = np.arange(n)
            elif source in table.colnames:
                cols[name] = np.ma.filled(np.ma.asarray(table[source]), np.nan)
        rows = [{"frame_id": frame_id, **{k: _clean(v[i]) for k, v in cols.items()}}
                for i in range(n)]
        for r in rows:
            r["flags"] = int(r.get("flags") or 0)
            r["number"] = int(r.get("number") or 0)
        with self.engine.begin() as conn:
            conn.execute(insert(MeasurementRow.__table__), rows)

    def add_calibration(self, frame_id: int, calibration: Mapping[str, Any],
                        frame_fields: Mapping[str, Any], mags: Iterable | None = None) -> None:
        """Store a re-calibration; when current (the default) update the frame's fields
        and the measurements' magnitudes (``mags``: (row, mag, mag_err) triples).
        A failed attempt is stored with ``current=False`` and changes nothing else.
        """
        current = calibration.get("current", True)
        with self.session() as s:
            if current:
                for old in s.exec(select(CalibrationRow).where(
                        CalibrationRow.frame_id == frame_id)):
                    old.current = False
            s.add(CalibrationRow(frame_id=frame_id, created_at=_now(),
                                 **{k: _clean(v) for k, v in calibration.items()}))
            frame = s.get(FrameRow, frame_id)
            for key, value in frame_fields.items():
                if key in FrameRow.model_fields:
                    setattr(frame, key, _clean(value))
            s.commit()
        if mags is not None:
            t = MeasurementRow.__table__
            stmt = (update(t).where(t.c.frame_id == bindparam("fid"))
                    .where(t.c.row == bindparam("r"))
                    .values(mag=bindparam("m"), mag_err=bindparam("e")))
            params = [{"fid": frame_id, "r": int(r), "m": _clean(float(m)),
                       "e": _clean(float(e))} for r, m, e in mags]
            if params:
                with self.engine.begin() as conn:
                    conn.execute(stmt, params)

    def set_sources(self, sources: Table, measurement_ids, source_index) -> None:
        """Replace the source list; ``source_index[k]`` is the row in ``sources`` of
        measurement ``measurement_ids[k]`` (-1: unmatched)."""
        names = [c for c in SourceRow.model_fields if c != "id" and c in sources.colnames]
        with self.engine.begin() as conn:
            m = MeasurementRow.__table__
            conn.execute(update(m).values(source_id=None))
            conn.execute(delete(SourceRow.__table__))
            rows = [{"id": i + 1, **{c: _clean(sources[c][i]) for c in names}}
                    for i in range(len(sources))]
            for r in rows:
                for flag in ("is_variable", "is_comparison"):
                    if flag in r:
                        r[flag] = bool(r[flag])
            if rows:
                conn.execute(insert(SourceRow.__table__), rows)
            params = [{"mid": int(mid), "sid": int(si) + 1}
                      for mid, si in zip(measurement_ids, source_index) if si >= 0]
            if params:
                conn.execute(update(m).where(m.c.id == bindparam("mid"))
                             .values(source_id=bindparam("sid")), params)

    # --- reading -----------------------------------------------------------------------
    def frames(self, status: str | None = None) -> list[FrameRow]:
        """By MJD (frames without one first), then stem; sorted here, not by ORDER BY,
        because databases disagree on where NULLs go and on how text collates."""
        with self.session() as s:
            query = select(FrameRow)
            if status is not None:
                query = query.where(FrameRow.status == status)
            rows = s.exec(query).all()
        return sorted(rows, key=lambda f: (f.mjd is not None, f.mjd or 0.0, f.stem))

    def frame(self, stem: str) -> FrameRow | None:
        with self.session() as s:
            return s.exec(select(FrameRow).where(FrameRow.stem == stem)).first()

    def calibrations(self, frame_id: int) -> list[CalibrationRow]:
        with self.session() as s:
            return list(s.exec(select(CalibrationRow).where(
                CalibrationRow.frame_id == frame_id).order_by(CalibrationRow.id)).all())

    def products(self, frame_id: int) -> dict[str, Path]:
        with self.session() as s:
            rows = s.exec(select(ProductRow).where(ProductRow.frame_id == frame_id)).all()
        return {r.kind: self._abs(r.path) for r in rows}

    def measurements(self) -> Table:
        """Every measurement as one Table (with ``id`` and ``frame_id``)."""
        t = MeasurementRow.__table__
        with self.engine.connect() as conn:
            result = conn.execute(select(t).order_by(t.c.frame_id, t.c.row))
            keys = list(result.keys())
            data = result.fetchall()
        out = Table()
        for k, name in enumerate(keys):
            values = [r[k] for r in data]
            if name in ("id", "frame_id", "row", "number", "flags"):
                out[name] = np.array(values, dtype=np.int64)
            elif name == "source_id":
                out[name] = np.array([-1 if v is None else v for v in values], dtype=np.int64)
            else:
                out[name] = np.array([np.nan if v is None else v for v in values], dtype=float)
        return out

    def sources(self) -> Table:
        with self.session() as s:
            rows = s.exec(select(SourceRow).order_by(SourceRow.id)).all()
        names = list(SourceRow.model_fields)
        return Table(rows=[[getattr(r, n) for n in names] for r in rows] or None,
                     names=names) if rows else Table(names=names)

    # --- paths -------------------------------------------------------------------------
    def _rel(self, path) -> str:
        p = Path(path)
        if self.folder is not None and p.is_absolute():
            try:
                return str(p.resolve().relative_to(self.folder.resolve()))
            except ValueError:
                pass
        return str(p)

    def _abs(self, text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() or self.folder is None else self.folder / p


def frame_rows_table(frames: list[FrameRow]) -> Table:
    """Frame rows as a Table (NaN for missing numbers), in the given order."""
    out = Table()
    for name, info in FrameRow.model_fields.items():
        if name in ("quality_json", "recorded_at"):
            continue
        values = [getattr(f, name) for f in frames]
        kind = str(info.annotation)
        if name == "id":
            out[name] = np.array(values, dtype=np.int64)
        elif "float" in kind or "int" in kind or "bool" in kind:
            out[name] = np.array([np.nan if v is None else float(v) for v in values], float)
        else:
            out[name] = np.array(["" if v is None else str(v) for v in values], dtype=str)
    return out
