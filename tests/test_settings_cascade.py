"""Settings cascade: plugin defaults < user config < observatory < CLI overrides."""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from pydantic import BaseModel

from bhcore.errors import SettingsError
from bhcore.frame import Frame
from bhcore.pipeline import resolve_settings
from bhcore.plugins import PluginInfo
from bhcore.registry.settings import ObservatorySettings


class ToySettings(BaseModel):
    fwhm: float = 3.0
    threshold: float = 5.0
    iterations: int = 2
    mode: str = "psf"


INFO = PluginInfo(name="toy", stage="photometry", version="1", settings_model=ToySettings)


class _NoLines:
    """An obs.info with no lines: every camera value falls back to the header."""

    def get(self, keyword):
        return None


def _obs(**plugin_settings):
    return ObservatorySettings(oname="TEST_CAM", obsinfo=_NoLines(),
                               plugin_settings=plugin_settings)


def _write_user_config(monkeypatch, tmp_path, data):
    monkeypatch.setenv("BHCORE_HOME", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(data))


def test_plugin_defaults_when_nothing_else_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("BHCORE_HOME", str(tmp_path))
    s = resolve_settings("toy", INFO)
    assert (s["fwhm"], s["threshold"], s["iterations"], s["mode"]) == (3.0, 5.0, 2, "psf")
    assert s["backend"] == "toy"


def test_user_config_beats_defaults_and_is_scoped(tmp_path, monkeypatch):
    _write_user_config(monkeypatch, tmp_path, {"toy.fwhm": 4.0, "other.fwhm": 9.0})
    s = resolve_settings("toy", INFO)
    assert s["fwhm"] == 4.0 and s["threshold"] == 5.0


def test_observatory_beats_user_config(tmp_path, monkeypatch):
    _write_user_config(monkeypatch, tmp_path, {"toy.fwhm": 4.0, "toy.threshold": 6.0})
    s = resolve_settings("toy", INFO, obs=_obs(**{"toy.fwhm": 2.5}))
    assert s["fwhm"] == 2.5 and s["threshold"] == 6.0


def test_cli_overrides_beat_everything(tmp_path, monkeypatch):
    _write_user_config(monkeypatch, tmp_path, {"toy.fwhm": 4.0})
    s = resolve_settings("toy", INFO, obs=_obs(**{"toy.fwhm": 2.5}),
                         overrides={"toy.fwhm": 1.5, "toy.mode": "aperture"})
    assert s["fwhm"] == 1.5 and s["mode"] == "aperture"


def test_camera_values_come_from_the_standardised_header(tmp_path, monkeypatch):
    monkeypatch.setenv("BHCORE_HOME", str(tmp_path))
    header = fits.Header({"GAIN": 1.6, "RDNOISE": 5.6, "SATURATE": 60000, "EXPTIME": 30.0})
    frame = Frame(data=np.zeros((4, 4)), header=header)
    s = resolve_settings("toy", INFO, obs=_obs(), frame=frame)
    assert (s["gain"], s["read_noise_adu"], s["saturation"], s["exptime"]) == \
        (1.6, 5.6, 60000.0, 30.0)


def test_invalid_setting_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BHCORE_HOME", str(tmp_path))
    with pytest.raises(SettingsError, match="toy: invalid settings"):
        resolve_settings("toy", INFO, overrides={"toy.iterations": "many"})


def test_broken_user_config_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BHCORE_HOME", str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SettingsError) as err:
        resolve_settings("toy", INFO)
    assert str(tmp_path / "config.json") in str(err.value)
