"""The always-on service: inbox watcher, job queue, stage workers, status.

``bhcore serve --inbox DIR --out DIR`` runs :func:`supervisor.serve`; ``bhcore
status`` reads the queue. The queue is a SQLAlchemy database (SQLite in WAL mode
beside the products by default, or any URL such as PostgreSQL).
"""
from __future__ import annotations

import time

from .queue import JobQueue, default_url
from .worker import ServiceConfig

__all__ = ["JobQueue", "ServiceConfig", "default_url", "serve", "status"]


def serve(config: ServiceConfig, **kwargs) -> int:
    from .supervisor import serve as _serve
    return _serve(config, **kwargs)


def status(url: str, limit: int = 20) -> dict:
    """The queue in numbers plus the failed and running jobs (newest ``limit``)."""
    queue = JobQueue(url, pooled=False)
    try:
        counts = queue.counts()
        failed = queue.jobs("failed", limit)
        running = queue.jobs("running", limit)
        n_results = len(queue.results())
    finally:
        queue.dispose()
    return {
        "counts": {f"{stage}/{state}": n for (stage, state), n in sorted(counts.items())},
        "by_state": {state: sum(n for (_s, st), n in counts.items() if st == state)
                     for state in ("queued", "running", "done", "failed")},
        "results": n_results,
        "failed": [{"id": r.id, "file": r.path, "stage": r.stage, "reason": r.reason}
                   for r in failed],
        "running": [{"id": r.id, "file": r.path, "stage": r.stage, "owner": r.owner,
                     "lease_s": round(r.lease_until - time.time(), 1),
                     "attempt": r.attempts} for r in running],
    }
