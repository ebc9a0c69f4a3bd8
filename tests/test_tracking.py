"""MLflow store resolution, provenance tags and DVC-compatible hashes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from timbrelab import dvcfiles, paths, tracking


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
    assert paths.repo_root() == copy.resolve()
    assert tracking.tracking_uri() == f"sqlite:///{repo.resolve() / 'mlflow.db'}"


def test_queued_experiments_work_in_their_copy_though_dvc_root_names_the_parent(repo, monkeypatch):
    """DVC runs a queued (or --temp) experiment's stages in a copy under .dvc/tmp/exps/ with $DVC_ROOT
    set to the repository it came from: params, outputs and git state are the copy's, the store the parent's."""
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.chdir(copy)
    assert paths.repo_root() == copy.resolve()
    assert tracking.tracking_uri() == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    monkeypatch.chdir(repo / "sub" / "deeper")  # anywhere else $DVC_ROOT is the repository
    assert paths.repo_root() == repo.resolve()


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
    assert dvcfiles.dvc_dir_md5(data) == expected


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
    assert ok.data.tags["dvc.dep.code.py"] == dvcfiles.file_md5(repo / "code.py")
    assert ok.data.tags["lib.numpy"] != "not installed"


# Each process: import everything, say so, wait for "go", then open a stage run on the fresh store.
_RACER = """
import sys, time
from pathlib import Path
import mlflow.tracking
from timbrelab import tracking
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
with tracking.stage_run("demo", {"i": sys.argv[1]}) as run:
    run.log_metrics({"m": 1})
