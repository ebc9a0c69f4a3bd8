"""End-to-end DVC workflows beyond `dvc repro`: the experiments queue with the Hydra composition (each
queued experiment runs in a temporary copy under .dvc/tmp/exps/ and logs to the repository's MLflow
store) and a local-directory DVC remote (push, git clone, pull). Each scenario works in a fresh copy of
the repository of its own; the commands are read from the "Experiments and remotes" blocks of
docs/experiments.md (exp-queue, dvc-remote: tests/readme.py)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import readme
import yaml
from conftest import BIN, copy_repository, run, tool_env

from timbrelab import dvcfiles, tracking

pytestmark = pytest.mark.slow

LRS = (0.003, 0.0003)  # not the committed 0.001: an experiment equal to the baseline would run no stage
DATA_STAGES = ("acquire_cello", "acquire_nsynth", "acquire_source", "prepare", "features")
DOWNSTREAM_OF_TRAIN_DDSP = {"train_ddsp", "evaluate_ddsp", "report"}
UP_TO_DATE = "Data and pipelines are up to date."


def dvc(repo: Path, *args: str, check: bool = True):
    return run([str(BIN / "dvc"), *args], repo, check=check)


@pytest.fixture
def built(tmp_path, tiny_repo) -> Path:
    """A fresh copy on the tiny profile with `dvc repro` done and everything committed. Its DVC cache
    starts as a copy of tiny_repo's, so `dvc repro` restores each stage from DVC's run cache in seconds
    (a stage the cache does not hold simply runs)."""
    repo = copy_repository(tmp_path / "timbrelab")
    run([str(BIN / "timbrelab"), "params", "profile=tiny"], repo)
    shutil.copytree(tiny_repo.path / ".dvc" / "cache", repo / ".dvc" / "cache")
    dvc(repo, "repro")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "tiny pipeline built"], repo)
    return repo


def _ran_stages(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def _readme(start: str, **substitute: str) -> list[str]:
    """The exp-queue command that starts with ``start``, with BIN's executable."""
    return readme.command("exp-queue", start, substitute).venv_argv


def _queue_statuses(repo: Path) -> dict[str, str]:
    """``{name or task id: status}`` from the table `dvc queue status` prints."""
    lines = run(_readme("dvc queue status"), repo).stdout.splitlines()
    rows = [line.split() for line in lines[1:] if line.strip() and not line.startswith("Worker status")]
    return {row[1] if len(row) == 5 else row[0]: row[-1] for row in rows}


def _wait_for_queue(repo: Path, timeout: float = 1500) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = _queue_statuses(repo)
        if not {"Queued", "Running"} & set(statuses.values()):
            return statuses
        time.sleep(5)
    raise AssertionError(f"the queue did not finish within {timeout} s: {statuses}")


def _train_ddsp_runs(client) -> dict[str, object]:
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    if experiment is None:
        return {}
    return {run.info.run_id: run for run in client.search_runs([experiment.experiment_id], "tags.stage = 'train_ddsp'")}


