"""Shared test fixtures and the CI rule: in CI a skipped test is a failed install.

CI installs every engine and has ../shared/data beside the checkout, so any skip
there means an install step is missing. Locally, tests that need an engine or the
shared data skip with a reason.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` read in place; skips with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is beside CI checkouts)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own BHCORE_HOME so no test touches the user's registry."""
    home = tmp_path_factory.mktemp("bhcore-home")
    monkeypatch.setenv("BHCORE_HOME", str(home))
    monkeypatch.delenv("BHCORE_REGISTRY_URL", raising=False)
    yield


LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", socket.gethostname()}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any connection or name lookup that leaves this machine fails the test.

    Loopback stays open (local test servers, Dask LocalCluster). Attempts are also
    recorded and asserted at teardown, so code that swallows the error still fails.
    """
    attempts: list = []
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in LOCAL_HOSTS:
            attempts.append(address)
            raise RuntimeError(f"network use in a test: connect to {address}")
        return real_connect(sock, address)

    def lookup(host, *args, **kwargs):
        if host is not None and host not in LOCAL_HOSTS:
            attempts.append(host)
            raise RuntimeError(f"network use in a test: name lookup of {host}")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    if os.environ.get("CI") and skipped:
        terminalreporter.write_line(
            f"CI: {len(skipped)} test(s) skipped; in CI every engine and the shared data "
            "must be installed, so a skip is an install failure:", red=True)
        for report in skipped:
            terminalreporter.write_line(f"  {report.nodeid}: {report.longrepr}", red=True)


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        session.exitstatus = 1
