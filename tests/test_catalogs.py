"""Reference catalogue backends: remote clients against a local HTTP server, the
cone cache and offline mode, Tycho-2 from the index files, user files.

No test may reach the internet: the autouse guard turns any connection (or name
lookup) that is not to this machine into a failure.
"""
from __future__ import annotations

import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

from bhcore.errors import BhError
from bhcore.plugins import call_backend, load_plugins

RECORDED = Path(__file__).resolve().parent / "data_recorded"
CENTER = SkyCoord(31.2 * u.deg, 46.75 * u.deg)


class _Server:
    """A local HTTP server answering TAP sync and VizieR ASU requests from files."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                owner.requests.append((self.path, parse_qs(body)))
                if self.path.endswith("/tap/sync"):
                    self._send(RECORDED / "gaia_tap_sync_cone.vot")
                elif self.path.endswith("/viz-bin/votable"):
                    self._send(RECORDED / "vizier_ucac4_cone.vot")
                else:
                    self.send_error(404)

            def _send(self, path):
                payload = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-votable+xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def ask(name, center=CENTER, radius=0.2, epoch=None, backend=None, **settings):
    backend = backend or name.split(":")[0]
    pm = load_plugins([backend])
    return call_backend(pm, "catalog", backend, name=name, center=center, radius_deg=radius,
                        epoch=epoch, settings=settings)


def sky(table) -> SkyCoord:
    return SkyCoord(np.asarray(table["ra"]) * u.deg, np.asarray(table["dec"]) * u.deg)


def gaia_settings(server):
    return {"tap_url": f"http://127.0.0.1:{server.port}/tap-server/tap", "timeout_s": 10}


# --- gaia ---------------------------------------------------------------------------------
def test_gaia_query_parses_answer_and_propagates_to_the_epoch(server):
    table = ask("gaia", epoch=Time(2026.0, format="jyear"), **gaia_settings(server))
    path, form = server.requests[0]
    query = form["QUERY"][0]
    assert path == "/tap-server/tap/sync" and form["LANG"] == ["ADQL"]
    assert "gaiadr3.gaia_source" in query and "synthetic_photometry_gspc" in query
    assert "CONTAINS(POINT('ICRS', g.ra, g.dec), CIRCLE('ICRS'" in query
    assert query.startswith("SELECT TOP ")
    assert len(table) == 3 and table.meta["catalog"] == "Gaia DR3"
    fast = table[table["source_id"] == 900000000000000001][0]
    moved = SkyCoord(float(fast["ra"]) * u.deg, float(fast["dec"]) * u.deg)
    start = SkyCoord(31.2 * u.deg, 46.75 * u.deg)
    # 10 years at (1000, -500) mas/yr: 11.18" towards position angle 116.6 deg
    assert moved.separation(start).arcsec == pytest.approx(math.hypot(10.0, 5.0), abs=1e-4)
    assert start.position_angle(moved).deg == pytest.approx(
        math.degrees(math.atan2(1000, -500)), abs=1e-3)
    assert fast["epoch"] == pytest.approx(2026.0)
    assert fast["ra_err"] == pytest.approx(math.hypot(0.02, 0.3), rel=1e-6)
    assert fast["G_err"] == pytest.approx(1.0857 / 2000, rel=1e-3)
    assert fast["V"] == pytest.approx(9.7, abs=1e-5)
    assert fast["V_err"] == pytest.approx(0.010857, rel=1e-3)
    assert fast["parallax"] == pytest.approx(50.0)
    faint = table[table["source_id"] == 900000000000000003][0]
    assert np.isnan(faint["V"]) and np.isnan(faint["pmra"])     # no GSPC row, no pm
    assert faint["epoch"] == pytest.approx(2016.0)              # not moved
    assert list(table["G"]) == sorted(table["G"])


def test_gaia_answer_is_cached_and_reused_for_nearby_frames_and_offline(server):
    settings = gaia_settings(server)
    ask("gaia", **settings)
    assert len(server.requests) == 1
    shifted = SkyCoord(31.21 * u.deg, 46.755 * u.deg)           # next frame, drifted
    again = ask("gaia", center=shifted, radius=0.15, **settings)
    offline = ask("gaia", center=shifted, radius=0.15, offline=True, **settings)
    assert len(server.requests) == 1
    assert again.meta["source"].startswith("cache") and len(offline) == len(again)
    cached = list((Path(__import__("os").environ["BHCORE_HOME"]) / "cache/catalogs/gaia")
                  .glob("*.ecsv"))
    assert len(cached) == 1 and not list(cached[0].parent.glob(".*.part"))


def test_gaia_offline_without_cache_says_what_is_missing(server):
    with pytest.raises(BhError) as err:
        ask("gaia", offline=True, **gaia_settings(server))
    text = str(err.value)
    assert "offline" in text and "RA 31.2000" in text and "cached cones: none" in text
    assert "tycho2_local" in text
    assert server.requests == []


def test_gaia_unreachable_service_is_a_clear_error():
    with socket.socket() as probe:                 # a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BhError, match="did not answer"):
        ask("gaia", tap_url=f"http://127.0.0.1:{port}/tap-server/tap", timeout_s=5)


def test_network_guard_refuses_the_internet(_no_network):
    with pytest.raises(RuntimeError, match="network use"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    assert _no_network == ["192.0.2.1"]            # refused at the name lookup
    _no_network.clear()                            # the attempt was this test's point


def test_other_names_are_not_mine():
    pm = load_plugins(["gaia"])
    assert pm.hook.bh_reference_catalog(name="tycho2_local", center=CENTER, radius_deg=0.1,
                                        epoch=None, settings={}) is None


# --- vizier ---------------------------------------------------------------------------------
def test_vizier_ucac4_maps_columns(server):
    table = ask("vizier:ucac4", backend="vizier", epoch=Time(2000.0, format="jyear"),
                vizier_server=f"http://127.0.0.1:{server.port}")
    path, form = server.requests[0]
    assert path == "/viz-bin/votable"
    assert "I/322A/out" in str(form)
    assert len(table) == 2 and table.meta["catalog"] == "UCAC-4"
    first = table[0]
    assert first["source_id"] == "684-012345"
    assert first["V"] == pytest.approx(11.30, abs=1e-5) and first["V_err"] == pytest.approx(0.04)
    assert first["J"] == pytest.approx(10.10, abs=1e-5) and first["ucac_f"] == pytest.approx(11.2)
    assert first["ra_err"] == pytest.approx(15.0) and first["pmra"] == pytest.approx(12.0)
    again = ask("vizier", backend="vizier", vizier_catalog="ucac4", offline=True,
                vizier_server=f"http://127.0.0.1:{server.port}")
    assert len(again) == 2 and len(server.requests) == 1


def test_vizier_unknown_catalogue():
    with pytest.raises(BhError, match="unknown catalogue 'usnob9'"):
        ask("vizier:usnob9", backend="vizier")


# --- tycho2_local ------------------------------------------------------------------------
def _tycho_files():
    from bh_catalogs.tycho2_local import Settings, index_files
    return index_files(Settings())


needs_tycho = pytest.mark.skipif(not _tycho_files(), reason="no astrometry.net Tycho-2 "
                                 "index files (apt-get install astrometry-data-tycho2-*)")


@needs_tycho
@pytest.mark.parametrize("field, ra, dec, radius", [("hatp32_microobs", 31.2, 46.75, 0.8),
                                                     ("eyuma", 135.619, 49.786, 0.45),
                                                     ("wasp10", 348.99, 31.46, 0.4)])
def test_tycho2_local_matches_the_shared_cut(shared_data, field, ra, dec, radius):
    ref = Table.read(shared_data / "catalogs" / f"tycho2_anet_{field}.csv",
                     format="ascii.csv", comment="#")
    table = ask("tycho2_local", center=SkyCoord(ra * u.deg, dec * u.deg), radius=radius)
    assert len(table) > 0
    refc = SkyCoord(ref["ra_deg"] * u.deg, ref["dec_deg"] * u.deg)
    idx, sep, _ = sky(table).match_to_catalog_sky(refc)
    assert sep.arcsec.max() < 0.01                     # every star we read is in the cut
    assert np.abs(np.asarray(table["VT"]) - ref["vt_mag"][idx]).max() < 1e-3
    installed = {int(f.name.split("-")[2][:2]) + 4100 for f in _tycho_files()}
    expected = np.isin(ref["anet_index_id"], sorted(installed))
    assert set(np.flatnonzero(expected)) <= set(idx)  # and every star of our indexes is read
    assert len(set(idx)) == len(table)                 # no duplicates


@needs_tycho
def test_tycho2_local_epoch_and_errors():
    table = ask("tycho2_local", radius=0.5, epoch=Time(2020.0, format="jyear"), mag_limit=9.0)
    assert len(table) > 0 and np.all(table["VT"] <= 9.0)
    assert np.allclose(table["ra_err"], math.hypot(60.0, 25.0 * 20.0))
    assert table.meta["mag_band"] == "VT" and list(table["VT"]) == sorted(table["VT"])


def test_tycho2_local_without_index_files_says_how_to_install(tmp_path):
    with pytest.raises(BhError, match="apt-get install"):
        ask("tycho2_local", index_dirs=[str(tmp_path)])


# --- file -------------------------------------------------------------------------------
def test_file_reads_the_shared_gaia_cut(shared_data):
    path = shared_data / "catalogs" / "gaia_g10_hatp32_microobs.csv"
    table = ask("file", radius=0.8, path=str(path), ref_epoch=2016.0,
                columns={"ra": "ra_deg", "dec": "dec_deg"})
    raw = Table.read(path, format="ascii.csv", comment="#")
    assert 0 < len(table) <= len(raw)
    assert table.meta["mag_band"] == "G" and "BP" in table.colnames
    assert np.all(table["ref_epoch"] == 2016.0)


def test_file_applies_proper_motions_and_units(shared_data):
    path = shared_data / "eyuma_feder" / "all_refcat2_ey_uma.ecsv"
    center = SkyCoord(135.619 * u.deg, 49.786 * u.deg)
    at_2015 = ask("file", center=center, radius=0.3, path=str(path), ref_epoch=2015.5,
                  epoch=Time(2015.5, format="jyear"))
    at_2025 = ask("file", center=center, radius=0.3, path=str(path), ref_epoch=2015.5,
                  epoch=Time(2025.5, format="jyear"))
    assert len(at_2015) == 187 and "pmra" in at_2015.colnames
    moved = sky(at_2015).separation(sky(at_2025)).to_value(u.mas)
    expected = np.hypot(np.asarray(at_2015["pmra"]), np.asarray(at_2015["pmdec"])) * 10.0
    ok = np.isfinite(expected)
    assert ok.sum() > 100 and np.allclose(moved[ok], expected[ok], rtol=1e-6, atol=1e-3)


def test_file_formats_and_mapping_errors(tmp_path):
    table = Table({"RAJ2000": [31.2, 31.3, 40.0], "DEJ2000": [46.75, 46.8, 10.0],
                   "Vmag": [10.0, 12.0, 9.0], "e_Vmag": [0.01, 0.02, 0.01]})
    fits_path = tmp_path / "cat.fits"
    table.write(fits_path)
    out = ask("file", path=str(fits_path), mag_limit=11.0)
    assert list(out["V"]) == [10.0] and list(out["V_err"]) == [0.01]
    with pytest.raises(BhError, match="mapped column 'nope'"):
        ask("file", path=str(fits_path), columns={"V": "nope"})
    with pytest.raises(BhError, match="does not exist"):
        ask("file", path=str(tmp_path / "missing.csv"))
    Table({"a": [1.0], "b": [2.0]}).write(tmp_path / "bare.ecsv")
    with pytest.raises(BhError, match="no RA/Dec columns"):
        ask("file", path=str(tmp_path / "bare.ecsv"))


# --- several catalogues at once (astrometry's catalog_merge) ------------------------------
def _at(east_arcsec=0.0, north_arcsec=0.0, center=CENTER):
    """A position offset from ``center`` by small angles (arcsec)."""
    c = center.icrs
    return (c.ra.deg + east_arcsec / 3600.0 / math.cos(c.dec.radian),
            c.dec.deg + north_arcsec / 3600.0)


def _catalogue(path, stars, **extra):
    """A user catalogue file: stars as (east", north", V)."""
    ra, dec = zip(*[_at(e, n) for e, n, _v in stars])
    Table({"ra": ra, "dec": dec, "V": [v for _e, _n, v in stars], **extra}).write(path)
    return str(path)


@pytest.fixture
def two_files(tmp_path):
    """a.ecsv: two stars; b.ecsv: a duplicate of a's first (0.6" off), a distinct star
    3" from a's second, and a star of its own."""
    a = _catalogue(tmp_path / "a.ecsv", [(0, 0, 10.0), (60, 0, 11.0)])
    b = _catalogue(tmp_path / "b.ecsv", [(0.6, 0, 10.1), (60, 3, 12.0), (0, 120, 13.0)],
                   flag=[1, 2, 3])
    return a, b