def test_queued_hydra_sweep_runs_downstream_stages_and_logs_to_the_repository_store(built):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{built / 'mlflow.db'}")
    before = set(_train_ddsp_runs(client))
    workspace = {path: dvcfiles.dvc_md5(built / path) for path in ("models/ddsp", "params.yaml", "dvc.lock")}
    head = run(["git", "rev-parse", "HEAD"], built).stdout.strip()

    # A Hydra sweep over the key path: one queued experiment per value, params.yaml composed from conf/.
    queue = _readme("dvc exp run --queue")
    assert f"train_ddsp.model.lr={','.join(str(lr) for lr in LRS)}" in queue
    queued = run(queue, built).stdout
    names = re.findall(r"Queued experiment '([^']+)'", queued)
    assert len(names) == len(LRS), queued
    lr_of = dict(zip(names, LRS, strict=True))
    try:
        assert "Started '1' new experiments task queue worker" in run(_readme("dvc queue start"), built).stdout
        statuses = _wait_for_queue(built)
    finally:
        run(_readme("dvc queue stop"), built, check=False)
    logs = {name: run(_readme("dvc queue logs", **{"<name>": name}), built, check=False).stdout for name in names}
    for name in names:
        assert statuses.get(name) == "Success", f"{name}: {statuses}\n{logs[name][-4000:]}"
        # Only what depends on train_ddsp reran; the data stages were restored, not rerun.
        assert _ran_stages(logs[name]) == DOWNSTREAM_OF_TRAIN_DDSP, logs[name][-4000:]
        for stage in DATA_STAGES:
            assert f"Stage '{stage}' didn't change, skipping" in logs[name]

    # The experiments ran in temporary copies: the workspace is untouched (and still up to date).
    assert {path: dvcfiles.dvc_md5(built / path) for path in workspace} == workspace
    assert UP_TO_DATE in dvc(built, "status").stdout

    # `dvc exp show --json`: both experiments on HEAD, with their lr and their own train_ddsp metrics.
    shown = json.loads(run(_readme("dvc exp show --json"), built).stdout)
    baseline = next(entry for entry in shown if entry["rev"] == head)
    revs = {exp["name"]: exp["revs"][0]["data"] for exp in baseline["experiments"] or []}
    assert set(revs) == set(names), sorted(revs)
    metric_keys = set(json.loads((built / "reports/metrics/train_ddsp.json").read_text()))
    test_losses = set()
    for name, data in revs.items():
        assert data["params"]["params.yaml"]["data"]["train_ddsp"]["model"]["lr"] == lr_of[name]
        metrics = data["metrics"]["reports/metrics/train_ddsp.json"]["data"]
        assert set(metrics) == metric_keys
        test_losses.add(metrics["test/loss"])
    assert len(test_losses) == len(names), "both experiments report the same test loss: did lr reach training?"

    # MLflow: the repository's store (not one inside .dvc/tmp/exps) holds one FINISHED train_ddsp run
    # per experiment, tagged with its name, HEAD and the hash of the model the experiment recorded.
    assert not list((built / ".dvc" / "tmp").rglob("mlflow.db"))
    new = {run_id: r for run_id, r in _train_ddsp_runs(client).items() if run_id not in before}
    by_name = {r.data.tags.get("dvc.dvc_exp_name"): r for r in new.values()}
    assert set(by_name) == set(names), {r.info.run_id: r.data.tags for r in new.values()}
    import torch

    for name, r in by_name.items():
        assert r.info.status == "FINISHED"
        assert float(r.data.params["model.lr"]) == lr_of[name]
        assert r.data.tags["dvc.dvc_exp_baseline_rev"] == head == r.data.tags["git.commit"]
        assert r.data.tags["git.dirty"] == "false"
        assert r.data.tags["dvc.out.models/ddsp"] == revs[name]["outs"]["models/ddsp"]["hash"]
        assert r.info.artifact_uri.startswith((built / "mlartifacts").resolve().as_uri())
        with tempfile.TemporaryDirectory() as tmp:
            payload = torch.load(client.download_artifacts(r.info.run_id, "model/model.pt", tmp), weights_only=True)
        assert payload["model_type"] == "ddsp" and payload["train_config"]["model"]["lr"] == lr_of[name]


def test_local_remote_push_then_clone_and_pull(built, tmp_path):
    """The dvc-remote block as one bash script (the remote, the repository and the clone's folder
    substituted): push, commit the remote's config, clone, pull, status."""
    import subprocess

    remote, clone = tmp_path / "remote", tmp_path / "clone"
    script = readme.block("dvc-remote", {"/path/to/dvc-remote": str(remote), "<repository>": str(built),
                                         "elsewhere": str(clone)})
    assert not (built / ".dvc" / "config.local").exists()
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=built, env=tool_env(built), check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    output = done.stdout   # stderr interleaved, in order
    assert done.returncode == 0, output
    assert re.search(r"\d+ files? pushed", output), output
    assert any(path.is_file() for path in (remote / "files" / "md5").rglob("*"))
    assert "ERROR" not in output, output
    assert output.rstrip().endswith(UP_TO_DATE), output[-2000:]     # the clone's `dvc status`, the last line
    config = (clone / ".dvc" / "config").read_text()
    assert "reflink,hardlink" in config and "remote = local" in config

    # Every output dvc.lock records is back, byte for byte; the metrics (in git) came with the clone.
    outs = dvcfiles.lock_outs(clone)
    assert "models/ddsp" in outs and "data/features" in outs
    for path, (stage, md5) in outs.items():
        assert dvcfiles.dvc_md5(clone / path) == md5 == dvcfiles.dvc_md5(built / path), (stage, path)
    for path in ("models/ddsp/model.pt", "reports/metrics.json", "reports/metrics/train_ddsp.json"):
        assert dvcfiles.file_md5(clone / path) == dvcfiles.file_md5(built / path), path
    assert yaml.safe_load((clone / "dvc.lock").read_text()) == yaml.safe_load((built / "dvc.lock").read_text())
