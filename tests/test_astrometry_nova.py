"""astrometry_nova (local solve-field) on the synthetic frames of test_astrometry_scamp.

The 10' field is smaller than any Tycho-2 quad, so these runs exercise the
on-the-fly indexes built from the catalogue cone (and their cache). The remote
service is never called: tests replace it or leave it without an API key.
"""
from __future__ import annotations

import shutil

import pytest

from bhcore.errors import AstrometryNotSolved
from bhcore.gaia_grid import wcs_error_rms
from bhcore.pipeline import run_astrometry
from test_astrometry_scamp import SHAPE, scene, settings_for

needs_anet = pytest.mark.skipif(shutil.which("solve-field") is None or
                                shutil.which("build-astrometry-index") is None,
                                reason="astrometry.net (solve-field) not installed")


@needs_anet
@pytest.mark.parametrize("kind, offset, rotation, header_wcs", [
    ("tan", 10.0, 3.0, True),
    ("tan-sip", -7.0, -2.0, True),
    ("tan", 4.0, 0.0, False),
    ("tan-sip", -5.0, 0.0, False),
])
def test_nova_solves_offset_and_missing_wcs(tmp_path, kind, offset, rotation, header_wcs):
    frame, truth, path = scene(tmp_path, kind=kind, offset_arcmin=offset,
                               rotation_deg=rotation, header_wcs=header_wcs)
    result, attempts = run_astrometry(frame, ["astrometry_nova"], overrides=settings_for(path))
    error = wcs_error_rms(truth, result.wcs, SHAPE)
    raw = wcs_error_rms(truth, result.notes["solve_field_wcs"], SHAPE)
    print(f"\nnova {kind} offset {offset}' rot {rotation} deg header_wcs={header_wcs}: WCS "
          f"error vs truth {error:.4f}\" RMS (grid; solve-field alone {raw:.4f}\"); fit RMS "
          f"{result.rms_arcsec:.4f}\" over {result.n_matched} stars; polish "
          f"order {result.notes['polish']['order']}")
    assert attempts == [("astrometry_nova", "solved")]
    assert result.backend == "astrometry_nova" and result.n_matched > 150
    assert error < 0.05
    assert "cone indexes" in " ".join(result.notes["attempts"])
    assert "not tried (no API key" in result.notes["attempts"][-1] or \
        result.notes["attempts"][-1].endswith("solved")


@needs_anet
def test_nova_reuses_built_indexes(tmp_path, monkeypatch):
    from bh_astrometry_nova import indexes
    frame, truth, path = scene(tmp_path, offset_arcmin=2.0)
    run_astrometry(frame, ["astrometry_nova"], overrides=settings_for(path))
    built = sorted(indexes.cache_root().rglob("index-bh-*.fits"))
    assert built

    def refuse(*args, **kwargs):
        raise AssertionError("an index was rebuilt")

    monkeypatch.setattr(indexes, "build_index", refuse)
    again, _ = run_astrometry(frame, ["astrometry_nova"], overrides=settings_for(path))
    assert wcs_error_rms(truth, again.wcs, SHAPE) < 0.05
    assert sorted(indexes.cache_root().rglob("index-bh-*.fits")) == built


@needs_anet
def test_nova_small_field_without_pointing_says_why(tmp_path):
    frame, _truth, path = scene(tmp_path, header_wcs=False)
    header = frame.header.copy()
    del header["RA"], header["DEC"]
    with pytest.raises(AstrometryNotSolved, match="needs a pointing"):
        run_astrometry(frame.replace(header=header), ["astrometry_nova"],
                       overrides=settings_for(path))


@needs_anet
def test_remote_is_the_last_chance_and_needs_a_key(tmp_path, monkeypatch):
    from bh_astrometry_nova import remote
    frame, truth, path = scene(tmp_path, offset_arcmin=1.0)
    calls = []

    def fake_remote(sources, shape, key, scale, tolerance, timeout):
        calls.append(key)
        return truth

    monkeypatch.setattr(remote, "solve", fake_remote)
    monkeypatch.setenv("BHCORE_NOVA_API_KEY", "test-key")
    # local indexes disabled: only the (replaced) remote service can answer
    result, _ = run_astrometry(frame, ["astrometry_nova"],
                               overrides=settings_for(path, build_indexes=False))
    assert calls == ["test-key"] and result.notes["index_catalog"] == "nova.astrometry.net"
    with pytest.raises(AstrometryNotSolved, match="offline"):
        run_astrometry(frame, ["astrometry_nova"],
                       overrides=settings_for(path, build_indexes=False, offline=True))
    monkeypatch.delenv("BHCORE_NOVA_API_KEY")
    with pytest.raises(AstrometryNotSolved, match="no API key"):
        run_astrometry(frame, ["astrometry_nova"],
                       overrides=settings_for(path, build_indexes=False))
    assert len(calls) == 1


@needs_anet
@pytest.mark.skipif(shutil.which("scamp") is None, reason="scamp not installed")
def test_fallback_chain_records_what_each_backend_said(tmp_path):
    frame, truth, path = scene(tmp_path, offset_arcmin=10.0, rotation_deg=3.0)
    overrides = settings_for(path, position_maxerr_arcmin=1.0)   # SCAMP cannot reach 10'
    result, attempts = run_astrometry(frame, ["astrometry_scamp", "astrometry_nova"],
                                      overrides=overrides)
    assert [b for b, _ in attempts] == ["astrometry_scamp", "astrometry_nova"]
    assert attempts[0][1] != "solved" and attempts[1][1] == "solved"
    assert result.backend == "astrometry_nova"
    assert wcs_error_rms(truth, result.wcs, SHAPE) < 0.05