def _merged(files, **kw):
    from bhcore.refcat import load_reference
    return load_reference(CENTER, 0.1, None, ["file"], {"offline": True},
                          per_catalog={"file": {"files": [{"path": f} for f in files]}},
                          merge=True, **kw)


def test_merge_drops_duplicates_of_the_preferred_catalogue_and_names_each_source(two_files):
    a, b = two_files
    table, name, attempts = _merged([a, b])
    assert name == "file" and len(table) == 4
    assert list(table["catalog"]) == ["file a.ecsv"] * 2 + ["file b.ecsv"] * 2
    centre = sky(table).separation(CENTER).arcsec < 1.0
    assert centre.sum() == 1 and table["mag"][centre][0] == 10.0      # a's star, not b's
    assert table.meta["merged"] == [{"catalog": "file a.ecsv", "stars": 2, "kept": 2},
                                    {"catalog": "file b.ecsv", "stars": 3, "kept": 2}]
    assert "file b.ecsv: 3 stars, 2 kept" in attempts[0][1]
    # common columns only (b's 'flag' is not in a), the main band as 'mag'
    assert "flag" not in table.colnames and "V" in table.colnames
    assert table.meta["mag_band"] == "mag" and set(table["mag_band"]) == {"V"}
    assert table["source_id"].dtype.kind == "U"
    # the other order prefers b: its star near the centre stays, a's goes
    table, _, _ = _merged([b, a])
    centre = sky(table).separation(CENTER).arcsec < 1.0
    assert len(table) == 4 and list(table["catalog"][centre]) == ["file b.ecsv"]
    assert table["mag"][centre][0] == pytest.approx(10.1)


