"""Where frames run: in this process, a local process pool, or a Dask cluster.

Why one small interface: the batch runner submits the same picklable stage
function whatever runs it, so a night processed on a laptop, on the 2 cores of a
CI machine or on a SLURM cluster gives the same products. Every executor has
``submit(fn, *args, **kwargs) -> future``, ``as_completed(futures)``, ``workers``
and ``close()`` (also as a context manager).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import select
import signal
import sys
import threading
import time

from .errors import ConfigError

KINDS = ("local", "dask", "inline")


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies.

    Why: a run or service killed with ``kill -9`` must not leave workers that go
    on writing into the output folder while a restarted run works there too.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        pass


def exit_with(pid: int) -> None:
    """Exit this process as soon as process ``pid`` ends (a watching thread).

    Why not PR_SET_PDEATHSIG alone: pool workers are children of the forkserver,
    which outlives the run as long as its children live, so a ``kill -9`` of the
    run would leave them working; they watch the run itself instead.
    """
    def watch():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            os._exit(1)
        except (AttributeError, OSError):   # no pidfd (old kernel, not Linux): poll
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    os._exit(1)
                except PermissionError:
                    pass
                time.sleep(0.5)
        select.select([fd], [], [])         # readable once the process has ended
        os._exit(1)
    threading.Thread(target=watch, name="bhcore-exit-with-run", daemon=True).start()


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")


def _local_worker_init(run_pid: int, environ: dict, threads: int) -> None:
    die_with_parent()
    exit_with(run_pid)
    # The forkserver keeps the environment it started with; take the run's own.
    os.environ.clear()
    os.environ.update(environ)
    limit_threads(threads)


def limit_threads(threads: int = 1) -> None:
    """At most ``threads`` BLAS/OpenMP/numba threads in this process (unless the user chose).

    Why: N workers each running numpy or numba with one thread per core
    oversubscribe the machine, and the idle threads spin: two workers on two cores
    then ran slower than one. The arrays of one frame are small, so even a single
    worker is faster with one thread (measured: 168 against 154 frames/min).
    A variable the user set is kept.
    """
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(threads))        # engines and late imports
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=_int(os.environ["OPENBLAS_NUM_THREADS"], threads))
    except ImportError:  # pragma: no cover - it is a dependency
        pass
    numba = sys.modules.get("numba")                     # already imported: its pool
    if numba is not None:
        try:
            numba.set_num_threads(min(_int(os.environ["NUMBA_NUM_THREADS"], threads),
                                      numba.config.NUMBA_NUM_THREADS))
        except (AttributeError, ValueError):
            pass


def _int(text, default: int) -> int:
    try:
        return max(1, int(text))
    except (TypeError, ValueError):
        return default


class InlineExecutor:
    """Runs tasks one by one in this process, as they are awaited (``workers=0``)."""

    name = "inline"
    workers = 1

    def __init__(self):
        self._pending: dict = {}

    def submit(self, fn, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()
        self._pending[future] = (fn, args, kwargs)
        return future

    def as_completed(self, futures):
        for future in list(futures):
            fn, args, kwargs = self._pending.pop(future, (None, (), {}))
            if fn is not None and future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except Exception as exc:       # delivered like a pool would deliver it
                    future.set_exception(exc)
            yield future

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(InlineExecutor):
    """A pool of worker processes on this machine (forkserver: fast and thread-safe)."""

    name = "local"

    def as_completed(self, futures):
        return cf.as_completed(futures)

    def __init__(self, workers: int | None = None, preload=("bhcore.batch",)):
        super().__init__()
        self.workers = workers or default_workers()
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() \
            else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(list(preload))
        self._pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=context,
                                            initializer=_local_worker_init,
                                            initargs=(os.getpid(), dict(os.environ), 1))

    def submit(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Drop queued tasks and return at once (Ctrl-C): running frames are cut."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class DaskExecutor(InlineExecutor):
    """A Dask distributed client: an existing scheduler, or a LocalCluster on loopback.

    Without ``scheduler`` a LocalCluster of ``workers`` single-threaded worker
    processes is started on 127.0.0.1 (no dashboard), and closed with the executor.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int | None = None,
                 timeout: str = "20s"):
        super().__init__()
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise ConfigError(f"--executor dask needs dask.distributed: {exc}") from None
        self._cluster = None
        try:
            if scheduler:
                self._client = Client(scheduler, timeout=timeout)
            else:
                self._cluster = LocalCluster(
                    n_workers=workers or default_workers(), threads_per_worker=1,
                    processes=True, host="127.0.0.1", dashboard_address=None)
                self._client = Client(self._cluster)
        except (OSError, TimeoutError) as exc:
            self._close_cluster()
            raise ConfigError(f"cannot reach the Dask scheduler {scheduler or 'LocalCluster'}"
                              f": {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        self.scheduler = self._client.scheduler.address
        self._client.register_plugin(_limit_threads_plugin(), name="bhcore-limit-threads")

    @property
    def workers(self) -> int:
        return max(1, len(self._client.scheduler_info().get("workers", {})))

    def submit(self, fn, *args, **kwargs):
        return self._client.submit(fn, *args, pure=False, **kwargs)

    def as_completed(self, futures):
        from distributed import as_completed
        return as_completed(list(futures))

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            self._close_cluster()

    def abort(self) -> None:
        self.close()

    def _close_cluster(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _limit_threads_plugin():
    """A Dask worker plugin running :func:`limit_threads` in every worker, also later ones."""
    from distributed import WorkerPlugin

    class LimitThreads(WorkerPlugin):
        def setup(self, worker):
            limit_threads(1)
    return LimitThreads()


def make_executor(kind: str = "local", workers: int | None = None,
                  scheduler: str | None = None):
    """The executor named by ``--executor`` (``workers=0`` runs inline)."""
    if scheduler and kind != "dask":
        raise ConfigError("--scheduler needs --executor dask")
    if kind == "inline" or (kind == "local" and workers == 0):
        return InlineExecutor()
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "dask":
        return DaskExecutor(scheduler, workers)
    raise ConfigError(f"unknown executor '{kind}' (choose {', '.join(KINDS[:2])})")
