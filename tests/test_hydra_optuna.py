"""Sweeps of `timbrelab-train` as the Sweeps section of docs/experiments.md runs them (blocks sweep-grid,
sweep-optuna and sweep-tiny, tests/readme.py): the basic launcher's grid, and an Optuna search
(conf/hparams_search/ddsp_optuna.yaml) in which each trial is one MLflow run of train_ddsp and what the
sweeper records is each job's `objective` metric."""

from __future__ import annotations

from pathlib import Path

import pytest
import readme
import yaml
from conftest import BIN, copy_repository, run, stage_runs
from hydra.types import RunMode
from omegaconf import OmegaConf

from timbrelab.errors import TimbrelabError
from timbrelab.hydra_app import objective_value, sweep_tags

STUDY = "tiny-ddsp"
TINY = ["profile=tiny", "train_ddsp.max_steps=4", "train_ddsp.val_every_steps=2", "train_ddsp.baseline_steps=4"]


def _tiny(documented: str) -> list[str]:
    """The sweep-tiny command that is the documented block's command with the tiny settings (and, for
    the search, fewer trials and a stored study) added; everything documented is kept."""
    full = readme.commands(documented)[0].argv
    for command in readme.commands("sweep-tiny"):
        if command.argv[:len(full)] == full:
            assert command.argv[-len(TINY):] == TINY, command.text
            return command.venv_argv
    raise AssertionError(f"{readme.where('sweep-tiny')}: no sweep-tiny command extends the {documented} block")


