"""Stage workers and the FITS-manager loop, each its own process.

Why processes with leases rather than threads: astrometry and photometry drive
external engines that can hang or crash, and a process that dies takes nothing
with it: its lease runs out (or the supervisor frees its jobs at once) and another
worker redoes the stage, whose products are rewritten atomically. SIGTERM stops
a worker cleanly: it gives its job back untouched and exits.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

from ..errors import BhError
from ..secrets import redact
from . import stages
from .queue import STAGES, JobQueue, owner_id

log = logging.getLogger("bhcore.service")


@dataclass
class ServiceConfig:
    """Everything a service process needs; plain values, so it can cross a fork/pickle."""

    inbox: str
    out: str
    db_url: str
    default_oname: str | None = None
    astrometry_workers: int = 1
    photometry_workers: int = 1
    poll: float = 1.0
    settle: float = 2.0
    give_up: float = 60.0
    lease: float = 60.0
    max_attempts: int = 5
    backoff: float = 5.0
    backoff_max: float = 600.0
    overrides: dict = field(default_factory=dict)
    photometry_backend: str | None = None


class Shutdown(BaseException):
    """Raised in a stage on SIGTERM; a BaseException so no plugin swallows it."""


class _Signals:
    def __init__(self):
        self.stopping = False
        self.in_stage = False
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor handles Ctrl-C

    def _term(self, *_):
        self.stopping = True
        if self.in_stage:
            self.in_stage = False
            raise Shutdown()


class _Heartbeat(threading.Thread):
    def __init__(self, queue: JobQueue, job, lease: float):
        super().__init__(daemon=True)
        self.queue, self.job, self.lease = queue, job, lease
        self.stop = threading.Event()
        self.lost = False

    def run(self):
        while not self.stop.wait(self.lease / 3.0):
            try:
                if not self.queue.heartbeat(self.job, self.lease):
                    self.lost = True
                    return
            except Exception:   # the database is briefly away: try again next beat
                log.warning("job %d: heartbeat failed", self.job.id)


class _Observatories:
    """Registry look-ups, cached per process (plugins never open the registry)."""

    def __init__(self):
        self.cache = {}

    def get(self, oname):
        if oname is None:
            return None
        if oname not in self.cache:
            from ..registry import Registry
            registry = Registry()
            registry.ensure_builtin()
            self.cache[oname] = registry.get(oname)
        return self.cache[oname]


def run_stage_worker(stage: str, config: ServiceConfig, once: bool = False) -> None:
    """Claim jobs of ``stage`` until SIGTERM (or, with ``once``, until the queue is idle)."""
    sig = _Signals()
    queue = JobQueue(config.db_url)
    owner = owner_id(stage)
    observatories = _Observatories()
    parent = os.getppid()
    while not sig.stopping:
        if os.getppid() != parent:          # the supervisor is gone
            break
        job = queue.claim(stage, owner, config.lease)
        if job is None:
            if once:
                break
            time.sleep(config.poll)
            continue
        if job.attempts > config.max_attempts:
            queue.fail(job, f"{job.path}: gave up after {job.attempts - 1} attempts "
                            f"({job.reason or 'the worker died or timed out each time'})")
            continue
        _run_job(stage, job, queue, config, observatories, sig)
    queue.dispose()


def _run_job(stage, job, queue, config, observatories, sig) -> None:
    beat = _Heartbeat(queue, job, config.lease)
    beat.start()
    start = time.perf_counter()
    try:
        sig.in_stage = True
        try:
            obs = observatories.get(job.oname)
            outcome = _call(stage, job, obs, config)
        finally:
            sig.in_stage = False
    except Shutdown:
        beat.stop.set()
        queue.release(job)
        log.info("job %d: given back on shutdown", job.id)
        return
    except Exception as exc:
        beat.stop.set()
        _failed(stage, job, queue, config, exc)
        return
    beat.stop.set()
    took = time.perf_counter() - start
    if beat.lost:
        log.warning("job %d: lease lost during %s; another worker redoes it", job.id, stage)
        return
    if stage == "results":
        status, manifest = outcome
        queue.finish(job, status, manifest, job.reason)
        log.info("job %d %s: %s (%.1f s)", job.id, job.out_name, status, took)
        return
    following = STAGES[STAGES.index(stage) + 1]
    if outcome.reason:            # e.g. astrometry not solved: straight to the results
        following = "results"
    queue.advance(job, following, outcome.products, outcome.notes, outcome.reason)
    log.info("job %d %s: %s %s (%.1f s)", job.id, job.out_name, stage,
             "failed, later stages skipped" if outcome.reason else "done", took)


def _call(stage, job, obs, config):
    if stage == "astrometry":
        return stages.astrometry_stage(job, obs, config.out, config.overrides)
    if stage == "photometry":
        return stages.photometry_stage(job, obs, config.out, config.overrides,
                                       config.photometry_backend)
    return stages.results_stage(job, obs, config.out, config.overrides)


def _failed(stage, job, queue, config, exc) -> None:
    """Transient: retry with exponential backoff; permanent: set aside with its reason."""
    if isinstance(exc, BhError):
        reason = " ".join(redact(str(exc)).split())
    else:
        reason = " ".join(redact(f"{job.path}: {stage}: {type(exc).__name__}: {exc}").split())
        if not stages.is_transient(exc):
            log.error("job %d: internal error\n%s", job.id, redact(traceback.format_exc()))
    if stages.is_transient(exc) and job.attempts < config.max_attempts:
        delay = min(config.backoff * 2 ** (job.attempts - 1), config.backoff_max)
        queue.retry(job, reason, delay)
        log.warning("job %d: %s (retry %d in %.0f s)", job.id, reason, job.attempts, delay)
    elif stage == "results":
        queue.fail(job, reason)
        log.error("job %d: failed: %s", job.id, reason)
    else:                         # the results stage keeps what was made, then fails it
        queue.advance(job, "results", job.products, job.notes, reason)
        log.error("job %d: %s failed: %s", job.id, stage, reason)


def run_manager(config: ServiceConfig, once: bool = False) -> None:
    """The FITS manager: scan the inbox every ``poll`` seconds until SIGTERM."""
    from .inbox import InboxWatcher
    sig = _Signals()
    queue = JobQueue(config.db_url)
    watcher = InboxWatcher(config.inbox, queue, default_oname=config.default_oname,
                           settle=config.settle, give_up=config.give_up)
    parent = os.getppid()
    while not sig.stopping and os.getppid() == parent:
        try:
            watcher.scan()
        except Exception as exc:    # e.g. the inbox is briefly unmounted: keep watching
            log.warning("inbox scan failed: %s", redact(str(exc)))
        if once:
            break
        time.sleep(config.poll)
    queue.dispose()
