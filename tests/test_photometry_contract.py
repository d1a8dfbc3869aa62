"""Every installed, implemented photometry backend passes the photometry contract.

The backends are found through their entry points (nothing is hard-coded), so a new
or third-party backend is checked as soon as it is installed and says
``implemented=True``. Engine backends skip only when one of their executables is
missing.
"""
from __future__ import annotations

import shutil

import pytest

from bhcore.errors import PluginError
from bhcore.plugins import installed_entry_points, load_plugins, plugin_info
from bhcore.testing.contract import CONTRACT_CHECKS, run_check


def _photometry_backends() -> list[str]:
    names = []
    for name in sorted(installed_entry_points()):
        try:
            info = plugin_info(load_plugins([name]), name)
        except PluginError:         # a broken plugin is reported by the plugin tests
            continue
        if info.stage == "photometry" and info.implemented:
            names.append(name)
    return names


BACKENDS = _photometry_backends()


def _missing_executables(backend: str) -> list[str]:
    info = plugin_info(load_plugins([backend]), backend)
    return [exe.name for exe in info.executables if shutil.which(exe.name) is None]


@pytest.mark.parametrize("check", list(CONTRACT_CHECKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_photometry_contract(backend, check):
    missing = _missing_executables(backend)
    if missing:
        pytest.skip(f"{backend} needs {', '.join(missing)}, which is not installed")
    figures = run_check(backend, check)
    print(f"{backend} {check}: {figures}")


def test_the_built_in_engines_are_checked():
    assert {"phot_sex", "phot_daophot"} <= set(BACKENDS)
