"""The always-on service: queue leases, partial uploads, clean stop, SIGKILL at random.

Frames come from the simulated demo camera (``inbox/<ONAME>/`` names it) and a
variant whose astrometry backend is never installed, so frames go through every
stage that exists; checks read the job table and the manifests.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from astropy.io import fits
from sqlalchemy.exc import OperationalError

from bhcore.batch import audit_products
from bhcore.registry import Registry
from bhcore.registry.db import builtin_dir
from bhcore.runner import DEMO_ONAME
from bhcore.service import JobQueue, ServiceConfig, default_url
from bhcore.service.inbox import InboxWatcher, fits_complete
from bhcore.service.stages import is_transient
from bhcore.service.worker import run_stage_worker
from bhcore.errors import ExternalToolError, HeaderError, InputError, MissingEngine
from bhcore.testing import make_night

NOSOLVE = "BHCORE-SIM_NoSolve"
FAST = ["--settle", "0.3", "--poll", "0.1", "--lease", "2", "--give-up", "2",
        "--set", "offline=true"]


def register_nosolve() -> None:
    """The demo camera with an astrometry backend that is never installed."""
    home = Path(os.environ["BHCORE_HOME"])
    text = (builtin_dir() / f"{DEMO_ONAME}_obs.info").read_text().replace(DEMO_ONAME, NOSOLVE)
    text = text.replace("# PIPELINE (bhcore)\n", "# PIPELINE (bhcore)\n  Astrometry backends : - "
                        ": BH_ASTROM : str : astrometry_absent : test camera : F\n")
    (home / f"{NOSOLVE}_obs.info").write_text(text)
    registry = Registry()
    registry.ensure_builtin()
    registry.add_obsinfo(home / f"{NOSOLVE}_obs.info")


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    return make_night(out_dir=folder, n_frames=4, shape=(64, 64), n_stars=30, seed=21).paths


@pytest.fixture
def queue(tmp_path):
    q = JobQueue(default_url(tmp_path / "out"))
    q.create()
    yield q
    q.dispose()


# --- the queue --------------------------------------------------------------------------
def test_claims_are_exclusive_and_fenced_by_their_lease(queue):
    job_id = queue.register("/in/a.fits", "h1", 10, 1, None, "a")
    assert queue.register("/in/copy.fits", "h1", 10, 2, None, "copy") is None   # same content
    assert queue.register("/in/b/a.fits", "h2", 10, 3, None, "a") is not None   # name taken
    assert {r.out_name for r in queue.jobs()} == {"a", "a_h2"}
    first = queue.claim("astrometry", "w1", lease=0.3)
    assert first.id == job_id and first.attempts == 1
    second = queue.claim("astrometry", "w2", lease=30)
    assert second.id != job_id                                   # the other job
    assert queue.claim("astrometry", "w3", lease=30) is None     # both held
    time.sleep(0.4)
    taken = queue.claim("astrometry", "w3", lease=30)            # the lease ran out
    assert taken.id == job_id and taken.attempts == 2
    assert not queue.heartbeat(first, 30)                        # the old holder lost it
    assert not queue.advance(first, "photometry", {"header": "x"}, [])
    assert queue.heartbeat(taken, 30)
    assert queue.advance(taken, "photometry", {"header": "a_std.fits"}, ["note"])
    job = queue.claim("photometry", "w4", lease=30)
    assert (job.products, job.notes, job.attempts) == ({"header": "a_std.fits"}, ["note"], 1)
    assert queue.advance(job, "results", job.products, job.notes)
    job = queue.claim("results", "w5", lease=30)
    assert queue.finish(job, "done", "/out/a/a.manifest.json")
    assert not queue.finish(job, "done", "/out/a/a.manifest.json")   # never twice
    [row] = queue.results()
    assert row.job_id == job_id and row.status == "done"


def test_retries_back_off_and_dead_owners_are_freed(queue):
    queue.register("/in/a.fits", "h1", 10, 1, None, "a")
    job = queue.claim("astrometry", "w1", lease=30)
    assert queue.retry(job, "engine crashed", delay=0.4)
    assert queue.claim("astrometry", "w1", lease=30) is None     # not due yet
    time.sleep(0.5)
    job = queue.claim("astrometry", "w1", lease=30)
    assert job.reason == "engine crashed" and job.attempts == 2
    dead = subprocess.Popen(["true"])
    dead.wait()
    queue.release_owner("w1")
    import socket
    job = queue.claim("astrometry", f"{socket.gethostname()}:{dead.pid}:astrometry", 300)
    assert queue.release_dead_local() == 1
    assert queue.claim("astrometry", "w2", lease=30).id == job.id


def test_transient_and_permanent_failures_are_told_apart():
    assert is_transient(ExternalToolError("scamp crashed", returncode=-11))
    assert is_transient(OSError("NFS went away"))
    assert not is_transient(MissingEngine("scamp is not installed"))
    assert not is_transient(InputError("file is empty"))
    assert not is_transient(HeaderError("DATE-OBS is missing"))
    assert not is_transient(ValueError("a bug"))


def test_a_job_whose_worker_keeps_dying_is_set_aside(tmp_path, queue, monkeypatch):
    queue.register("/in/a.fits", "h1", 10, 1, None, "a")
    for _ in range(2):                                           # two workers died on it
        assert queue.claim("astrometry", "dead", lease=0.0)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    config = ServiceConfig(inbox=str(tmp_path), out=str(tmp_path / "out"),
                           db_url=queue.url, max_attempts=2, poll=0.01)
    try:
        run_stage_worker("astrometry", config, once=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    [job] = queue.jobs()
    assert job.state == "failed" and "gave up after 2 attempts" in job.reason


# --- partial uploads ----------------------------------------------------------------------
def test_only_complete_fits_files_count_as_complete(frames, tmp_path):
    whole = frames[0].read_bytes()
    assert fits_complete(frames[0])
    for cut in (100, 2880, 2880 * 2 + 7, len(whole) - 2880, len(whole) - 1):
        part = tmp_path / f"cut{cut}.fits"
        part.write_bytes(whole[:cut])
        assert not fits_complete(part), cut
    ext = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(fits.getdata(frames[0]))]).writeto(ext)
    assert fits_complete(ext)
    gz = tmp_path / "f.fits.gz"
    gz.write_bytes(gzip.compress(whole))
    assert fits_complete(gz)
    gz.write_bytes(gzip.compress(whole)[:-100])
    assert not fits_complete(gz)
    text = tmp_path / "text.fits"
    text.write_text("not FITS\n" * 400)
    assert not fits_complete(text)


def test_a_frame_written_slowly_is_taken_only_when_complete(frames, tmp_path, queue):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    now = [0.0]
    watcher = InboxWatcher(inbox, queue, default_oname=DEMO_ONAME, settle=2.0, give_up=30,
                           clock=lambda: now[0])
    whole = frames[0].read_bytes()
    target = inbox / "slow.fits"
    for cut in (2880, len(whole) // 2, len(whole) - 2880):      # an upload, in pieces
        target.write_bytes(whole[:cut])
        for _ in range(3):
            now[0] += 5.0                                        # stable for long
            assert watcher.scan() == []                          # but not a whole FITS
    target.write_bytes(whole)
    assert watcher.scan() == []                                  # changed: wait again
    now[0] += 1.0
    assert watcher.scan() == []                                  # not settled yet
    now[0] += 1.5
    [job_id] = watcher.scan()
    [row] = queue.jobs()
    assert row.content_hash == hashlib.sha256(whole).hexdigest() and row.oname == DEMO_ONAME
    part = inbox / "renamed.fits.part"                            # the .part convention
    part.write_bytes(frames[1].read_bytes())
    now[0] += 10
    assert watcher.scan() == []
    part.rename(inbox / "renamed.fits")
    watcher.scan()
    now[0] += 2.5
    assert len(watcher.scan()) == 1
    junk = inbox / "junk.fits"                                    # never a whole FITS:
    junk.write_text("not FITS\n")                                 # taken after give_up,
    watcher.scan()                                                # so it fails visibly
    now[0] += 10
    assert watcher.scan() == []
    now[0] += 25
    assert len(watcher.scan()) == 1


# --- the service as a process ----------------------------------------------------------------
def group_pids(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def wait_for(predicate, timeout=90.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Service:
    """``bhcore serve`` in its own process group, always cleaned up."""

    def __init__(self, inbox, out, *extra):
        self.args = [sys.executable, "-m", "bhcore", "serve", "--inbox", str(inbox),
                     "--out", str(out), "--observatory", NOSOLVE, *FAST, *extra]
        self.log = open(Path(out).parent / "service.log", "ab")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def kill_all(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        wait_for(lambda: not group_pids(self.proc.pid), 20, "no process left")

    def stop(self) -> int:
        """SIGTERM, as systemd would: every process exits by itself, cleanly."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        wait_for(lambda: not group_pids(self.proc.pid), 20, "children to exit")
        return code