def test_merge_radius_follows_the_quoted_position_errors():
    from bhcore.refcat import merge_catalogs

    def cat(offsets, err):
        ra, dec = zip(*[_at(e, 0) for e in offsets])
        n = len(offsets)
        return Table({"ra": ra, "dec": dec, "ra_err": [err] * n, "dec_err": [err] * n})

    first = cat([0.0], 400.0)
    # 1.5" apart: within 3 sigma of 400 mas errors on both (1.7"), beyond 1" without
    assert len(merge_catalogs([("A", first), ("B", cat([1.5], 400.0))])) == 1
    assert len(merge_catalogs([("A", cat([0.0], np.nan)), ("B", cat([1.5], np.nan))])) == 2
    assert len(merge_catalogs([("A", cat([0.0], np.nan)), ("B", cat([0.9], np.nan))])) == 1
    # huge errors never widen the radius beyond 2"
    assert len(merge_catalogs([("A", cat([0.0], 5000.0)), ("B", cat([2.5], 5000.0))])) == 2
    # stars of one catalogue are never merged with each other
    assert len(merge_catalogs([("A", cat([0.0, 0.3], np.nan))])) == 2


def test_merge_offline_skips_the_catalogue_that_cannot_answer(two_files):
    from bhcore.refcat import CatalogError, load_reference
    a, _b = two_files
    table, name, attempts = load_reference(
        CENTER, 0.1, None, ["gaia", "file"], {"offline": True},
        per_catalog={"file": {"path": a}}, merge=True)
    assert name == "file" and len(table) == 2 and set(table["catalog"]) == {"file a.ecsv"}
    assert attempts[0][0] == "gaia" and "offline" in attempts[0][1]
    assert attempts[1] == ("file", "2 stars, merged (file a.ecsv: 2 stars, 2 kept)")
    with pytest.raises(CatalogError) as err:           # nothing answers: every reason given
        load_reference(CENTER, 0.1, None, ["gaia", "file"], {"offline": True},
                       per_catalog={"file": {"path": a + ".missing"}}, merge=True)
    assert "gaia: gaia: offline" in str(err.value) and "does not exist" in str(err.value)


