"""`timbrelab-train`: the Hydra app runs the same stage functions with the params.yaml key paths."""

from __future__ import annotations

import json

import pytest
from conftest import BIN, copy_repository, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repository(tmp_path_factory.mktemp("hydra") / "timbrelab")


def _runs(repo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("timbrelab")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_single_run_takes_params_key_paths(repo):
    run([str(BIN / "timbrelab-train"), "stage=acquire_source", "profile=tiny", "acquire_source.n_phrases=2"], repo)
    manifest = json.loads((repo / "data/raw/source/manifest.json").read_text())
    assert len(manifest["items"]) == 2
    last = _runs(repo)[-1]
    assert last.data.tags["stage"] == "acquire_source"
    assert "acquire_source.n_phrases=2" in last.data.tags["hydra.overrides"]
    assert last.data.params["n_phrases"] == "2"


def test_multirun_sweep_logs_one_run_per_point(repo):
    before = len(_runs(repo))
    run([str(BIN / "timbrelab-train"), "-m", "stage=acquire_source", "profile=tiny",
         "acquire_source.n_phrases=1,3"], repo)
    runs = _runs(repo)[before:]
    assert sorted(r.data.params["n_phrases"] for r in runs) == ["1", "3"]
    assert {r.data.tags["hydra.job_num"] for r in runs} == {"0", "1"}
    assert len({r.data.tags["hydra.sweep_dir"] for r in runs}) == 1


def test_bad_key_is_one_line_exit_2(repo):
    for override, named in (("acquire_source.n_phrases=many", "acquire_source.n_phrases"), ("stage=nope", "nope")):
        result = run([str(BIN / "timbrelab-train"), "stage=acquire_source", override], repo, check=False)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], result.stderr