@pytest.fixture
def service_factory():
    made = []

    def make(inbox, out, *extra):
        made.append(Service(inbox, out, *extra))
        return made[-1]
    yield make
    for service in made:
        service.kill_all()
        service.log.close()


def settled(out: Path, n_jobs: int) -> bool:
    queue = JobQueue(default_url(out), pooled=False)
    try:
        rows = queue.jobs()
    except OperationalError:             # the service was killed before it made the table
        return False
    finally:
        queue.dispose()
    return len(rows) >= n_jobs and all(r.state in ("done", "failed") for r in rows)


def busy_pids(out: Path) -> list[int]:
    """Processes holding a job right now (owner ``host:pid:role``)."""
    try:
        queue = JobQueue(default_url(out), pooled=False)
        rows = queue.jobs("running")
        queue.dispose()
    except OperationalError:
        return []
    return [int(r.owner.split(":")[1]) for r in rows if r.owner]


def slow_copy(source: Path, target: Path, pieces: int = 4, pause: float = 0.4) -> None:
    data = source.read_bytes()
    with open(target, "wb") as fh:
        for i in range(pieces):
            fh.write(data[i * len(data) // pieces:(i + 1) * len(data) // pieces])
            fh.flush()
            time.sleep(pause)


def check_outputs(out: Path, inputs: dict[str, bytes]) -> list:
    """Every job finished exactly once, with a manifest and all its products."""
    queue = JobQueue(default_url(out), pooled=False)
    rows, results = queue.jobs(), queue.results()
    queue.dispose()
    assert len({r.content_hash for r in rows}) == len(rows)
    assert all(r.completions == 1 for r in rows), [(r.id, r.completions) for r in rows]
    assert {r.id for r in rows if r.state == "done"} <= {r.job_id for r in results}
    assert audit_products(out) == []
    for row in rows:
        assert row.state in ("done", "failed")
        manifest = out / row.out_name / f"{row.out_name}.manifest.json"
        if row.state == "done":
            data = json.loads(manifest.read_text())
            assert data["status"] == "done" and data["input"] == row.path
            assert all((manifest.parent / p).is_file() for p in data["products"].values())
        else:
            assert "\n" not in row.reason and row.path in row.reason
    if (out / "results.db").exists():                  # recorded once, by results only
        from bhcore.results.db import ResultsDB
        stems = [row.stem for row in ResultsDB(out).frames()]
        assert sorted(stems) == sorted(r.out_name for r in rows if r.state == "done" and (
            out / r.out_name / f"{r.out_name}_quality.json").exists())
    for path, content in inputs.items():                 # inputs are never touched
        assert Path(path).read_bytes() == content
    return rows


def test_service_processes_the_inbox_and_stops_cleanly(frames, tmp_path, service_factory):
    register_nosolve()
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    (inbox / NOSOLVE).mkdir(parents=True)
    (inbox / DEMO_ONAME).mkdir()
    service = service_factory(inbox, out)
    service.start()
    (inbox / NOSOLVE / frames[0].name).write_bytes(frames[0].read_bytes())
    (inbox / DEMO_ONAME / frames[1].name).write_bytes(frames[1].read_bytes())
    (inbox / "again.fits").write_bytes(frames[0].read_bytes())        # same content
    (inbox / "junk.fits").write_text("not a FITS file\n")
    slow_copy(frames[2], inbox / "slow upload.fits")
    inputs = {str(p): p.read_bytes() for p in inbox.rglob("*.fits")}
    wait_for(lambda: settled(out, 4), what="4 jobs to finish")
    status = subprocess.run([sys.executable, "-m", "bhcore", "status", "--out", str(out)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert status.returncode == 0 and "4 job(s)" in status.stdout, status.stderr
    assert f"{inbox / 'junk.fits'}: not a readable FITS file" in status.stdout
    assert service.stop() == 0
    rows = {Path(r.path).name: r for r in check_outputs(out, inputs)}
    assert set(rows) == {frames[0].name, frames[1].name, "junk.fits", "slow upload.fits"}
    assert rows[frames[0].name].state == rows["slow upload.fits"].state == "done"
    assert rows["junk.fits"].state == "failed" and not (out / "junk").exists()
    manifest = out / "slow_upload" / "slow_upload.manifest.json"
    assert json.loads(manifest.read_text())["status"] == "done"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_service_killed_at_random_moments_loses_and_duplicates_nothing(
        frames, tmp_path, service_factory, seed):
    register_nosolve()
    rng = random.Random(seed)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    service = service_factory(inbox, out)
    service.start()
    writer = threading.Thread(target=lambda: [
        slow_copy(f, inbox / f.name, pieces=rng.randint(1, 3), pause=rng.uniform(0, 0.3))
        for f in frames])
    writer.start()
    for _ in range(3):                                   # kill -9 a random process, 3 times
        time.sleep(rng.uniform(0.3, 1.5))
        victims = group_pids(service.proc.pid)
        busy = busy_pids(out) if rng.random() < 0.6 else []
        if not busy and victims and rng.random() < 0.6:   # rather one in mid-stage
            wait_for(lambda: busy_pids(out) or not group_pids(service.proc.pid), 10,
                     "a busy worker")
            busy = busy_pids(out)
        pool = [p for p in busy if p in victims] or victims
        victim = rng.choice(pool) if pool else service.proc.pid
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if victim == service.proc.pid:                   # the supervisor: restart it
            service.proc.wait(10)
            wait_for(lambda: not group_pids(service.proc.pid), 20, "orphans to die")
            service.start()
    writer.join()
    inputs = {str(p): p.read_bytes() for p in inbox.glob("*.fits")}
    wait_for(lambda: settled(out, len(frames)), 120, "every frame to finish")
    assert service.stop() == 0
    rows = check_outputs(out, inputs)
    assert len(rows) == len(frames) and all(r.state == "done" for r in rows)