def test_merge_prefers_gaia_and_compares_positions_at_the_frame_epoch(server, tmp_path):
    from bhcore.refcat import load_reference
    # the fast Gaia star (1000, -500 mas/yr from 2016) with the same motion in the file;
    # Gaia's second star (5 mas/yr) without one; and a star of the file's own
    path = tmp_path / "mine.ecsv"
    Table({"ra": [31.2, 31.25, 31.3], "dec": [46.75, 46.8, 46.7], "V": [9.7, 13.0, 12.0],
           "pmra": [1000.0, np.nan, np.nan], "pmdec": [-500.0, np.nan, np.nan]}).write(path)
    table, name, attempts = load_reference(
        CENTER, 0.2, Time(2026.0, format="jyear"), ["gaia", "file"], {},
        per_catalog={"gaia": gaia_settings(server),
                     "file": {"path": str(path), "ref_epoch": 2016.0}}, merge=True)
    assert name == "gaia+file" and len(table) == 4
    assert list(table["catalog"]) == ["Gaia DR3"] * 3 + ["file mine.ecsv"]
    assert list(table["mag_band"]) == ["G"] * 3 + ["V"]
    assert sky(table[-1:]).separation(SkyCoord(31.3 * u.deg, 46.7 * u.deg)).arcsec < 1e-6
    assert "file mine.ecsv: 3 stars, 1 kept" in attempts[1][1]
    assert table.meta["epoch"] == pytest.approx(2026.0)


