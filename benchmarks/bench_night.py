"""Frames per minute for a simulated night: 1 and 2 local workers, and Dask.

Why: parallel speed-up is the point of ``bhcore run --workers``; this measures it
on the real pipeline (the demo camera, every stage that exists, offline) rather
than on a toy task, and reports the load average because the machine may be
shared. Each executor is warmed up first (imports, plugin loading) so the
numbers are steady-state throughput, the figure that matters for a long night.

    .venv/bin/python benchmarks/bench_night.py [--frames 40] [--size 256] [--scenario all]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import MappingProxyType

from bhcore.batch import run_batch, run_one
from bhcore.executors import DaskExecutor, LocalExecutor
from bhcore.registry import Registry
from bhcore.runner import DEMO_ONAME, demo_overrides
from bhcore.testing import make_night

OFFLINE = {"offline": True}          # no catalogue or solver goes online
OVERRIDES = dict(OFFLINE)            # + the simulated sky as reference (set in main)


def warm(executor, frames, scratch: Path, obs) -> None:
    """Give every worker a frame first, so imports and plugin loading are not timed."""
    futures = [executor.submit(run_one, str(frames[i % len(frames)]), obs,
                               str(scratch / f"warm{i}"), overrides=OVERRIDES)
               for i in range(2 * executor.workers)]
    for future in executor.as_completed(futures):
        future.result()


def measure(label, executor, files, obs, root: Path) -> dict:
    from bhcore.batch import pack_obs
    warm(executor, files[:2], root / "warm", pack_obs(obs))
    out = root / label.replace(" ", "_")
    start = time.perf_counter()
    summary = run_batch(files, obs, out, executor=executor, overrides=OVERRIDES)
    wall = time.perf_counter() - start
    statuses = {Path(p).name: json.loads(m.read_text())["status"]
                for p in files for m in [out / Path(p).stem / f"{Path(p).stem}.manifest.json"]}
    return {"label": label, "wall": wall, "fpm": 60.0 * len(files) / wall,
            "done": summary.done, "failed": len(summary.failed), "statuses": statuses}


def scenarios(obs, which: str):
    """(label, settings): the whole chain of the demo camera (the simulated sky is the
    reference catalogue, as in `bhcore demo`), and the chain without astrometry.
    """
    out = []
    if which in ("all", "demo"):
        out.append(("demo camera, every stage", obs))
    if which in ("all", "photometry"):
        out.append(("astrometry unavailable (photometry + calibration)",
                    dataclasses.replace(obs, backends=MappingProxyType(
                        {**obs.backends, "astrometry": ("astrometry_absent",)}))))
    return out


def run_scenario(label, obs, files, root: Path) -> list[dict]:
    results = []
    for workers in (1, 2):
        with LocalExecutor(workers) as executor:
            results.append(measure(f"local {workers} worker(s)", executor, files, obs, root))
    with DaskExecutor(workers=2) as executor:
        results.append(measure("dask LocalCluster 2 workers", executor, files, obs, root))
    print(f"\n{label}")
    print(f"{'executor':<30}{'wall s':>9}{'frames/min':>12}{'done':>6}{'failed':>8}")
    for r in results:
        print(f"{r['label']:<30}{r['wall']:>9.2f}{r['fpm']:>12.1f}{r['done']:>6}{r['failed']:>8}")
    print(f"speed-up 2 workers / 1 worker: {results[1]['fpm'] / results[0]['fpm']:.2f} "
          "(goal >= 1.7)")
    print(f"dask 2 workers / local 1 worker: {results[2]['fpm'] / results[0]['fpm']:.2f}")
    same = all(r["statuses"] == results[0]["statuses"] for r in results)
    print(f"same outcome for every frame on every executor: {'yes' if same else 'NO'}")
    return results if same else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--stars", type=int, default=150)
    parser.add_argument("--scenario", choices=("all", "demo", "photometry"), default="all")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bhcore-bench-"))
    os.environ.setdefault("BHCORE_HOME", str(root / "home"))
    ok = True
    try:
        night = make_night(out_dir=root / "raw", n_frames=args.frames,
                           shape=(args.size, args.size), n_stars=args.stars, seed=7)
        OVERRIDES.update(demo_overrides(root / "raw" / "catalog.ecsv"))
        registry = Registry()
        registry.ensure_builtin()
        obs = registry.get(DEMO_ONAME)
        print(f"bhcore bench_night: {args.frames} simulated frames of {args.size}x{args.size}"
              f" px ({DEMO_ONAME}, offline), {os.cpu_count()} cores; load average "
              "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        for label, settings in scenarios(obs, args.scenario):
            ok &= bool(run_scenario(label, settings, night.paths, root / label[:4]))
        print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(
            *os.getloadavg()))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
