"""Run the whole chain on frames: one frame or a batch (the demo is in ``bhcore.demo``).

Products of every stage are kept even when a later stage fails, and one failing
frame never stops a batch: its one-line reason is collected in the summary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from astropy.io import fits

from .errors import AstrometryNotSolved, BackendNotFound, BhError, NotImplementedYet
from .frame import file_stem, write_frame
from .gaia_grid import write_products
from .headers import read_standardised
from .pipeline import run_astrometry, run_photometry, write_table
from .results.stage import calibrate_and_record


def safe_stem(path) -> str:
    """A file-name stem that cannot escape an output folder (the products' one rule)."""
    return file_stem(path)


@dataclass
class RunSummary:
    done: int = 0
    failed: list = field(default_factory=list)        # (path, one-line reason)
    stage_notes: list = field(default_factory=list)   # what each stage did or skipped
    products: dict = field(default_factory=dict)      # path -> {stage: product path}


def _unavailable(exc) -> bool:
    return isinstance(exc, (BackendNotFound, NotImplementedYet))


def process_frame(path, obs, out_dir, *, photometry_backend=None, overrides=None,
                  summary: RunSummary | None = None) -> dict[str, Path]:
    """Run header -> astrometry -> photometry -> calibration on one frame.

    Products of every stage that succeeded are kept even when a later one fails,
    and a manifest (``<stem>.manifest.json``) written last, atomically, says the
    frame is complete. A stage whose backend is not installed or not implemented
    yet is skipped with a note; an unsolved astrometry skips the later stages and
    is raised (after the manifest of what was done), and so is a failing photometry
    engine; any other failure is raised as a one-line ``BhError``.
    """
    summary = summary if summary is not None else RunSummary()
    stem = safe_stem(path)
    folder = Path(out_dir) / stem
    frame, products, notes, failure = header_and_astrometry(path, obs, folder, stem,
                                                            overrides)
    if not failure:
        try:
            made, more = photometry_and_calibration(frame, obs, folder, stem, overrides,
                                                    photometry_backend)
            products.update(made)
            notes.extend(more)
        except BhError as exc:          # the earlier stages' products stay and are listed
            failure = exc
            notes.append(f"photometry failed: {exc}; later stages skipped")
    summary.stage_notes.extend(f"{stem}: {text}" for text in notes)
    if failure:
        write_manifest(folder, stem, path, products, notes, status="failed")
        raise failure
    write_manifest(folder, stem, path, products, notes, status="done")
    return products


def header_and_astrometry(path, obs, folder: Path, stem: str, overrides=None):
    """Standardise the header, then try the astrometry chain; write both products.

    Returns ``(frame, products, notes, failure)``: the frame carries the solved WCS;
    ``failure`` is the AstrometryNotSolved that skips the later stages, or None
    (also when no astrometry backend is available at all: that is only a note).
    """
    products: dict[str, Path] = {}
    notes: list[str] = []
    frame = read_standardised(path, obs, check=True)
    products["header"] = write_frame(frame, folder / f"{stem}_std.fits")
    chain = obs.backends_for("astrometry") if obs else ("astrometry_scamp", "astrometry_nova")
    try:
        result, attempts = run_astrometry(frame, chain, obs=obs, overrides=overrides)
    except AstrometryNotSolved as exc:
        if all(_unavailable_text(said) for said in getattr(exc, "attempts", [])):
            notes.append(f"astrometry skipped: {exc}")
            return frame, products, notes, None
        notes.append(f"astrometry failed: {exc}; later stages skipped")
        return frame, products, notes, exc
    written = write_products(frame, result, folder, stem, attempts)
    products["astrometry"] = written["frame"]
    if "matches" in written:
        products["astrometry_matches"] = written["matches"]
    frame = frame.replace(header=fits.getheader(written["frame"]), wcs=result.wcs)
    notes.append("astrometry: " + "; ".join(f"{b}: {said}" for b, said in attempts))
    return frame, products, notes, None


def photometry_and_calibration(frame, obs, folder: Path, stem: str, overrides=None,
                               backend: str | None = None):
    """Measure every source, give it RA/Dec, calibrate and record; returns products, notes."""
    products: dict[str, Path] = {}
    notes: list[str] = []
    backend = backend or (obs.backends_for("photometry")[0] if obs else "phot_python")
    extra = dict(overrides or {}, products_dir=str(folder))
    try:
        table = run_photometry(frame, backend, obs=obs, overrides=extra)
    except BhError as exc:
        if not _unavailable(exc):
            raise
        notes.append(f"photometry skipped: {exc}")
        return products, notes
    add_sky_coordinates(table, frame.wcs)
    products["photometry"] = write_table(table, folder / f"{stem}_phot.ecsv")
    if table.meta.get("residual_image"):
        products["residual"] = Path(table.meta["residual_image"])
    _result, cal_products, cal_notes = calibrate_and_record(frame, table, obs, folder,
                                                            overrides)
    products.update(cal_products)
    notes.extend([cal_notes] if isinstance(cal_notes, str) else cal_notes)
    return products, notes


def _unavailable_text(said: str) -> bool:
    return "not implemented yet" in said or "is not installed" in said


def add_sky_coordinates(table, wcs) -> None:
    """Give every source RA/Dec (deg) from the frame's WCS (0-based pixels)."""
    if wcs is None or len(table) == 0:
        return
    ra, dec = wcs.celestial.pixel_to_world_values(table["x"], table["y"])
    table["ra"] = ra
    table["dec"] = dec


def manifest_path(out_dir, path) -> Path:
    stem = safe_stem(path)
    return Path(out_dir) / stem / f"{stem}.manifest.json"


def write_manifest(folder: Path, stem: str, source, products, notes, status: str) -> Path:
    """Record a frame's products last, atomically: its presence means 'complete'."""
    import json
    from . import __version__
    from .frame import atomic_write_text
    from .secrets import redact
    payload = {
        "input": str(source), "status": status, "bhcore": __version__,
        "products": {k: str(Path(v).relative_to(folder)) if Path(v).is_relative_to(folder)
                     else str(v) for k, v in products.items()},
        "notes": [redact(n) for n in notes],
    }
    return atomic_write_text(folder / f"{stem}.manifest.json",
                             json.dumps(payload, indent=2) + "\n")


def run_batch(files, obs, out_dir, *, photometry_backend=None, overrides=None,
              summary: RunSummary | None = None, **parallel) -> RunSummary:
    """Process many frames; a failing frame is reported and the others go on.

    Delegates to :func:`bhcore.batch.run_batch`; ``parallel`` takes its
    ``workers``, ``resume``, ``executor``, ``scheduler`` and ``console``.
    """
    from .batch import run_batch as parallel_batch
    return parallel_batch(files, obs, out_dir, photometry_backend=photometry_backend,
                          overrides=overrides, summary=summary, **parallel)


def demo_overrides(catalog: Path) -> dict:
    """The simulated sky is the reference catalogue: astrometry and calibration use it.

    (A real frame uses Gaia DR3 or the offline Tycho-2; neither knows a simulated sky.)
    """
    file_settings = {"path": str(catalog), "columns": {"V": "mag"}}
    return {"catalogs": ["file"], "catalog_settings": {"file": file_settings},
            "file.path": file_settings["path"], "file.columns": file_settings["columns"]}


DEMO_ONAME = "BHCORE-SIM_SynthCam"