def test_file_backend_with_several_files(two_files, tmp_path):
    a, b = two_files
    far = _catalogue(tmp_path / "far.ecsv", [(0, 3600, 9.0)])      # 1 deg away
    missing = str(tmp_path / "missing.ecsv")
    files = [{"path": missing}, {"path": far}, {"path": a}, {"path": b}]
    first = ask("file", radius=0.1, files=files)        # as a chain: the first that answers
    assert len(first) == 2 and first.meta["catalog"] == "file a.ecsv"
    assert "catalog" not in first.colnames
    assert [t["catalog"] for t in first.meta["files_tried"]] == ["file missing.ecsv",
                                                                 "file far.ecsv"]
    merged = ask("file", radius=0.1, files=files, catalog_merge=True)
    assert len(merged) == 4 and merged.meta["backend"] == "file"
    assert [(e["catalog"], e["kept"]) for e in merged.meta["merged"]] == [
        ("file a.ecsv", 2), ("file b.ecsv", 2), ("file missing.ecsv", 0),
        ("file far.ecsv", 0)]
    assert "does not exist" in merged.meta["merged"][2]["error"]
    assert merged.meta["catalog"] == "file a.ecsv + file b.ecsv"
    # path as a list: the files share the settings
    assert len(ask("file", radius=0.1, path=[a, b], catalog_merge=True)) == 4
    with pytest.raises(BhError, match="none of 2 files"):
        ask("file", path=[missing, missing + "2"], catalog_merge=True)
    with pytest.raises(BhError, match="invalid catalogue settings"):
        ask("file", files=[{"columns": {}}])                # every file needs a path


