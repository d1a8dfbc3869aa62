"""astrometry_scamp on synthetic frames made FROM a catalogue, so the 'file' catalogue
backend serves the very stars the frame shows (as Gaia would).

What must hold: frames whose header WCS is off by up to 10' and 3 deg, and frames
with no WCS at all (pointing keywords only), are solved with an RMS against the
true WCS under 0.05" (0.6"/px, stars with SNR > 50), measured over a pixel grid;
a wrong solution is refused, never passed on.
"""
from __future__ import annotations

import functools
import math
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from bhcore.errors import AstrometryNotSolved, BhError
from bhcore.frame import Frame
from bhcore.gaia_grid import wcs_error_rms
from bhcore.pipeline import run_astrometry
from bhcore.tables import SourceTable
from bhcore.testing import make_star_field, make_wcs

SCALE = 0.6
SHAPE = (1024, 1024)
CENTER = (150.0, 30.0)
WCS_CARDS = ("WCSAXES", "CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT", "PC1_", "PC2_", "CD1_",
             "CD2_", "A_", "B_", "AP_", "BP_", "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX",
             "MJDREF", "DATEREF")

needs_scamp = pytest.mark.skipif(shutil.which("scamp") is None or
                                 shutil.which("source-extractor") is None,
                                 reason="scamp or source-extractor not installed")


def sky_catalog(seed: int = 1, n: int = 2500, radius_deg: float = 0.3) -> Table:
    """Random stars in a cone, V 12-20, with Gaia-like 0.1 mas position errors."""
    rng = np.random.default_rng(seed)
    r = radius_deg * np.sqrt(rng.uniform(0, 1, n))
    theta = rng.uniform(0, 2 * np.pi, n)
    dec = CENTER[1] + r * np.sin(theta)
    ra = CENTER[0] + r * np.cos(theta) / np.cos(np.radians(CENTER[1]))
    return Table({"source_id": np.arange(1, n + 1), "ra": ra, "dec": dec,
                  "V": rng.uniform(12.0, 20.0, n), "ra_err": np.full(n, 0.1),
                  "dec_err": np.full(n, 0.1)})


@functools.lru_cache(maxsize=4)
def star_field(kind: str, seed: int = 3):
    """The rendered frame (cached: rendering takes ~2 s and every test needs one)."""
    cat = sky_catalog()
    return make_star_field(SHAPE, stars=Table({"ra": cat["ra"], "dec": cat["dec"],
                                               "mag": cat["V"]}),
                           wcs=kind, center=CENTER, pixel_scale=SCALE, rotation=0.5, seed=seed,
                           blends=False, fwhm=3.0, sky=300.0, zero_point=28.0)


def scene(tmp_path, *, kind="tan", offset_arcmin=0.0, rotation_deg=0.0, header_wcs=True,
          seed=3):
    """(frame, true WCS, catalogue path): a frame drawn from the catalogue whose header
    WCS is off by ``offset_arcmin`` (mostly in RA) and ``rotation_deg``, or has no WCS
    and only RA/DEC pointing keywords that are off by the same offset."""
    cat = sky_catalog()
    path = tmp_path / "catalog.ecsv"
    cat.write(path, overwrite=True)
    field = star_field(kind, seed)
    frame = field.to_frame()
    header = frame.header.copy()
    for key in list(header):
        if key.startswith(WCS_CARDS):
            del header[key]
    cosd = math.cos(math.radians(CENTER[1]))
    ra = CENTER[0] + 0.95 * offset_arcmin / 60.0 / cosd
    dec = CENTER[1] - 0.3 * offset_arcmin / 60.0
    if header_wcs:
        wrong = make_wcs(SHAPE, center=(ra, dec), pixel_scale=SCALE,
                         rotation=0.5 + rotation_deg)
        header.update(wrong.to_header())
        frame = frame.replace(header=header, wcs=wrong)
    else:
        header["RA"], header["DEC"] = ra, dec
        frame = frame.replace(header=header, wcs=None)
    assert (field.truth["snr"] > 50).sum() > 150
    return frame, field.wcs, path