"""


@pytest.mark.slow
def test_parallel_stages_can_create_a_fresh_sqlite_store(repo, tmp_path):
    """Parallel DVC queue workers on a repository without mlflow.db: without first_use_lock, MLflow's
    schema migration in two processes at once fails one of them (5 of 6 tries with 2 processes)."""
    go = tmp_path / "go"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))},
           "PYTHONPATH": str(Path(tracking.__file__).parents[1])}
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / f"ready{i}"), str(go)], cwd=repo,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for i in range(3)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(3)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [racer.communicate(timeout=180)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0], "\n".join(
        ["a stage run failed on a fresh sqlite store:", *(o[-1500:] for o in outputs)])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    assert len(client.search_runs([experiment.experiment_id])) == 3


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



# ---------------------------------------------------------------------------------------------
# foreach stages, output hashes, links between runs

FOREACH_DO = {
    "cmd": "python -m ev ${key} --model ${item.model}",
    "deps": ["code/${key}.py", "${item.model}"],
    "params": ["ev.metrics", "ev.systems.${key}"],
    "outs": ["out/${key}"],
    "metrics": [{"reports/metrics/ev_${key}.json": {"cache": False}}],
    "plots": [{"reports/plots/ev_${key}.json": {"x": "step"}}],
}
SYSTEMS = {"ddsp": {"model": "models/ddsp"}, "identity": {"model": "code/identity.py"}}


def _dvc_yaml(root: Path, stages: dict) -> None:
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))


def _expected_ddsp() -> dict:
    return {
        "cmd": "python -m ev ddsp --model models/ddsp",
        "deps": ["code/ddsp.py", "models/ddsp"],
        "params": ["ev.metrics", "ev.systems.ddsp"],
        "outs": ["out/ddsp"],
        "metrics": [{"reports/metrics/ev_ddsp.json": {"cache": False}}],
        "plots": [{"reports/plots/ev_ddsp.json": {"x": "step"}}],
    }


def test_foreach_over_a_literal_dict(repo):
    _dvc_yaml(repo, {"plain": {"cmd": "x", "deps": ["a.py"]}, "ev": {"foreach": SYSTEMS, "do": FOREACH_DO}})
    assert dvcfiles.stage_spec(repo, "ev@ddsp") == _expected_ddsp()
    assert dvcfiles.stage_deps(repo, "ev@identity") == ["code/identity.py", "code/identity.py"]
    assert dvcfiles.stage_outs(repo, "ev@identity") == [
        "out/identity", "reports/metrics/ev_identity.json", "reports/plots/ev_identity.json"]
    assert dvcfiles.stage_deps(repo, "plain") == ["a.py"]
    for unknown in ("ev", "ev@nope", "nope", "plain@x"):
        assert dvcfiles.stage_spec(repo, unknown) == {}
        assert dvcfiles.stage_deps(repo, unknown) == []


def test_foreach_over_a_params_dict(repo):
    (repo / "params.yaml").write_text(yaml.safe_dump({"ev": {"metrics": ["f0"], "systems": SYSTEMS}}))
    _dvc_yaml(repo, {"ev": {"foreach": "${ev.systems}", "do": FOREACH_DO}})
    assert set(dvcfiles.dvc_stages(repo)) == {"ev@ddsp", "ev@identity"}
    assert dvcfiles.stage_spec(repo, "ev@ddsp") == _expected_ddsp()


def test_foreach_over_lists_and_nested_fields(repo):
    _dvc_yaml(repo, {
        "simple": {"foreach": ["a", "b"], "do": {"cmd": "run ${item}", "outs": ["out/${item}.txt"]}},
        "composite": {"foreach": [{"m": {"n": 1, "flag": True}}, {"m": {"n": 2, "flag": False}}],
                      "do": {"cmd": "run ${item.m.n} ${item.m.flag}", "deps": ["${item.m.n}"]}},
    })
    assert set(dvcfiles.dvc_stages(repo)) == {"simple@a", "simple@b", "composite@0", "composite@1"}
    assert dvcfiles.stage_spec(repo, "simple@b") == {"cmd": "run b", "outs": ["out/b.txt"]}
    # A string that is one reference takes the value itself (as DVC does); inside a string, DVC's bools.
    assert dvcfiles.stage_spec(repo, "composite@1") == {"cmd": "run 2 false", "deps": [2]}
    assert dvcfiles.stage_deps(repo, "composite@1") == ["2"]


@pytest.mark.parametrize("stage, match", [
    ({"foreach": SYSTEMS, "do": {"cmd": "run ${item.nope}"}}, r"dvc\.yaml: stage 'ev@ddsp'.*item\.nope"),
    ({"foreach": "${ev.missing}", "do": {"cmd": "x"}}, r"dvc\.yaml: stage 'ev'.*ev\.missing"),
    ({"foreach": ["a"], "do": {"cmd": "run ${key}"}}, r"dvc\.yaml: stage 'ev@a'.*\$\{key\}"),  # lists have no key
    ({"foreach": 3, "do": {"cmd": "x"}}, r"dvc\.yaml: stage 'ev'.*dict or a list"),
    ({"foreach": SYSTEMS, "do": {"cmd": "run ${item}"}}, r"dvc\.yaml: stage 'ev@ddsp'.*inside a string"),
])
def test_unresolvable_references_name_dvc_yaml_and_the_stage(repo, stage, match):
    (repo / "params.yaml").write_text(yaml.safe_dump({"ev": {"systems": SYSTEMS}}))
    _dvc_yaml(repo, {"ev": stage})
    with pytest.raises(ValueError, match=match):
        dvcfiles.stage_spec(repo, "ev@ddsp")


def test_dvc_written_paths_cover_expanded_foreach_outputs(repo):
    _dvc_yaml(repo, {"ev": {"foreach": SYSTEMS, "do": FOREACH_DO}})
    written = tracking.dvc_written_paths(repo)
    for key in SYSTEMS:
        assert {f"out/{key}", f"reports/metrics/ev_{key}.json", f"reports/plots/ev_{key}.json"} <= written
    assert {"out/.gitignore", "reports/metrics/.gitignore", "reports/.gitignore"} <= written
    assert not any("${" in path for path in written)


OUT_STAGES = {
    # a directory with names whose string order differs from their path order (a-b < a/b), an empty
    # file and an empty directory; a file with CRLF; a metrics file
    "make": {"cmd": "mkdir -p d/a d/a-b d/empty && printf x > d/a/b && : > d/a-b/c && printf 'l\\r\\n' > d/A.txt"
                    " && printf 1 > f.txt && echo '{\"n\": 1}' > m.json",
             "outs": ["d", "f.txt"], "metrics": [{"m.json": {"cache": False}}]},
    "each": {"foreach": {"p": {"n": 1}, "q": {"n": 2}},
             "do": {"cmd": "mkdir -p e/${key} && printf ${item.n} > e/${key}/v && printf ${key} > e/${key}.txt",
                    "deps": ["f.txt"], "outs": ["e/${key}", "e/${key}.txt"]}},
}


def test_out_md5s_equal_what_dvc_writes_to_dvc_lock(tmp_path):
    from conftest import BIN, run

    root = tmp_path / "proj"
    root.mkdir()
    _dvc_yaml(root, OUT_STAGES)
    run(["git", "init", "-q"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "repro", "-q"], root)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"make", "each@p", "each@q"}
    for stage, entry in lock.items():
        assert dvcfiles.out_md5s(root, stage) == {out["path"]: out["md5"] for out in entry["outs"]}, stage
    assert dvcfiles.out_md5s(root, "make")["d"].endswith(".dir")
    (root / "f.txt").unlink()
    assert "f.txt" not in dvcfiles.out_md5s(root, "make")  # only outputs that exist


def _runs(tmp_path, stage: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    return client, client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'",
                                      order_by=["attributes.start_time DESC"])


def _lock(root: Path, stages: dict[str, dict[str, str]]) -> None:
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        name: {"cmd": "x", "outs": [{"path": path, "hash": "md5", "md5": md5} for path, md5 in outs.items()]}
        for name, outs in stages.items()}}))


def test_stage_runs_link_to_the_runs_that_produced_their_inputs(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(repo)
    _dvc_yaml(repo, {"produce": {"cmd": "x", "outs": ["models/m"]},
                     "consume": {"cmd": "x", "deps": ["models/m", "code.py"]},
                     "report": {"cmd": "x", "deps": ["code.py"]}})
    (repo / "code.py").write_text("x = 1\n")
    producers = {}
    for md5, fail in (("aaa.dir", False), ("aaa.dir", False), ("aaa.dir", True), ("bbb.dir", False)):
        with contextlib.suppress(RuntimeError), tracking.stage_run("produce", {}) as run:
            run.set_tags({"dvc.out.models/m": md5})
            producers.setdefault(md5, []).append(run.run_id)
            if fail:
                raise RuntimeError("a FAILED run is never linked")
        time.sleep(0.01)
    with tracking.stage_run("ev@x", {}) as run:
        run.set_tags({"dvc.out.reports/eval/x": "eee.dir"})
    _lock(repo, {"produce": {"models/m": "aaa.dir"}, "ev@x": {"reports/eval/x": "eee.dir"}})

    with tracking.stage_run("consume", {}):
        pass
    with tracking.stage_run("report", {}, link_paths=["models/m", "reports/eval/x", "not/in/lock"]):
        pass
    _, (consumer,) = _runs(tmp_path, "consume")
    assert consumer.data.tags["run.produce"] == producers["aaa.dir"][1]  # newest FINISHED, not bbb's
    assert consumer.data.tags["dvc.dep.models/m"] == "aaa.dir"
    _, (report,) = _runs(tmp_path, "report")
    ev_run = _runs(tmp_path, "ev@x")[1][0].info.run_id
    assert {k: v for k, v in report.data.tags.items() if k.startswith("run.")} == {
        "run.produce": producers["aaa.dir"][1], "run.ev_x": ev_run}

    _lock(repo, {"produce": {"models/m": "stale.dir"}})
    with tracking.stage_run("consume", {}):
        pass
    client, (stale, _) = _runs(tmp_path, "consume")
    assert not any(key.startswith("run.") for key in stale.data.tags)
    _lock(repo, {"produce": {"models/m": "bbb.dir"}})
    assert tracking.upstream_runs(client, repo, ["models/m", "code.py"]) == {"run.produce": producers["bbb.dir"][0]}


def test_upstream_links_never_fail_a_stage(repo):
    _lock(repo, {"produce": {"models/m": "aaa.dir"}})

    class Broken:
        def get_experiment_by_name(self, name):
            return type("Experiment", (), {"experiment_id": "1"})()

        def search_runs(self, *args, **kwargs):
            raise RuntimeError("store down")

    class NoExperiment(Broken):
        def get_experiment_by_name(self, name):
            raise RuntimeError("store down")

    assert tracking.upstream_runs(Broken(), repo, ["models/m"]) == {}
    assert tracking.upstream_runs(NoExperiment(), repo, ["models/m"]) == {}


@dataclasses.dataclass
class EvCfg:
    metrics: list = dataclasses.field(default_factory=list)
    systems: dict = dataclasses.field(default_factory=dict)


def test_execute_stage_with_a_foreach_name(repo, tmp_path, monkeypatch):
    from timbrelab.stages.common import StageResult, execute_stage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(repo)
    _dvc_yaml(repo, {"ev": {"foreach": SYSTEMS, "do": FOREACH_DO}})
    (repo / "code").mkdir()
    (repo / "code" / "identity.py").write_text("pass\n")
    params = {"ev": {"metrics": ["f0"], "systems": SYSTEMS}}

    def body(cfg, root):
        assert cfg.systems == SYSTEMS
        (root / "out" / "identity").mkdir(parents=True)
        (root / "out" / "identity" / "x.txt").write_text("x")
        return StageResult(metrics={"f0_rmse": 1.25}, summary="ok")

    execute_stage("ev@identity", EvCfg, body, params=params)
    assert json.loads((repo / "reports/metrics/ev_identity.json").read_text()) == {"f0_rmse": 1.25}
    _, (run,) = _runs(tmp_path, "ev@identity")
    tags = run.data.tags
    assert tags["mlflow.runName"] == "ev@identity" and run.info.run_name == "ev@identity"
    assert tags["dvc.dep.code/identity.py"] == dvcfiles.file_md5(repo / "code/identity.py")
    assert tags["dvc.out.out/identity"] == dvcfiles.dvc_dir_md5(repo / "out/identity")
    assert tags["dvc.out.reports/metrics/ev_identity.json"] == dvcfiles.file_md5(repo / "reports/metrics/ev_identity.json")
    assert "dvc.out.reports/plots/ev_identity.json" not in tags  # not written
    assert run.data.params["metrics"] == '["f0"]'
