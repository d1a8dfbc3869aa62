"""Run many frames in parallel, resumably, with per-stage progress.

Why this shape: a night is hundreds of independent frames, so the unit of work is
``process_frame`` on one frame, run by any executor (local process pool, Dask).
Crash safety comes from the products, not from the runner: products are written
atomically and the manifest last, so a frame is complete exactly when its manifest
says ``done``. A run killed at any moment and started again with ``--resume``
skips complete frames and redoes the others from a cleared folder, which leaves
no duplicate and no missing product.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import BhError
from .runner import RunSummary, manifest_path, process_frame, safe_stem, write_manifest
from .secrets import redact

log = logging.getLogger(__name__)
STAGES = ("header", "astrometry", "photometry", "calibration")
_KNOWN_SUFFIXES = {"_std.fits": "header", "_wcs.fits": "astrometry",
                   "_astrom_matches.ecsv": "astrometry_matches", "_phot.ecsv": "photometry",
                   "_residual.fits": "residual"}


@dataclass
class FrameResult:
    """What one frame came to: done, failed (one-line reason) or skipped (complete)."""

    path: str
    status: str
    reason: str = ""
    products: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    elapsed: float = 0.0
    bug: str = ""                      # traceback of an unexpected (non-BhError) failure


@dataclass
class BatchSummary(RunSummary):
    skipped: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    bugs: list = field(default_factory=list)
    stage_counts: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    elapsed: float = 0.0
    workers: int = 1
    executor: str = "inline"

    @property
    def frames_per_minute(self) -> float:
        n = self.done + len(self.failed)
        return 60.0 * n / self.elapsed if self.elapsed > 0 else 0.0


# --- observatory settings across processes ----------------------------------------------
@dataclass(frozen=True)
class _PackedObs:
    cls: type
    values: dict
    proxies: tuple


def pack_obs(obs):
    """A picklable stand-in for settings holding read-only mappings (mappingproxy)."""
    if obs is None or not dataclasses.is_dataclass(obs):
        return obs
    values, proxies = {}, []
    for f in dataclasses.fields(obs):
        value = getattr(obs, f.name)
        if isinstance(value, MappingProxyType):
            value, _ = dict(value), proxies.append(f.name)
        values[f.name] = value
    return _PackedObs(type(obs), values, tuple(proxies))


def unpack_obs(packed):
    if not isinstance(packed, _PackedObs):
        return packed
    values = {k: MappingProxyType(v) if k in packed.proxies else v
              for k, v in packed.values.items()}
    return packed.cls(**values)


# --- one frame ------------------------------------------------------------------------
def read_manifest(out_dir, path) -> dict | None:
    try:
        return json.loads(manifest_path(out_dir, path).read_text())
    except (OSError, ValueError):
        return None


def _same_input(recorded: str, path: Path) -> bool:
    try:
        return Path(recorded) == path or os.path.samefile(recorded, path)
    except OSError:
        return False


def frame_is_complete(out_dir, path) -> bool:
    """True when the frame's manifest says done, for this input, with every product."""
    path = Path(path).absolute()
    manifest = read_manifest(out_dir, path)
    if not manifest or manifest.get("status") != "done":
        return False
    if not _same_input(manifest.get("input", ""), path):
        return False
    folder = manifest_path(out_dir, path).parent
    return all((folder / p).is_file() for p in manifest.get("products", {}).values())


