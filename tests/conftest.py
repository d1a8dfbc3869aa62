"""Shared test fixtures and the CI rule: in CI a skipped test is a failed install.

CI installs every engine and has ../shared/data beside the checkout, so any skip
there means an install step is missing. Locally, tests that need an engine or the
shared data skip with a reason.
"""
from __future__ import annotations

import os
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
