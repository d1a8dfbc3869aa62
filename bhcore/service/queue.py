"""The job queue of the service: one row per frame content, claimed with leases.

Why a database and leases: workers may be killed at any moment (kill -9, power,
OOM). A claim sets a random lease token and an expiry that a heartbeat extends;
every later write is fenced by that token, so a worker that lost its lease can
never overwrite the work of the one that took the job over. Jobs are keyed by
the frame's content hash, so a frame dropped twice is processed once. Written
with SQLAlchemy Core and plain compare-and-set updates, it works the same on
SQLite (WAL, ``BEGIN IMMEDIATE``) and PostgreSQL.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (BigInteger, Column, Float, Integer, MetaData, String, Table, Text,
                        and_, create_engine, event, func, insert, or_, select, update)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import NullPool

from ..errors import ConfigError
from ..secrets import redact

STAGES = ("astrometry", "photometry", "results")
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"

metadata = MetaData()
jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("content_hash", String(64), nullable=False, unique=True),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("oname", String(200)),
    Column("out_name", String(250), nullable=False, unique=True),
    Column("stage", String(20), nullable=False, index=True),
    Column("state", String(20), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=False, default=""),
    Column("owner", String(200)),
    Column("lease_token", String(32)),
    Column("lease_until", Float, nullable=False, default=0.0),
    Column("next_try", Float, nullable=False, default=0.0),
    Column("products", Text, nullable=False, default="{}"),
    Column("notes", Text, nullable=False, default="[]"),
    Column("completions", Integer, nullable=False, default=0),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
)
results = Table(
    "results", metadata,
    Column("job_id", Integer, primary_key=True),
    Column("content_hash", String(64), nullable=False, unique=True),
    Column("out_name", String(250), nullable=False),
    Column("status", String(20), nullable=False),
    Column("manifest", Text, nullable=False),
    Column("finished", Float, nullable=False),
)


def default_url(out_dir) -> str:
    """``sqlite:///OUT/.bhcore/jobs.sqlite``: the queue lives beside the products."""
    path = Path(out_dir).absolute() / ".bhcore" / "jobs.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return redact(url)