class _WarningCollector(logging.Handler):
    """Collects this thread's warnings so a worker's warnings reach the run summary."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record):
        if record.thread == self.thread:
            self.lines.append(redact(record.getMessage()).splitlines()[0][:300])


def one_line(text: str) -> str:
    return " ".join(redact(text).split())


def run_one(path, obs, out_dir, *, photometry_backend=None, overrides=None,
            resume: bool = False) -> FrameResult:
    """Process one frame in whatever process runs it; never raises for a bad frame.

    The frame's folder is cleared first (a killed earlier attempt may have left
    products without a manifest), so what is there afterwards is exactly what
    this attempt made. A folder whose manifest belongs to another input is left
    alone and the frame fails instead.
    """
    start = time.perf_counter()
    path, out_dir = Path(path).absolute(), Path(out_dir)
    folder = manifest_path(out_dir, path).parent
    manifest = read_manifest(out_dir, path)
    if manifest and not _same_input(manifest.get("input", ""), path):
        return FrameResult(str(path), "failed", one_line(
            f"{path}: output folder {folder} already holds the products of "
            f"{manifest.get('input')}; rename one of them or use another --out"))
    if resume and frame_is_complete(out_dir, path):
        return FrameResult(str(path), "skipped", products=manifest.get("products", {}))
    shutil.rmtree(folder, ignore_errors=True)
    obs = unpack_obs(obs)
    summary, collector = RunSummary(), _WarningCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    result = FrameResult(str(path), "done")
    try:
        products = process_frame(path, obs, out_dir, photometry_backend=photometry_backend,
                                 overrides=overrides, summary=summary)
        result.products = {k: Path(v).name for k, v in products.items()}
    except BhError as exc:              # every reason names the frame it is about
        text = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        result.status, result.reason = "failed", one_line(text)
    except Exception as exc:    # a bug: reported with its traceback, the batch goes on
        result.status = "failed"
        result.reason = one_line(f"{path}: internal error ({type(exc).__name__}: {exc})")
        result.bug = redact(traceback.format_exc())
    finally:
        root.removeHandler(collector)
    prefix = f"{safe_stem(path)}: "
    result.notes = [one_line(n[len(prefix):] if n.startswith(prefix) else n)
                    for n in summary.stage_notes]
    result.warnings = collector.lines
    if result.status == "failed":
        result.products = _settle_failure(folder, path, result)
    result.elapsed = time.perf_counter() - start
    return result


def _settle_failure(folder: Path, path: Path, result: FrameResult) -> dict:
    """Leave a failed frame's folder consistent: a failed manifest, or nothing at all."""
    for stray in folder.glob(".*.part"):
        stray.unlink(missing_ok=True)
    stem = safe_stem(path)
    manifest = folder / f"{stem}.manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("products", {})
    products = products_in(folder, stem)
    if not products:
        shutil.rmtree(folder, ignore_errors=True)
        return {}
    write_manifest(folder, stem, path, products, result.notes + [f"failed: {result.reason}"],
                   status="failed")
    return {k: v.name for k, v in products.items()}


def products_in(folder: Path, stem: str) -> dict[str, Path]:
    """The files a frame's stages left in its folder, by kind where the name tells it."""
    if not folder.is_dir():
        return {}
    products = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file()
                       and not p.name.startswith(".") and not p.name.endswith(".manifest.json")):
        kind = next((k for s, k in _KNOWN_SUFFIXES.items() if file.name == stem + s),
                    file.name)
        products[kind] = file
    return products


# --- many frames ----------------------------------------------------------------------
def plan(files, out_dir) -> tuple[list[Path], list[FrameResult]]:
    """Frames to run, and those refused up front (two inputs, one output folder)."""
    todo, refused, owner = [], [], {}
    for given in files:
        path = Path(given).absolute()
        try:
            stem = safe_stem(path)
        except BhError as exc:
            refused.append(FrameResult(str(path), "failed", one_line(str(exc))))
            continue
        if stem in owner:
            if owner[stem] != path:
                refused.append(FrameResult(str(path), "failed", one_line(
                    f"{path}: its output folder '{stem}' is already used by {owner[stem]} "
                    "in this run")))
            continue
        owner[stem] = path
        todo.append(path)
    return todo, refused


def run_batch(files, obs, out_dir, *, photometry_backend=None, overrides=None,
              summary: RunSummary | None = None, workers: int | None = None,
              resume: bool = False, executor="local", scheduler: str | None = None,
              console=None) -> BatchSummary:
    """Process ``files`` on an executor; failures are collected, never raised.

    ``executor`` is ``local`` (a pool of ``workers`` processes, default the cores;
    0 runs in this process), ``dask`` (``scheduler`` address, or a LocalCluster),
    or an executor object (kept open). ``console`` shows a progress bar.
    """
    from .executors import make_executor
    result = BatchSummary()
    if summary is not None:
        for f in dataclasses.fields(summary):
            setattr(result, f.name, getattr(summary, f.name))
    start = time.perf_counter()
    todo, refused = plan(files, out_dir)
    owned = isinstance(executor, str)
    pool = make_executor(executor, workers, scheduler) if owned else executor
    result.workers, result.executor = pool.workers, pool.name
    bars = _Bars(console, len(todo) + len(refused))
    try:
        with bars:
            for item in refused:
                _record(result, item, bars)
            packed = pack_obs(obs)
            futures = {pool.submit(run_one, str(p), packed, str(out_dir),
                                   photometry_backend=photometry_backend,
                                   overrides=overrides, resume=resume): p for p in todo}
            for future in pool.as_completed(futures):
                try:
                    item = future.result()
                except Exception as exc:   # the worker process itself died
                    path = futures[future]
                    item = FrameResult(str(path), "failed", one_line(
                        f"{path}: worker lost ({type(exc).__name__}: {exc})"))
                _record(result, item, bars)
    except BaseException:
        if owned:
            getattr(pool, "abort", pool.close)()
        raise
    if owned:
        pool.close()
    result.elapsed = time.perf_counter() - start
    return result


