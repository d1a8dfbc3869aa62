"""Scale-out on Dask: the same stage functions on a cluster give the same products.

The cluster is a LocalCluster on loopback (127.0.0.1 only, no dashboard); the
command line reaches it through ``--executor dask --scheduler tcp://...``.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from astropy.io import fits

from bhcore.batch import audit_products, run_batch
from bhcore.executors import DaskExecutor, make_executor
from bhcore.errors import ConfigError
from bhcore.registry import Registry
from bhcore.runner import DEMO_ONAME
from bhcore.testing import make_night

distributed = pytest.importorskip("distributed")
OFFLINE = {"offline": True}          # no catalogue or solver goes online
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def demo_obs():
    registry = Registry()
    registry.ensure_builtin()
    return registry.get(DEMO_ONAME)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:         # workers never use the user's home
        mp.setenv("BHCORE_HOME", str(tmp_path_factory.mktemp("dask-home")))
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None) as local:
            yield local


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("night")
    return make_night(out_dir=folder, n_frames=3, shape=(64, 64), n_stars=30, seed=31).paths


def manifests(out_dir) -> dict:
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted(Path(out_dir).glob("*/*.manifest.json"))}


def outcome(out_dir) -> dict:
    """Status and products of every frame (notes name each process's home folder)."""
    return {k: (v["status"], v["products"]) for k, v in manifests(out_dir).items()}


def test_dask_cluster_gives_the_products_of_a_local_run(cluster, night, tmp_path):
    obs = demo_obs()      # the demo camera with astrometry unavailable: every stage runs
    obs = dataclasses.replace(obs, backends=MappingProxyType(
        {**obs.backends, "astrometry": ("astrometry_absent",)}))
    local = run_batch(night, obs, tmp_path / "local", workers=1, overrides=OFFLINE)
    with DaskExecutor(cluster.scheduler_address) as executor:
        assert executor.workers == 2 and executor.scheduler.startswith("tcp://127.0.0.1:")
        remote = run_batch(night, obs, tmp_path / "dask", executor=executor,
                           overrides=OFFLINE)
    assert remote.executor == "dask" and remote.done == local.done == len(night)
    assert outcome(tmp_path / "dask") == outcome(tmp_path / "local")
    assert audit_products(tmp_path / "dask") == []
    for name, manifest in manifests(tmp_path / "dask").items():
        header = manifest["products"]["header"]
        np.testing.assert_array_equal(fits.getdata(tmp_path / "dask" / name / header),
                                      fits.getdata(tmp_path / "local" / name / header))
        for stage, product in manifest["products"].items():
            assert (tmp_path / "dask" / name / product).stat().st_size > 0, stage


def test_cli_runs_on_a_dask_scheduler(cluster, night, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bhcore", "run", *map(str, night), "--observatory", DEMO_ONAME,
         "--out", str(tmp_path / "out"), "--executor", "dask", "--scheduler",
         cluster.scheduler_address, "--set", "offline=true"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert "2 dask worker(s)" in result.stdout, result.stderr
    assert len(manifests(tmp_path / "out")) == len(night)
    assert "Traceback" not in result.stderr


def test_executor_choices_are_checked():
    with pytest.raises(ConfigError, match="--scheduler needs --executor dask"):
        make_executor("local", 2, "tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor("slurm", 2)
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        DaskExecutor("tcp://127.0.0.1:9", workers=1, timeout="1s")
