"""MLflow store resolution, provenance tags and DVC-compatible hashes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from timbrelab import tracking


@pytest.fixture
def repo(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return root


def test_tracking_uri_comes_from_the_repo_root_not_the_cwd(repo, monkeypatch):
    monkeypatch.chdir(repo / "sub" / "deeper")
    assert tracking.tracking_uri() == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    assert tracking.artifact_location() == (repo.resolve() / "mlartifacts").as_uri()


def test_dvc_temporary_experiment_copies_log_to_the_parent_store(repo, monkeypatch):
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    assert tracking.repo_root() == copy.resolve()
    assert tracking.tracking_uri() == f"sqlite:///{repo.resolve() / 'mlflow.db'}"


def test_env_overrides_the_store(repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env=env)


def test_dirty_flag_ignores_files_dvc_rewrites(repo):
    (repo / "params.yaml").write_text("a: 1\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert tracking.git_tags(repo) == {"git.commit": head, "git.dirty": "false"}
    (repo / "params.yaml").write_text("a: 2\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert tracking.git_tags(repo)["git.dirty"] == "false"
    (repo / "code.py").write_text("x = 2\n")
    assert tracking.git_tags(repo)["git.dirty"] == "true"


def test_dir_md5_equals_what_dvc_computes(tmp_path):
    root = tmp_path / "r"
    data = root / "data"
    (data / "nested").mkdir(parents=True)
    (data / "a.bin").write_bytes(os.urandom(3000))
    (data / "nested" / "b.txt").write_text("hello\r\nworld\n")  # CRLF: DVC 3 hashes bytes as they are
    (data / "Z.json").write_text("{}")
    _git(root, "init", "-q")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=root, check=True, capture_output=True)
    subprocess.run([dvc, "add", "-q", "data"], cwd=root, check=True, capture_output=True)
    expected = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert tracking.dvc_dir_md5(data) == expected


def test_flatten_params():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


def test_stage_run_logs_params_tags_and_status(repo, monkeypatch):
    from mlflow.tracking import MlflowClient

    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"demo": {"cmd": "x", "deps": ["code.py"]}}}))
    (repo / "code.py").write_text("print('hi')\n")
    monkeypatch.chdir(repo)
    with tracking.stage_run("demo", {"section": {"lr": 0.1}}) as run:
        run.log_metrics({"items": 3})
    with pytest.raises(RuntimeError):
        with tracking.stage_run("demo", {}):
            raise RuntimeError("boom")
    client = MlflowClient(tracking_uri=f"sqlite:///{repo.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    assert experiment.artifact_location == (repo.resolve() / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
    ok = runs[0]
    assert ok.data.params == {"section.lr": "0.1"}
    assert ok.data.metrics == {"items": 3.0}
    assert ok.data.tags["stage"] == "demo"
    assert ok.data.tags["dvc.dep.code.py"] == tracking.file_md5(repo / "code.py")
    assert ok.data.tags["lib.numpy"] != "not installed"


def test_dirty_flag_ignores_declared_outputs_but_not_code(repo):
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {
        "cmd": "x", "outs": ["data/raw/thing"], "metrics": [{"reports/m.json": {"cache": False}}]}}}))
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    (repo / "data" / "raw").mkdir(parents=True)
    (repo / "data" / ".gitignore").write_text("/raw\n")
    (repo / "data" / "raw" / ".gitignore").write_text("/thing\n")
    (repo / "reports").mkdir()
    (repo / "reports" / "m.json").write_text("{}")
    assert tracking.git_tags(repo)["git.dirty"] == "false"
    (repo / "reports" / "notes.txt").write_text("not a DVC output")
    assert tracking.git_tags(repo)["git.dirty"] == "true"