def settings_for(path, **extra):
    return {"catalogs": ["file"], "catalog_settings": {"file": {"path": str(path)}},
            "pixel_scale_arcsec": SCALE, **extra}


@needs_scamp
@pytest.mark.parametrize("kind, offset, rotation, header_wcs", [
    ("tan", 10.0, 3.0, True),
    ("tan", -10.0, -3.0, True),
    ("tan-sip", 7.0, -2.0, True),
    ("tan", 4.0, 0.0, False),
    ("tan-sip", -5.0, 0.0, False),
])
def test_scamp_solves_offset_and_missing_wcs(tmp_path, kind, offset, rotation, header_wcs):
    frame, truth, path = scene(tmp_path, kind=kind, offset_arcmin=offset,
                               rotation_deg=rotation, header_wcs=header_wcs)
    result, attempts = run_astrometry(frame, ["astrometry_scamp"],
                                      overrides=settings_for(path))
    error = wcs_error_rms(truth, result.wcs, SHAPE)
    print(f"\nSCAMP {kind} offset {offset}' rot {rotation} deg header_wcs={header_wcs}: "
          f"WCS error vs truth {error:.4f}\" RMS (grid); fit RMS {result.rms_arcsec:.4f}\" "
          f"over {result.n_matched} stars, distortion degree "
          f"{result.notes['distort_degree']}, start from {result.notes['start']}")
    assert attempts == [("astrometry_scamp", "solved")]
    assert result.solved and result.backend == "astrometry_scamp"
    assert error < 0.05
    assert result.n_matched > 150 and result.rms_arcsec < 0.1
    assert result.notes["start"] == ("header" if header_wcs else "pointing")
    assert result.catalog.startswith("file") and len(result.matches) == result.n_matched


@needs_scamp
def test_scamp_refuses_a_catalogue_of_another_field(tmp_path):
    frame, _truth, _path = scene(tmp_path, offset_arcmin=1.0)
    other = sky_catalog(seed=99)                         # same sky area, unrelated stars
    other_path = tmp_path / "other.ecsv"
    other.write(other_path)
    with pytest.raises(AstrometryNotSolved) as err:
        run_astrometry(frame, ["astrometry_scamp"], overrides=settings_for(other_path))
    assert "astrometry_scamp" in str(err.value)


@needs_scamp
def test_scamp_without_any_starting_point_hands_over(tmp_path):
    frame, _truth, path = scene(tmp_path, header_wcs=False)
    header = frame.header.copy()
    del header["RA"], header["DEC"]
    frame = frame.replace(header=header)
    with pytest.raises(AstrometryNotSolved, match="astrometry_nova can solve blind"):
        run_astrometry(frame, ["astrometry_scamp"],
                       overrides=settings_for(path, bootstrap_with_nova=False))


@needs_scamp
def test_scamp_uses_a_given_source_table(tmp_path):
    frame, truth, path = scene(tmp_path, offset_arcmin=3.0, rotation_deg=1.0)
    x, y = truth.all_world2pix(np.asarray(sky_catalog()["ra"]),
                               np.asarray(sky_catalog()["dec"]), 0)
    inside = (x > 5) & (x < SHAPE[1] - 5) & (y > 5) & (y < SHAPE[0] - 5)
    rng = np.random.default_rng(5)
    n = int(inside.sum())
    sources = SourceTable.build(x[inside] + rng.normal(0, 0.02, n),
                                y[inside] + rng.normal(0, 0.02, n),
                                np.full(n, 1e5), np.full(n, 1e3), fwhm=np.full(n, 3.0))
    result, _ = run_astrometry(frame, ["astrometry_scamp"], overrides=settings_for(path),
                               sources=sources)
    assert wcs_error_rms(truth, result.wcs, SHAPE) < 0.05