def _sweep_dirs(repo: Path) -> set[Path]:
    return {p.parents[2] for p in (repo / "multirun").glob("*/*/0/.hydra/overrides.yaml")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tiny repository copy with features, then a 2-trial Optuna sweep of tiny trainings whose study is
    kept in optuna.db. Returns ``(repo, sweep output)``."""
    repo = copy_repository(tmp_path_factory.mktemp("optuna") / "timbrelab")
    run([str(BIN / "timbrelab"), "params", "profile=tiny"], repo)
    run(["git", "commit", "-q", "-am", "tiny profile"], repo)
    run([str(BIN / "dvc"), "repro", "features"], repo)
    command = _tiny("sweep-optuna")
    assert f"hydra.sweeper.study_name={STUDY}" in command and "hydra.sweeper.storage=sqlite:///optuna.db" in command
    result = run(command, repo)
    (sweep_dir,) = _sweep_dirs(repo)
    return repo, result.stdout + result.stderr, sweep_dir.relative_to(repo).as_posix()


def _train_runs(repo):
    return stage_runs(repo, "train_ddsp")


@pytest.mark.slow
def test_each_trial_is_one_run_and_the_sweeper_records_its_objective(swept):
    import optuna

    repo, output, sweep_dir = swept
    runs = {int(r.data.tags["hydra.job_num"]): r for r in _train_runs(repo)
            if r.data.tags.get("hydra.sweep_dir") == sweep_dir}
    assert sorted(runs) == [0, 1], output
    assert len({r.info.experiment_id for r in runs.values()}) == 1
    assert len({r.data.tags["hydra.sweep_id"] for r in runs.values()}) == 1
    assert all(r.data.params["max_steps"] == "4" for r in runs.values())
    assert runs[0].data.params["model.lr"] != runs[1].data.params["model.lr"]   # the second trial is another point

    trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{repo / 'optuna.db'}").trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    for trial in trials:
        found = runs[trial.number]
        assert found.data.metrics["val/loss_best"] == pytest.approx(trial.value, rel=1e-12)
        assert float(found.data.params["model.lr"]) == pytest.approx(trial.params["train_ddsp.model.lr"], rel=1e-12)
        assert 1e-4 <= trial.params["train_ddsp.model.lr"] <= 3e-3
        assert int(found.data.params["model.hidden"]) == trial.params["train_ddsp.model.hidden"]
        assert f"train_ddsp.model.lr={trial.params['train_ddsp.model.lr']}" in found.data.tags["hydra.overrides"]

    results = yaml.safe_load((repo / sweep_dir / "optimization_results.yaml").read_text())
    best = min(runs.values(), key=lambda r: r.data.metrics["val/loss_best"])
    assert results["best_value"] == pytest.approx(best.data.metrics["val/loss_best"], rel=1e-12)
    assert results["best_params"] == {"train_ddsp.model.lr": pytest.approx(float(best.data.params["model.lr"]), rel=1e-12),
                                      "train_ddsp.model.hidden": int(best.data.params["model.hidden"])}


def _hydra(mode: RunMode, sweeper: str = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
           storage: str | None = None, job_num: int = 1):
    return OmegaConf.create({"mode": mode, "overrides": {"task": ["train_ddsp.model.lr=0.001"]}, "job": {"num": job_num},
                             "sweep": {"dir": "multirun/x"}, "sweeper": {"_target_": sweeper, "storage": storage}})


def test_sweep_tags():
    optuna_sweeper = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweep_tags(_hydra(RunMode.RUN)) == {"hydra.overrides": "train_ddsp.model.lr=0.001", "hydra.job_num": "1"}
    basic = sweep_tags(_hydra(RunMode.MULTIRUN))
    assert basic["hydra.sweep_dir"] == "multirun/x" and len(basic["hydra.sweep_id"]) == 12
    assert "optuna.trial" not in basic
    assert sweep_tags(_hydra(RunMode.MULTIRUN, optuna_sweeper, job_num=3))["optuna.trial"] == "3"
    # A persistent study may already hold trials: its numbers are not the job numbers.
    assert "optuna.trial" not in sweep_tags(_hydra(RunMode.MULTIRUN, optuna_sweeper, storage="sqlite:///o.db"))
    assert sweep_tags(_hydra(RunMode.MULTIRUN, job_num=3))["hydra.sweep_id"] == basic["hydra.sweep_id"]


def test_objective_value():
    metrics = {"val/loss_best": 1.5, "steps": 4}
    assert objective_value("train_ddsp", "val/loss_best", metrics, required=True) == 1.5
    assert objective_value("train_ddsp", None, metrics, required=True) is None
    assert objective_value("acquire_source", "val/loss_best", {"items": 3}, required=False) is None
    with pytest.raises(TimbrelabError, match=r"'val/loss' is not a metric of stage train_ddsp \(it has: steps, val"):
        objective_value("train_ddsp", "val/loss", metrics, required=True)


@pytest.mark.slow
def test_an_objective_the_stage_lacks_fails_the_sweep_in_one_line(swept):
    repo, _, _ = swept
    result = run([str(BIN / "timbrelab-train"), "-m", "hparams_search=ddsp_optuna", "profile=tiny",
                  "hydra.sweeper.n_trials=2", "train_ddsp.max_steps=2", "train_ddsp.val_every_steps=2",
                  "train_ddsp.baseline_steps=2", "objective=val/nope"], repo, check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("timbrelab: error: objective 'val/nope' is not a metric of stage train_ddsp"), last
    assert "val/loss_best" in last
    assert (result.stdout + result.stderr).count("Launching 1 jobs") == 1   # it stopped after the first trial


@pytest.mark.slow
def test_the_readme_grid_runs_one_job_and_run_per_point(swept):
    repo, _, _ = swept
    before = _sweep_dirs(repo)
    result = run(_tiny("sweep-grid"), repo)
    (sweep_dir,) = {d.relative_to(repo).as_posix() for d in _sweep_dirs(repo) - before}
    runs = [r for r in _train_runs(repo) if r.data.tags.get("hydra.sweep_dir") == sweep_dir]
    points = sorted((float(r.data.params["model.lr"]), int(r.data.params["model.hidden"])) for r in runs)
    assert points == [(3e-4, 256), (3e-4, 512), (1e-3, 256), (1e-3, 512)], result.stderr[-3000:]
    assert {r.data.tags["hydra.job_num"] for r in runs} == {"0", "1", "2", "3"}
    assert len({r.data.tags["hydra.sweep_id"] for r in runs}) == 1
    assert all(r.info.status == "FINISHED" and r.data.params["max_steps"] == "4" for r in runs)
    for r in runs:
        assert f"train_ddsp.model.hidden={r.data.params['model.hidden']}" in r.data.tags["hydra.overrides"]
