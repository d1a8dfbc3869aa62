"""``bhcore serve``: start the service's processes, keep them alive, stop them cleanly.

Why a supervisor: each role (one FITS manager, N astrometry and N photometry
workers, one results process) is a separate process so that a crash or a kill
of one loses at most the stage it was running. The supervisor restarts a child
that died and frees its jobs at once; SIGTERM (or Ctrl-C) is passed on to every
child, which gives its job back and exits; children die with the supervisor
(PR_SET_PDEATHSIG), so a ``kill -9`` of it leaves nothing running, and a restart
frees the jobs of processes that no longer exist.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

from ..errors import ConfigError
from ..executors import die_with_parent
from .queue import JobQueue, safe_url
from .worker import ServiceConfig, run_manager, run_stage_worker

log = logging.getLogger("bhcore.service")


def roles(config: ServiceConfig) -> list[str]:
    return (["manager"] + ["astrometry"] * config.astrometry_workers
            + ["photometry"] * config.photometry_workers + ["results"])


def _child(role: str, config: ServiceConfig) -> None:
    die_with_parent()
    from ..secrets import install
    install()
    if role == "manager":
        run_manager(config)
    else:
        run_stage_worker(role, config)


def prepare(config: ServiceConfig) -> JobQueue:
    """Check the folders, create the tables, free jobs of dead local processes."""
    inbox, out = Path(config.inbox), Path(config.out)
    if not inbox.is_dir():
        raise ConfigError(f"inbox {inbox} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if inbox.resolve() == out.resolve() or inbox.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} must not be inside the inbox {inbox}")
    if config.astrometry_workers < 1 or config.photometry_workers < 1:
        raise ConfigError("--astrometry and --photometry need at least 1 worker each")
    queue = JobQueue(config.db_url, pooled=False)
    try:
        queue.create()
    except Exception as exc:
        raise ConfigError(f"cannot open the job database {safe_url(config.db_url)}: "
                          f"{str(exc).splitlines()[0]}") from None
    freed = queue.release_dead_local()
    if freed:
        log.info("requeued %d job(s) of processes that no longer exist", freed)
    return queue


def serve(config: ServiceConfig, *, until_idle: float | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit code (0 = clean)."""
    queue = prepare(config)
    queue.dispose()                          # no open connection across fork
    context = multiprocessing.get_context("fork")
    slots: list[tuple[str, object]] = [(role, None) for role in roles(config)]
    stopping = {"flag": False}

    def stop(*_):
        stopping["flag"] = True
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    host = socket.gethostname()
    log.info("serving %s -> %s (jobs in %s; %s)", config.inbox, config.out,
             safe_url(config.db_url), ", ".join(roles(config)))
    idle_since = None
    started = [0.0] * len(slots)            # when each slot's process started
    not_before = [0.0] * len(slots)         # crash-loop brake
    try:
        while not stopping["flag"]:
            now = time.monotonic()
            for i, (role, proc) in enumerate(slots):
                if proc is not None and proc.is_alive() or now < not_before[i]:
                    continue
                if proc is not None:
                    freed = queue.release_owner(f"{host}:{proc.pid}:{role}")
                    log.warning("%s worker (pid %s) exited with %s; restarted%s", role,
                                proc.pid, proc.exitcode,
                                f", {freed} job(s) requeued" if freed else "")
                    slots[i] = (role, None)
                    if now - started[i] < 5.0:      # died young: do not spin
                        not_before[i] = now + 2.0
                        continue
                proc = context.Process(target=_child, args=(role, config),
                                       name=f"bhcore-{role}", daemon=False)
                proc.start()
                slots[i], started[i] = (role, proc), now
            if until_idle is not None:
                idle_since = _idle(queue, idle_since)
                if idle_since is not None and time.monotonic() - idle_since > until_idle:
                    break
            time.sleep(0.25)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_children([p for _r, p in slots if p is not None], grace=config.lease)
        queue.dispose()
    return 0


def _idle(queue: JobQueue, since):
    counts = queue.counts()
    busy = sum(n for (_stage, state), n in counts.items() if state in ("queued", "running"))
    if busy or not counts:
        return None
    return since if since is not None else time.monotonic()


def _stop_children(procs, grace: float) -> None:
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + max(5.0, min(grace, 30.0))
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