def _record(summary: BatchSummary, item: FrameResult, bars) -> None:
    if item.status == "done":
        summary.done += 1
    elif item.status == "skipped":
        summary.skipped.append(item.path)
    else:
        summary.failed.append((item.path, item.reason))
    if item.products:
        summary.products[item.path] = item.products
    stem = Path(item.path).name
    summary.stage_notes.extend(f"{stem}: {n}" for n in item.notes)
    summary.warnings.extend(w if stem in w else f"{stem}: {w}" for w in item.warnings)
    if item.bug:
        summary.bugs.append(item.bug)
    for stage in STAGES:
        if stage in item.products:
            summary.stage_counts[stage] += 1
    bars.advance(item, summary)


class _Bars:
    """A rich progress display: all frames, then how many got through each stage."""

    def __init__(self, console, total: int):
        self.progress = None
        if console is None:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=console)
        self.frames = self.progress.add_task("frames", total=total)
        self.stages = {s: self.progress.add_task(f"  {s}", total=total) for s in STAGES}

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def advance(self, item: FrameResult, summary: BatchSummary) -> None:
        if self.progress is None:
            return
        extra = [f"{len(summary.failed)} failed"] if summary.failed else []
        extra += [f"{len(summary.skipped)} skipped"] if summary.skipped else []
        label = "frames" + (f" ({', '.join(extra)})" if extra else "")
        self.progress.update(self.frames, advance=1, description=label)
        for stage, task in self.stages.items():
            if stage in item.products:
                self.progress.update(task, advance=1)


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def print_summary(summary: RunSummary, console, err_console, max_notes: int = 30) -> None:
    """Counts, speed, grouped stage notes, warnings; then every failure with its reason."""
    skipped = len(getattr(summary, "skipped", []))
    line = f"[bold]{summary.done} frame(s) done, {len(summary.failed)} failed"
    line += f", {skipped} skipped (already complete)[/bold]" if skipped else "[/bold]"
    console.print(line, soft_wrap=True)
    if isinstance(summary, BatchSummary) and summary.elapsed > 0:
        console.print(f"  {summary.frames_per_minute:.1f} frames/min with "
                      f"{summary.workers} {summary.executor} worker(s); per stage: "
                      + ", ".join(f"{k} {v}" for k, v in summary.stage_counts.items()),
                      markup=False, soft_wrap=True)
    # notes that differ only in their numbers (a zero point, a star count) are one kind
    groups: dict[str, list[tuple[str, str]]] = {}
    for note in summary.stage_notes:
        stem, sep, text = note.partition(": ")
        if not sep or " " in stem:          # a note about the run, not one frame
            stem, text = note, note
        groups.setdefault(_NUMBER.sub("#", text), []).append((stem, text))
    shown = 0
    for members in groups.values():
        if shown == max_notes:
            console.print(f"  ... {len(groups) - shown} more kinds of notes in the "
                          "manifests", markup=False, soft_wrap=True)
            break
        (stem, text), n = members[0], len(members)
        if stem == text:
            line = text
        elif n == 1:
            line = f"{stem}: {text}"
        elif len({t for _s, t in members}) == 1:
            line = f"{n} frames: {text}"
        else:
            line = f"{n} frames: {text} (the numbers of {stem}; they differ per frame)"
        console.print(f"  {redact(line)}", markup=False, soft_wrap=True)
        shown += 1
    for warning in getattr(summary, "warnings", [])[:max_notes]:
        err_console.print(f"warning: {redact(warning)}", markup=False, soft_wrap=True)
    for bug in getattr(summary, "bugs", []):
        err_console.print(redact(bug).rstrip(), markup=False, soft_wrap=True)
    for _path, reason in summary.failed:
        err_console.print(f"error: {redact(reason)}", markup=False, soft_wrap=True)


def audit_products(out_dir) -> list[str]:
    """Problems in an output folder: partial files, products without or beyond a manifest.

    Why: "no duplicate and no missing product" after a crash is checked by looking
    at what is on disk, not by trusting the runner's own bookkeeping.
    """
    out_dir, problems = Path(out_dir), []
    for stray in out_dir.rglob("*.part"):
        problems.append(f"partial file {stray}")
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir()
                         and not p.name.startswith(".")) if out_dir.is_dir() else []:
        manifest = folder / f"{folder.name}.manifest.json"
        if not manifest.is_file():
            problems.append(f"{folder}: products without a manifest")
            continue
        listed = set(json.loads(manifest.read_text()).get("products", {}).values())
        present = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
        present.discard(manifest.name)
        for name in sorted(listed - present):
            problems.append(f"{folder}: missing product {name}")
        for name in sorted(present - listed):
            problems.append(f"{folder}: file {name} not in the manifest")
    return problems