def make_engine(url: str, pooled: bool = True):
    """An engine; SQLite gets WAL, a busy timeout and write-locking transactions."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"invalid database URL '{safe_url(url)}': {exc}") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    kwargs = {"poolclass": NullPool} if sqlite or not pooled else {"pool_pre_ping": True}
    if sqlite:
        kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:   # a missing driver (e.g. psycopg) or a bad URL
        raise ConfigError(f"cannot use database '{safe_url(url)}': {exc}") from None
    if sqlite:
        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None     # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")     # take the write lock up front
    return engine


def owner_id(role: str) -> str:
    """``host:pid:role``: who holds a lease (the supervisor frees a dead child's jobs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


@dataclass
class Job:
    id: int
    content_hash: str
    path: str
    oname: str | None
    out_name: str
    stage: str
    state: str
    attempts: int
    reason: str
    token: str | None = None
    products: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @classmethod
    def from_row(cls, row, token=None) -> "Job":
        return cls(row.id, row.content_hash, row.path, row.oname, row.out_name, row.stage,
                   row.state, row.attempts, row.reason or "", token,
                   json.loads(row.products or "{}"), json.loads(row.notes or "[]"))


class JobQueue:
    """Register, claim, heartbeat and finish jobs; every method is one transaction."""

    def __init__(self, url: str, pooled: bool = True):
        self.url = url
        self.engine = make_engine(url, pooled)

    def create(self) -> None:
        metadata.create_all(self.engine)

    def _write(self, fn, retries: int = 20):
        """Run ``fn(conn)`` in a transaction, retrying when the database is busy."""
        for attempt in range(retries):
            try:
                with self.engine.begin() as conn:
                    return fn(conn)
            except OperationalError as exc:
                if attempt == retries - 1 or "locked" not in str(exc).lower() and \
                        "busy" not in str(exc).lower():
                    raise
                time.sleep(0.05 * (attempt + 1))

    # --- the FITS manager -------------------------------------------------------------
    def known(self, path: str, size: int, mtime_ns: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(jobs.c.id).where(
                jobs.c.path == path, jobs.c.size == size,
                jobs.c.mtime_ns == mtime_ns)).first() is not None

    def register(self, path: str, content_hash: str, size: int, mtime_ns: int,
                 oname: str | None, stem: str) -> int | None:
        """A new job for this content; None when the content is already a job."""
        def add(conn):
            if conn.execute(select(jobs.c.id).where(
                    jobs.c.content_hash == content_hash)).first():
                return None
            name = stem
            if conn.execute(select(jobs.c.id).where(jobs.c.out_name == name)).first():
                name = f"{stem}_{content_hash[:10]}"
            now = time.time()
            return conn.execute(insert(jobs).values(
                content_hash=content_hash, path=path, size=size, mtime_ns=mtime_ns,
                oname=oname, out_name=name, stage=STAGES[0], state=QUEUED, attempts=0,
                reason="", lease_until=0.0, next_try=0.0, products="{}", notes="[]",
                completions=0, created=now, updated=now)).inserted_primary_key[0]
        try:
            return self._write(add)
        except IntegrityError:       # registered concurrently: the same content
            return None

    # --- workers ----------------------------------------------------------------------
    def claim(self, stage: str, owner: str, lease: float) -> Job | None:
        """Take the oldest runnable job of ``stage`` (queued and due, or lease expired)."""
        for _ in range(3):               # lost a race for one row (PostgreSQL): next row
            job = self._write(lambda conn: self._take(conn, stage, owner, lease))
            if job is not False:
                return job
        return None

    def _take(self, conn, stage: str, owner: str, lease: float):
        """One claim attempt: the job, None when none is runnable, False on a lost race."""
        now = time.time()
        runnable = and_(jobs.c.stage == stage, or_(
            and_(jobs.c.state == QUEUED, jobs.c.next_try <= now),
            and_(jobs.c.state == RUNNING, jobs.c.lease_until < now)))
        row = conn.execute(select(jobs.c.id).where(runnable)
                           .order_by(jobs.c.next_try, jobs.c.id).limit(1)).first()
        if row is None:
            return None
        token = uuid.uuid4().hex
        done = conn.execute(update(jobs).where(jobs.c.id == row.id, runnable).values(
            state=RUNNING, owner=owner, lease_token=token, lease_until=now + lease,
            attempts=jobs.c.attempts + 1, updated=now))
        if done.rowcount != 1:       # another worker won the race
            return False
        fresh = conn.execute(select(jobs).where(jobs.c.id == row.id)).first()
        return Job.from_row(fresh, token)

    def _fenced(self, job: Job, **values) -> bool:
        values.setdefault("updated", time.time())

        def write(conn):
            return conn.execute(update(jobs).where(
                jobs.c.id == job.id, jobs.c.lease_token == job.token,
                jobs.c.state == RUNNING).values(**values)).rowcount == 1
        return bool(self._write(write))

    def heartbeat(self, job: Job, lease: float) -> bool:
        """Extend the lease; False when it was lost (the job was taken over)."""
        return self._fenced(job, lease_until=time.time() + lease)

    def advance(self, job: Job, next_stage: str, products: dict, notes: list,
                reason: str = "") -> bool:
        """Hand the job to the next stage with what this stage made."""
        return self._fenced(job, stage=next_stage, state=QUEUED, owner=None,
                            lease_token=None, attempts=0, next_try=0.0,
                            products=json.dumps(products),
                            notes=json.dumps([redact(n) for n in notes]),
                            reason=redact(reason))

    def retry(self, job: Job, reason: str, delay: float) -> bool:
        """A transient failure: back to the queue, due after ``delay`` seconds."""
        return self._fenced(job, state=QUEUED, owner=None, lease_token=None,
                            next_try=time.time() + delay, reason=redact(reason))

    def release(self, job: Job) -> bool:
        """Give a job back untouched (clean shutdown): the attempt does not count."""
        return self._fenced(job, state=QUEUED, owner=None, lease_token=None,
                            attempts=jobs.c.attempts - 1, next_try=0.0)

    def finish(self, job: Job, status: str, manifest: str, reason: str = "") -> bool:
        """Final state and the results row, in one transaction, fenced by the lease."""
        def write(conn):
            now = time.time()
            done = conn.execute(update(jobs).where(
                jobs.c.id == job.id, jobs.c.lease_token == job.token,
                jobs.c.state == RUNNING).values(
                state=DONE if status == "done" else FAILED, owner=None, lease_token=None,
                reason=redact(reason), completions=jobs.c.completions + 1, updated=now))
            if done.rowcount != 1:
                return False
            conn.execute(insert(results).values(
                job_id=job.id, content_hash=job.content_hash, out_name=job.out_name,
                status=status, manifest=manifest, finished=now))
            return True
        return bool(self._write(write))

    def fail(self, job: Job, reason: str) -> bool:
        """Set a job aside for good without a results row (nothing was produced)."""
        return self._fenced(job, state=FAILED, owner=None, lease_token=None,
                            reason=redact(reason), completions=jobs.c.completions + 1)

    def release_owner(self, owner: str) -> int:
        """Requeue the running jobs of a process known to be dead."""
        def write(conn):
            return conn.execute(update(jobs).where(
                jobs.c.owner == owner, jobs.c.state == RUNNING).values(
                state=QUEUED, owner=None, lease_token=None, lease_until=0.0,
                updated=time.time())).rowcount
        return self._write(write) or 0

    def release_dead_local(self) -> int:
        """Requeue jobs held by processes of this host that no longer exist (restart)."""
        host, freed = socket.gethostname(), 0
        with self.engine.connect() as conn:
            owners = [r.owner for r in conn.execute(
                select(jobs.c.owner).where(jobs.c.state == RUNNING).distinct())]
        for owner in owners:
            parts = (owner or "").split(":")
            if len(parts) >= 2 and parts[0] == host and parts[1].isdigit() \
                    and not _alive(int(parts[1])):
                freed += self.release_owner(owner)
        return freed

    # --- status -----------------------------------------------------------------------
    def counts(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.stage, jobs.c.state, func.count())
                                .group_by(jobs.c.stage, jobs.c.state))
            return {(r[0], r[1]): r[2] for r in rows}

    def jobs(self, state: str | None = None, limit: int | None = None) -> list:
        """Jobs (all, or in one state); with ``limit`` the newest ones."""
        query = select(jobs).order_by(jobs.c.id.desc() if limit else jobs.c.id)
        if state:
            query = query.where(jobs.c.state == state)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        return rows[::-1] if limit else rows

    def results(self) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(select(results).order_by(results.c.job_id)))

    def dispose(self) -> None:
        self.engine.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
