"""A throw-away PostgreSQL server for tests (import its fixtures into a test module).

Why a real server: the results database and the registry promise PostgreSQL by URL,
and SQLite accepts much that PostgreSQL refuses (types, booleans, locking). The
server lives in a temporary folder, listens only on a unix socket there (no TCP,
no clash with a system cluster), runs as the ``postgres`` user when we are root
(the server refuses root) and is stopped and deleted afterwards. Tests skip only
when the server binaries or the psycopg driver are missing (``make install``
provides both, so in CI a skip fails the run).
"""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

PG_ROOT = Path("/usr/lib/postgresql")
USER = "postgres"          # the database superuser initdb creates


def pg_bindir() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<version>/bin`` holding initdb."""
    found = [p / "bin" for p in PG_ROOT.glob("*") if (p / "bin" / "initdb").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """initdb + pg_ctl start in ``folder``; ``url(db)`` gives a psycopg 3 URL."""

    def __init__(self, bindir: Path, folder: Path):
        self.bindir, self.folder = bindir, folder
        self.data, self.socket_dir = folder / "data", folder / "run"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:                       # the server refuses to run as root
            entry = pwd.getpwnam(USER)             # KeyError: the package is broken
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            self.as_user = ["runuser", "-u", USER, "--"]
        self._names = itertools.count(1)

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self.as_user, *args], capture_output=True, text=True,
                              timeout=60)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n"
                               f"{proc.stdout}\n{proc.stderr}")

    def start(self) -> None:
        self._run("mkdir", "-p", str(self.socket_dir))
        # ICU en-US collation, as most servers sort text (not by code point, unlike
        # SQLite): an ORDER BY on names would give a different order there.
        icu = (["--locale-provider=icu", "--icu-locale=en-US"]
               if self.bindir.parent.name.isdigit() and int(self.bindir.parent.name) >= 15
               else [])
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER,
                  "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", *icu, "--no-sync")
        # a server clock zone other than UTC, as on a server abroad: timestamps must
        # not shift with it
        options = (f"-c listen_addresses='' -c port={self.port} "
                   f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c timezone=Etc/GMT-5 "
                   "-c shared_buffers=16MB -c max_connections=40")
        log = self.folder / "server.log"
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log),
                      "-o", options, "-w", "-t", "30", "start")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nserver log:\n"
                               f"{log.read_text() if log.exists() else '(none)'}") from None

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql+psycopg://{USER}@/{database}"
                f"?host={self.socket_dir}&port={self.port}")

    def create_database(self, prefix: str = "bh") -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg
        name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=USER,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server per test module; skips only when it cannot be installed."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL server binaries not found under {PG_ROOT}/<version>/bin "
                    "(apt-get install postgresql; make install does it)")
    pytest.importorskip("psycopg", reason="PostgreSQL driver psycopg 3 not installed "
                                          "(pip install 'psycopg[binary]'; the test extra)")
    # /tmp, not $TMPDIR: a unix socket path must stay under ~100 characters
    folder = Path(tempfile.mkdtemp(prefix="bhpg-", dir="/tmp" if Path("/tmp").is_dir()
                                   else None))
    server = PgServer(bindir, folder)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A brand-new database on the module's server, for one test."""
    return pg_server.create_database()


@pytest.fixture
def pg_database(pg_server: PgServer) -> Callable[[], str]:
    """A factory of brand-new databases, for tests that need several."""
    return pg_server.create_database