@needs_scamp
def test_scamp_degree_comes_down_when_the_catalogue_covers_the_middle(tmp_path):
    """A 29' undistorted frame (the field size says: start at degree 2) whose deep
    catalogue covers only the central 40%: the BIC brings the degree down to 1; the
    quadratic would be extrapolated over the rest of the frame (0.11-0.22" off in
    three seeds, against 0.02-0.04" for the linear fit)."""
    shape = (2048, 2048)
    rng = np.random.default_rng(0)
    truth = make_wcs(shape, center=CENTER, pixel_scale=SCALE, rotation=0.5)
    n = 1200
    x, y = rng.uniform(5, 2043, n), rng.uniform(5, 2043, n)
    ra, dec = truth.all_pix2world(x, y, 0)
    mag = rng.uniform(12, 19, n)
    middle = (np.abs(x - 1023.5) < 400) & (np.abs(y - 1023.5) < 400)
    path = tmp_path / "middle.ecsv"
    Table({"source_id": np.arange(middle.sum()), "ra": ra[middle], "dec": dec[middle],
           "V": mag[middle], "ra_err": np.full(middle.sum(), 0.1),
           "dec_err": np.full(middle.sum(), 0.1)}).write(path)
    flux = 10 ** (-0.4 * (mag - 25))
    sources = SourceTable.build(x + rng.normal(0, 0.15, n), y + rng.normal(0, 0.15, n), flux,
                                flux / 100, fwhm=np.full(n, 3.0))
    aim = truth.pixel_to_world(1083.5, 983.5)
    frame = Frame(data=np.broadcast_to(np.float64(0.0), shape),
                  header=fits.Header({"RA": aim.ra.deg, "DEC": aim.dec.deg}))
    result, _ = run_astrometry(frame, ["astrometry_scamp"], overrides=settings_for(path),
                               sources=sources)
    forced, _ = run_astrometry(frame, ["astrometry_scamp"],
                               overrides=settings_for(path, distort_degree=2), sources=sources)
    error = wcs_error_rms(truth, result.wcs, shape)
    error2 = wcs_error_rms(truth, forced.wcs, shape)
    print(f"\nSCAMP, catalogue on the central 40% of a 29' frame: degree "
          f"{result.notes['distort_degree']}, WCS error {error:.3f}\" (degree 2: {error2:.3f}\")")
    assert result.notes["distort_degree"] == 1 and error < 0.06
    assert error2 > 2 * error


def test_scamp_missing_engine_is_reported(tmp_path, monkeypatch):
    frame, _truth, path = scene(tmp_path, offset_arcmin=1.0)
    monkeypatch.setenv("PATH", str(tmp_path))           # no engine can be found
    with pytest.raises(BhError, match="not installed|apt-get"):
        run_astrometry(frame, ["astrometry_scamp"], overrides=settings_for(path))


@needs_scamp
def test_scamp_searches_wider_only_when_the_usual_search_fails(tmp_path):
    """A pointing 20' off: 12' cannot reach it, the wide search on failure does."""
    frame, truth, path = scene(tmp_path, offset_arcmin=20.0, rotation_deg=2.0)
    with pytest.raises(AstrometryNotSolved):
        run_astrometry(frame, ["astrometry_scamp"], overrides=settings_for(path))
    result, _ = run_astrometry(frame, ["astrometry_scamp"], overrides=settings_for(
        path, position_maxerr_wide_arcmin=30.0))
    assert result.notes["search_arcmin"] == 30.0
    assert wcs_error_rms(truth, result.wcs, SHAPE) < 0.05
    (tmp_path / "near").mkdir()
    near, _truth, path_near = scene(tmp_path / "near", offset_arcmin=5.0, rotation_deg=2.0)
    result, _ = run_astrometry(near, ["astrometry_scamp"], overrides=settings_for(
        path_near, position_maxerr_wide_arcmin=30.0))
    assert result.notes["search_arcmin"] == 12.0          # the usual search was enough
