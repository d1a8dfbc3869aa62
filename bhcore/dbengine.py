"""One way to open a database for the registry and the results: any SQLAlchemy URL.

SQLite gets what it needs to be shared safely: foreign keys on, a busy timeout so
parallel workers wait instead of failing, and one shared connection for in-memory
databases (used by tests). Callers wrap the errors in their own ``BhError``.
``exclusive`` serialises first-use work (migrations, seeding) between processes
that open a brand-new database at the same moment, as parallel workers do.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import zlib
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import NoSuchModuleError
from sqlalchemy.pool import StaticPool


def open_engine(url: str, busy_timeout_s: float = 60.0) -> Engine:
    """An engine for ``url``; raises SQLAlchemy's ArgumentError/NoSuchModuleError
    (also for a missing database driver), ValueError for a malformed URL, OSError
    when the SQLite folder cannot be made.

    A plain ``postgresql://`` URL means psycopg2 to SQLAlchemy; when psycopg2 is
    absent but psycopg 3 is installed (our ``test`` extra installs psycopg 3) it is
    opened with psycopg 3, so users need not know the ``postgresql+psycopg://`` form.
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql" and not _importable("psycopg2") \
            and _importable("psycopg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        database = parsed.database
        if not database or database == ":memory:":
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(connect_args={"timeout": busy_timeout_s})
    try:
        engine = create_engine(parsed, **kwargs)
    except ImportError as exc:          # the dialect is known, its driver not installed
        raise NoSuchModuleError(f"database driver for {parsed.drivername!r} is not "
                                f"installed ({exc})") from None
    if sqlite:
        event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _sqlite_foreign_keys(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextlib.contextmanager
def exclusive(engine: Engine, name: str = "migrate") -> Iterator[None]:
    """Hold a lock named ``name`` on this database across processes while inside.

    SQLite files: an ``flock`` on a ``.lock`` file beside the database (SQLite's own
    locks do not cover a check-then-create sequence); PostgreSQL: an advisory lock;
    in-memory or other databases: nothing to share, no lock.
    """
    url = engine.url
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database and url.database != ":memory:":
        lock_path = Path(url.database).expanduser().with_name(
            Path(url.database).name + f".{name}.lock")
        with open(lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif backend == "postgresql":
        key = zlib.crc32(f"bhcore:{name}".encode())
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        yield
