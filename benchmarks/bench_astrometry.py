"""Astrometry time per frame for each backend on a 2k synthetic frame, and the RMS reached.

Run from the project root (not part of the test suite):

    .venv/bin/python benchmarks/bench_astrometry.py

The frame (2048x2048, 0.6"/px, TAN-SIP) is drawn from a catalogue; its header WCS is
off by 8' and 2 deg. The catalogue is a local file read once before timing, so the
time is the backend's own work. The RMS is the WCS error against the true WCS over a
grid of pixels (arcsec); the ratio column is time / the fastest backend's time.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

SHAPE, SCALE, CENTER = (2048, 2048), 0.6, (150.0, 30.0)
BACKENDS = ("astrometry_scamp", "astrometry_nova")


def catalogue(n=6000, radius_deg=0.45, seed=1) -> Table:
    rng = np.random.default_rng(seed)
    r = radius_deg * np.sqrt(rng.uniform(0, 1, n))
    theta = rng.uniform(0, 2 * np.pi, n)
    dec = CENTER[1] + r * np.sin(theta)
    ra = CENTER[0] + r * np.cos(theta) / np.cos(np.radians(CENTER[1]))
    return Table({"source_id": np.arange(1, n + 1), "ra": ra, "dec": dec,
                  "V": rng.uniform(12.0, 20.0, n), "ra_err": np.full(n, 0.1),
                  "dec_err": np.full(n, 0.1)})


def main() -> int:
    from bhcore.errors import BhError
    from bhcore.gaia_grid import wcs_error_rms
    from bhcore.pipeline import run_astrometry
    from bhcore.testing import make_star_field, make_wcs
    cat = catalogue()
    field = make_star_field(SHAPE, stars=Table({"ra": cat["ra"], "dec": cat["dec"],
                                                "mag": cat["V"]}),
                            wcs="tan-sip", center=CENTER, pixel_scale=SCALE, rotation=0.5,
                            seed=3, blends=False, fwhm=3.0, sky=300.0, zero_point=28.0)
    frame = field.to_frame()
    header = frame.header.copy()
    for key in list(header):
        if key.startswith(("WCSAXES", "CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT", "PC",
                           "CD1_", "CD2_", "A_", "B_", "AP_", "BP_", "LONPOLE", "LATPOLE")):
            del header[key]
    cosd = math.cos(math.radians(CENTER[1]))
    wrong = make_wcs(SHAPE, center=(CENTER[0] + 8 / 60 / cosd, CENTER[1]),
                     pixel_scale=SCALE, rotation=2.5)
    header.update(wrong.to_header())
    frame = frame.replace(header=header, wcs=wrong)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BHCORE_HOME"] = str(Path(tmp) / "home")
        path = Path(tmp) / "catalog.ecsv"
        cat.write(path)
        settings = {"catalogs": ["file"], "catalog_settings": {"file": {"path": str(path)}},
                    "pixel_scale_arcsec": SCALE, "offline": True}
        print(f"2048x2048 synthetic frame, {len(cat)} catalogue stars, header WCS off by "
              f"8' and 2 deg; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        for backend in BACKENDS:
            run_astrometry(frame, [backend], overrides=settings)      # warm caches/indexes
            start = time.perf_counter()
            try:
                result, _ = run_astrometry(frame, [backend], overrides=settings)
            except BhError as exc:
                print(f"{backend}: not solved ({exc})")
                continue
            wall = time.perf_counter() - start
            rows.append((backend, wall, wcs_error_rms(field.wcs, result.wcs, SHAPE),
                         result.n_matched))
    fastest = min(r[1] for r in rows) if rows else float("nan")
    print(f"{'backend':<18}{'s/frame':>9}{'ratio':>8}{'RMS arcsec':>16}{'matched':>9}")
    for backend, wall, rms, n in rows:
        print(f"{backend:<18}{wall:>9.2f}{wall / fastest:>8.2f}{rms:>16.4f}{n:>9}")
    return 0 if len(rows) == len(BACKENDS) else 1


if __name__ == "__main__":
    sys.exit(main())
