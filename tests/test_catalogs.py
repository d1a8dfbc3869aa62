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
