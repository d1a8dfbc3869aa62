"""The service's stage functions: process_frame cut at its stage boundaries.

Why separate functions: astrometry and photometry need different numbers of
workers, so a frame moves between them as a job. Each function takes the job's
facts (input path, content hash, output folder) and what earlier stages made,
writes its products atomically and returns what it made: re-running one after a
crash rewrites the same files, so they are idempotent, and they hold no database
handle, so any process can run them. The steps mirror
``bhcore.runner.process_frame`` and reuse its helpers; the results database is
written by the one results process only (``record_products``).
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..batch import products_in
from ..errors import BhError, ExternalToolError, InputError, MissingEngine
from ..frame import read_frame
from ..runner import header_and_astrometry, photometry_and_calibration, write_manifest


@dataclass
class Outcome:
    """What a stage made; ``reason`` set means later stages are skipped (failed)."""

    products: dict = field(default_factory=dict)     # kind -> file name in the folder
    notes: list = field(default_factory=list)
    reason: str = ""


def content_hash(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: I/O hiccups and external tools that fell over; not bad data."""
    if isinstance(exc, (InputError, MissingEngine)):
        return False
    if isinstance(exc, ExternalToolError):
        return True
    if isinstance(exc, BhError):
        return False
    return isinstance(exc, (OSError, TimeoutError))


def folder_of(out_dir, job) -> Path:
    return Path(out_dir) / job.out_name


def _names(products: dict, folder: Path) -> dict:
    return {k: str(Path(v).relative_to(folder)) if Path(v).is_relative_to(folder) else str(v)
            for k, v in products.items()}


def astrometry_stage(job, obs, out_dir, overrides=None) -> Outcome:
    """Header, then the astrometry fallback chain; starts the job's folder afresh."""
    folder, name = folder_of(out_dir, job), job.out_name
    shutil.rmtree(folder, ignore_errors=True)      # a killed attempt may have left files
    if content_hash(job.path) != job.content_hash:
        raise InputError("the file changed after it was registered (the new content is "
                         "a job of its own)", path=job.path)
    _frame, made, notes, failure = header_and_astrometry(job.path, obs, folder, name,
                                                         overrides)
    out = Outcome(notes=notes, reason=str(failure) if failure else "")
    out.products = _names(made, folder)
    return out


def photometry_stage(job, obs, out_dir, overrides=None, backend=None) -> Outcome:
    """Measure the solved (or standardised) frame, then calibrate it (no database yet)."""
    folder, name = folder_of(out_dir, job), job.out_name
    made = {k: folder / v for k, v in job.products.items()}
    notes = list(job.notes)
    for stray in folder.glob(".*.part"):
        stray.unlink(missing_ok=True)
    source = made.get("astrometry") or made["header"]
    frame = read_frame(source, obs=obs).replace(path=Path(job.path))
    made_now, more = photometry_and_calibration(frame, obs, folder, name,
                                                {**(overrides or {}), "record": False},
                                                backend)
    made.update(made_now)
    notes.extend(more)
    return Outcome(_names(made, folder), notes)


def results_stage(job, obs, out_dir, overrides=None) -> tuple[str, str]:
    """Record the frame in the results database, then write its manifest, last."""
    folder, name = folder_of(out_dir, job), job.out_name
    notes = list(job.notes)
    for stray in folder.glob(".*.part"):
        stray.unlink(missing_ok=True)
    if job.reason:                         # failed earlier: keep what was made, if any
        products = products_in(folder, name)
        if not products:
            shutil.rmtree(folder, ignore_errors=True)
            return "failed", ""
        if not any(n.startswith("astrometry failed") for n in notes):
            notes.append(f"failed: {job.reason}")
        return "failed", str(write_manifest(folder, name, job.path, products, notes,
                                            status="failed"))
    products = {k: folder / v for k, v in job.products.items()}
    overrides = overrides or {}
    if (folder / f"{name}_quality.json").is_file() and overrides.get("record", True):
        from ..results.stage import record_products
        try:
            record_products(folder, overrides.get("results_url") or Path(out_dir))
        except BhError as exc:
            notes.append(f"results database not updated: {exc}")
    return "done", str(write_manifest(folder, name, job.path, products, notes,
                                      status="done"))
