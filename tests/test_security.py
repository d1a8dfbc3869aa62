"""Secrets never reach logs, outputs or error messages; output names stay inside --out."""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest
from astropy.io import fits
from rich.console import Console

from bhcore import batch
from bhcore.batch import print_summary, run_batch
from bhcore.errors import PhotometryError
from bhcore.registry import Registry
from bhcore.runner import DEMO_ONAME, safe_stem
from bhcore.secrets import RedactingFilter, install, redact, secret_values
from bhcore.service import JobQueue, default_url
from bhcore.service.inbox import InboxWatcher
from bhcore.testing import make_night

TOKEN = "bhtom-7c1e5a9d2f4b8e6a"
API_KEY = "nova-k3y-0a9b8c7d6e5f"
SECRETS = {"BHTOM_TOKEN": TOKEN, "ASTROMETRY_NET_API_KEY": API_KEY,
           "BHCORE_NOVA_API_KEY": API_KEY}
OFFLINE = ["--set", "offline=true"]


@pytest.fixture
def secrets(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def leaked(*texts) -> bool:
    return any(s in t for t in texts for s in (TOKEN, API_KEY))


def grep_tree(folder: Path) -> list[Path]:
    """Files under ``folder`` whose bytes hold a secret."""
    return [p for p in folder.rglob("*") if p.is_file()
            and any(s.encode() in p.read_bytes() for s in (TOKEN, API_KEY))]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    return make_night(out_dir=folder, n_frames=2, shape=(64, 64), n_stars=30, seed=51).paths


def nosolve_obs():
    registry = Registry()
    registry.ensure_builtin()
    obs = registry.get(DEMO_ONAME)
    return dataclasses.replace(obs, backends=MappingProxyType(
        {**obs.backends, "astrometry": ("astrometry_absent",)}))


# --- redaction ------------------------------------------------------------------------------
def test_redact_masks_secret_values_and_secret_looking_pairs(secrets):
    assert set(secret_values()) >= {TOKEN, API_KEY}
    text = redact(f"login failed for key {API_KEY} (token {TOKEN})")
    assert not leaked(text) and text.count("***") == 2
    for raw in ("GET /api/login?apikey=abc123secret&x=1", "Authorization: Token abcdef123456",
                '{"password": "hunter22"}', "postgresql://bh:s3cretpw@db.example/bh"):
        masked = redact(raw)
        assert "***" in masked and not any(s in masked for s in
                                           ("abc123secret", "abcdef123456", "hunter22",
                                            "s3cretpw")), masked


def test_the_logging_filter_redacts_messages_arguments_and_tracebacks(secrets):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("bhcore.test_security")
    logger.addHandler(handler)
    logger.propagate = False
    install(logger)
    install(logger)                                    # idempotent
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    try:
        logger.warning("uploading with %s", TOKEN)
        try:
            raise RuntimeError(f"remote refused key {API_KEY}")
        except RuntimeError:
            logger.exception("upload failed")
    finally:
        logger.removeHandler(handler)
    assert "***" in stream.getvalue() and not leaked(stream.getvalue())


def test_errors_carrying_a_secret_are_redacted_everywhere(secrets, frames, tmp_path,
                                                          monkeypatch):
    def failing(path, obs, out_dir, **kw):
        folder = Path(out_dir) / safe_stem(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{safe_stem(path)}_std.fits").write_bytes(Path(path).read_bytes())
        logging.getLogger("bhcore.remote").warning("retrying with apikey=%s", API_KEY)
        raise PhotometryError(f"remote service refused token {TOKEN}", path=path)
    monkeypatch.setattr(batch, "process_frame", failing)
    summary = run_batch(frames, nosolve_obs(), tmp_path / "out", workers=0,
                        overrides={"offline": True})
    assert len(summary.failed) == len(frames)
    out, err = io.StringIO(), io.StringIO()
    print_summary(summary, Console(file=out, width=300), Console(file=err, width=300))
    assert "***" in err.getvalue()
    assert not leaked(out.getvalue(), err.getvalue(), repr(summary))
    assert grep_tree(tmp_path / "out") == []           # failed manifests are redacted too


def test_job_reasons_are_stored_redacted(secrets, tmp_path):
    queue = JobQueue(default_url(tmp_path / "out"))
    queue.create()
    queue.register("/in/a.fits", "h", 1, 1, None, "a")
    job = queue.claim("astrometry", "w", 30)
    queue.retry(job, f"upload refused for {TOKEN}", 0)
    [row] = queue.jobs()
    queue.dispose()
    assert "***" in row.reason and not leaked(row.reason)
    assert grep_tree(tmp_path / "out") == []


def test_no_secret_in_any_output_of_run_and_serve(secrets, frames, tmp_path):
    env = dict(os.environ)
    run = subprocess.run([sys.executable, "-m", "bhcore", "-v", "run", *map(str, frames),
                          "--observatory", DEMO_ONAME, "--out", str(tmp_path / "run"),
                          "-j", "2", *OFFLINE], capture_output=True, text=True, env=env,
                         stdin=subprocess.DEVNULL)
    assert "frame(s) done" in run.stdout, run.stderr
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for frame in frames:
        shutil.copy(frame, inbox / frame.name)
    serve = subprocess.run([sys.executable, "-m", "bhcore", "-v", "serve", "--inbox",
                            str(inbox), "--out", str(tmp_path / "svc"), "--observatory",
                            DEMO_ONAME, "--settle", "0.2", "--poll", "0.1", "--until-idle",
                            "1", *OFFLINE], capture_output=True, text=True, env=env,
                           stdin=subprocess.DEVNULL, timeout=120)
    assert serve.returncode == 0 and "registered as job" in serve.stderr, serve.stderr
    status = subprocess.run([sys.executable, "-m", "bhcore", "status", "--out",
                             str(tmp_path / "svc"), "--json"], capture_output=True, text=True,
                            env=env, stdin=subprocess.DEVNULL)
    assert status.returncode == 0
    assert not leaked(run.stdout, run.stderr, serve.stdout, serve.stderr, status.stdout,
                      status.stderr)
    assert grep_tree(tmp_path / "run") == grep_tree(tmp_path / "svc") == []


# --- names from files and headers stay inside the output folder -----------------------------
HOSTILE = ["..fits", "-rf.fits", "a\\..\\..\\b.fits", "..\\..\\etc.fits", " .fits",
           "$(reboot).fits", "x" * 240 + ".fits"]


@pytest.mark.parametrize("name", HOSTILE + ["../../evil.fits", "/etc/passwd.fits"])
def test_a_stem_never_leaves_the_output_folder(name, tmp_path):
    stem = safe_stem(name)
    assert "/" not in stem and not stem.startswith((".", "-")) and stem
    assert (tmp_path / stem).resolve().parent == tmp_path.resolve()


def test_hostile_file_names_and_header_values_write_only_inside_out(frames, tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    header, data = fits.getheader(frames[0]), fits.getdata(frames[0])
    header["FILENAME"] = "../../../escaped.fits"
    header["OBJECT"] = "../../escaped"
    files = []
    for name in HOSTILE:
        files.append(inbox / name)
        fits.PrimaryHDU(data, header).writeto(files[-1])
    out = tmp_path / "nested" / "out"
    summary = run_batch(files, nosolve_obs(), out, workers=0, overrides={"offline": True})
    assert summary.done + len(summary.failed) == len(files)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and inbox not in p.parents]
    assert written and all(out.resolve() in p.resolve().parents for p in written), written
    assert not list(tmp_path.rglob("escaped*"))
    queue = JobQueue(default_url(tmp_path / "svc"))
    queue.create()
    watcher = InboxWatcher(inbox, queue, settle=0.0, give_up=0.0, clock=lambda: 0.0)
    watcher.scan()
    watcher.scan()
    names = [row.out_name for row in queue.jobs()]
    queue.dispose()
    assert len(names) == len(set(names)) >= 1
    for name in names:
        assert (tmp_path / "svc" / name).resolve().parent == (tmp_path / "svc").resolve()
