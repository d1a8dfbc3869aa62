"""Every photometry engine on a sparse and a dense synthetic frame, in one run.

Run from the project root (not part of the test suite):

    .venv/bin/python benchmarks/bench_engines.py

For each frame it prints each installed engine's wall time (full pipeline: detection,
PSF, fitting), completeness for SNR >= 10 and median |flux error| / Cramér-Rao bound
(1.0 = at the bound; stars with SNR > 20, joint bound for blends), then both as
ratios to phot_python measured in the same run.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_phot_python import FIELD, completeness, err_over_bound, warm_up  # noqa: E402

ENGINES = ("phot_python", "phot_sex", "phot_daophot")
FRAMES = {"sparse 1024x1024, 300 stars": ((1024, 1024), 300),
          "dense 2048x2048, 4000 stars": ((2048, 2048), 4000)}


def measure(engine, frame):
    from bhcore.pipeline import run_photometry
    start = time.perf_counter()
    table = run_photometry(frame, engine)
    return table, time.perf_counter() - start


def main() -> int:
    from bhcore.errors import BhError
    from bhcore.testing import make_star_field
    warm_up()
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    for label, (shape, n_stars) in FRAMES.items():
        field = make_star_field(shape, n_stars, seed=11, blends=True, **FIELD)
        frame = field.to_frame()
        rows = {}
        for engine in ENGINES:
            try:
                table, wall = measure(engine, frame)
            except BhError as exc:
                print(f"  {engine}: not available ({exc})")
                continue
            rows[engine] = (wall, completeness(table, field.truth),
                            err_over_bound(table, field.truth)[0], len(table))
        print(f"\n{label}")
        print(f"{'engine':<14}{'wall s':>8}{'complete':>10}{'err/bound':>11}{'sources':>9}"
              f"{'time ratio':>12}{'err ratio':>11}")
        base = rows.get("phot_python")
        for engine, (wall, comp, err, n) in rows.items():
            t_ratio = wall / base[0] if base else float("nan")
            e_ratio = err / base[2] if base else float("nan")
            print(f"{engine:<14}{wall:>8.2f}{comp:>10.3f}{err:>11.3f}{n:>9}"
                  f"{t_ratio:>12.2f}{e_ratio:>11.2f}")
    print("\n(time ratio and err ratio: engine / phot_python; > 1 means phot_python is "
          "faster / closer to the bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