def test_each_file_has_its_own_columns_and_epoch(shared_data):
    """The EY UMa pair: ATLAS-RefCat2 (Gaia DR2 at 2015.5, proper motions, central 20')
    and the Gaia DR3 G<10 cut (2016.0, other column names): two of its stars in the
    cone are RefCat2 stars, dropped; the rest fill the frame's edges."""
    files = [{"path": str(shared_data / "eyuma_feder" / "all_refcat2_ey_uma.ecsv"),
              "ref_epoch": 2015.5},
             {"path": str(shared_data / "catalogs" / "gaia_g10_eyuma.csv"),
              "ref_epoch": 2016.0, "columns": {"ra": "ra_deg", "dec": "dec_deg"}}]
    center = SkyCoord(135.619 * u.deg, 49.786 * u.deg)
    table = ask("file", center=center, radius=0.45, epoch=Time(2018.3, format="jyear"),
                files=files, catalog_merge=True)
    refcat, gaia = (table[table["catalog"] == f"file {n}"]
                    for n in ("all_refcat2_ey_uma.ecsv", "gaia_g10_eyuma.csv"))
    assert len(refcat) == 187 and len(gaia) == 6
    assert {"G", "BP", "RP"} <= set(table.colnames)                # common to both files
    moved = np.isclose(np.asarray(refcat["epoch"], float), 2018.3)   # each at its own
    has_pm = np.isfinite(np.asarray(refcat["pmra"])) & np.isfinite(np.asarray(refcat["pmdec"]))
    assert moved.sum() > 180 and np.array_equal(moved, has_pm)        # epoch: RefCat2 moved,
    assert np.all(np.asarray(gaia["epoch"]) == 2016.0)                # the G<10 cut has no pm
    _, sep, _ = sky(gaia).match_to_catalog_sky(sky(refcat))
    assert sep.arcsec.min() > 2.0                                  # no duplicate left
    assert table.meta["merged"][1] == {"catalog": "file gaia_g10_eyuma.csv", "stars": 8,
                                       "kept": 6}


def test_calibration_never_merges(two_files):
    """Calibration needs one catalogue's photometry: the merge switch (unscoped, so it
    reaches every backend) must not make the file backend merge its files there."""
    from bhcore.results.stage import reference_catalogs
    a, b = two_files
    ra, dec = _at(0, 0)
    sources = Table({"ra": [ra, ra + 0.01], "dec": [dec, dec + 0.01]})
    overrides = {"catalog_merge": True, "file.files": [{"path": a}, {"path": b}]}
    answers = list(reference_catalogs(None, sources, None, overrides, ["file"]))
    assert len(answers) == 1
    name, ref, _note = answers[0]
    assert name == "file" and ref.meta["catalog"] == "file a.ecsv" and len(ref) == 2
    assert "catalog" not in ref.colnames and "merged" not in ref.meta


def test_catalog_merge_is_an_astrometry_setting_of_the_cascade():
    from bhcore.pipeline import resolve_settings
    from bhcore.plugins import plugin_info
    for backend in ("astrometry_scamp", "astrometry_nova"):
        info = plugin_info(load_plugins([backend]), backend)
        assert resolve_settings(backend, info)["catalog_merge"] is False
        assert resolve_settings(backend, info, overrides={"catalog_merge": True})[
            "catalog_merge"] is True
        scoped = resolve_settings(backend, info, overrides={f"{backend}.catalog_merge": True})
        assert scoped["catalog_merge"] is True
