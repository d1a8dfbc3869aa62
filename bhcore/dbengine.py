"""One way to open a database for the registry and the results: any SQLAlchemy URL.

SQLite gets what it needs to be shared safely: foreign keys on, a busy timeout so
parallel workers wait instead of failing, and one shared connection for in-memory
databases (used by tests). Callers wrap the errors in their own ``BhError``.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool


def open_engine(url: str, busy_timeout_s: float = 60.0) -> Engine:
    """An engine for ``url``; raises SQLAlchemy's ArgumentError/NoSuchModuleError,
    ValueError for a malformed URL, OSError when the SQLite folder cannot be made."""
    parsed = make_url(url)
    kwargs: dict = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        database = parsed.database
        if not database or database == ":memory:":
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(connect_args={"timeout": busy_timeout_s})
    engine = create_engine(parsed, **kwargs)
    if sqlite:
        event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def _sqlite_foreign_keys(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
