"""Scaling out on existing engines, with the blocks of docs/scaling-out.md (ddp-cpu, slurm, submitit-local;
tests/readme.py): Lightning DDP over 2 CPU processes (gloo), the refusal of DDP inside a `-m` sweep
(Lightning's launcher would re-run the sweep), hydra-submitit-launcher's local executor, the SLURM launcher
config's batch script, and the trainer configs (bf16 on CPU)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import readme
import torch
from conftest import BIN, copy_repository, run, stage_runs

from timbrelab import distributed
from timbrelab.data.datasets import EpochSampler
from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.hydra_app import check_ddp_in_sweep
from timbrelab.training.shards import shard_report
from timbrelab.training.trainer import TrainerConfig

TINY_TRAINING = ["train_ddsp.max_steps=4", "train_ddsp.val_every_steps=2", "train_ddsp.baseline_steps=4"]


def _readme(name: str) -> list[str]:
    (command,) = readme.commands(name)
    return command.venv_argv


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A tiny repository copy with its features."""
    repo = copy_repository(tmp_path_factory.mktemp("scale") / "timbrelab")
    run([str(BIN / "timbrelab"), "params", "profile=tiny"], repo)
    run(["git", "commit", "-q", "-am", "tiny profile"], repo)
    run([str(BIN / "dvc"), "repro", "features"], repo)
    return repo


def _runs(repo: Path):
    return stage_runs(repo, "train_ddsp")


def _train_items(repo: Path, domain: str) -> int:
    return len(json.loads((repo / f"data/features/{domain}/train/index.json").read_text()))


# ------------------------------------------------------------------------------------------- DDP

@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_disjoint_shards_into_one_checkpoint(repo):
    # nsynth: the tiny domain with an odd number of training notes, so one is left out of each epoch.
    before = {r.info.run_id for r in _runs(repo)}
    cache = repo / "models/cache/ddsp"
    caches_before = set(cache.iterdir()) if cache.is_dir() else set()
    command = _readme("ddp-cpu")
    assert "trainer=ddp_cpu" in command and "train_ddsp.domain=nsynth" in command
    result = run(command, repo)
    output = result.stdout + result.stderr
    assert "on 2 processes (ddp, gloo)" in output, output

    runs = [r for r in _runs(repo) if r.info.run_id not in before]
    assert len(runs) == 1, output                     # rank 1 trained but opened no run of its own
    metrics = runs[0].data.metrics
    n = _train_items(repo, "nsynth")
    assert n % 2 == 1 and n >= 3
    assert metrics["trainer/world_size"] == 2
    assert metrics["trainer/items_shared"] == 0        # no note went to both ranks
    assert metrics["trainer/items_handed"] == n - 1    # both shards together: all but the odd one out
    assert metrics["steps"] == 4
    assert runs[0].data.params["trainer.strategy"] == "ddp"

    caches = list(set(cache.iterdir()) - caches_before)
    assert len(caches) == 1                            # one config, one cache, written by rank 0 only
    assert sorted(p.name for p in caches[0].iterdir()) == ["best.ckpt", "config.json", "last.ckpt"]
    last = torch.load(caches[0] / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4
    payload = torch.load(repo / "models/ddsp/model.pt", map_location="cpu", weights_only=True)
    assert payload["train_config"]["trainer"]["devices"] == 2 and payload["train_config"]["domain"] == "nsynth"


@pytest.mark.slow
def test_torchrun_starts_the_ranks_of_the_plain_stage(repo):
    """torchrun (the route for several nodes without SLURM): RANK/WORLD_SIZE from torchrun, so only rank 0
    opens a run, and Lightning starts no process of its own."""
    before = {r.info.run_id for r in _runs(repo)}
    # The ddp-cpu test trained this very config: without its cache the run trains (a finished cache would
    # resume with no step left, and report no shards).
    shutil.rmtree(repo / "models/cache/ddsp", ignore_errors=True)
    params, torchrun = readme.commands("torchrun-cpu")
    try:
        run(params.venv_argv, repo)
        result = run(torchrun.venv_argv, repo)
    finally:
        run([str(BIN / "timbrelab"), "params", "profile=tiny"], repo)   # the module's other tests' params.yaml
    runs = [r for r in _runs(repo) if r.info.run_id not in before]
    assert len(runs) == 1, result.stderr[-3000:]
    metrics = runs[0].data.metrics
    assert (metrics["trainer/world_size"], metrics["trainer/items_shared"]) == (2, 0)
    assert metrics["trainer/items_handed"] == _train_items(repo, "nsynth") // 2 * 2
    assert "on 2 processes (ddp, gloo)" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_sweep_refuses_ddp_that_lightning_would_relaunch(repo):
    before = len(_runs(repo))
    result = run([str(BIN / "timbrelab-train"), "-m", "stage=train_ddsp", "trainer=ddp_cpu", "profile=tiny",
                  "train_ddsp.model.lr=1e-3,3e-4", *TINY_TRAINING], repo, check=False)
    assert result.returncode == 2
    assert "re-running this command line, i.e. the whole sweep again" in result.stderr
    assert len(_runs(repo)) == before


def test_ddp_in_a_sweep_is_fine_when_slurm_or_torchrun_started_the_ranks(monkeypatch):
    params = {"train_ddsp": {"trainer": {"devices": 2, "num_nodes": 1}}}
    for name in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    check_ddp_in_sweep(params, "train_ddsp", multirun=False)
    check_ddp_in_sweep({"train_ddsp": {"trainer": {"devices": 1}}}, "train_ddsp", multirun=True)
    with pytest.raises(TimbrelabError, match="whole sweep again"):
        check_ddp_in_sweep(params, "train_ddsp", multirun=True)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    check_ddp_in_sweep(params, "train_ddsp", multirun=True)
    assert not distributed.is_primary()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.is_primary()


@pytest.mark.parametrize("env, primary", [
    ({}, True), ({"LOCAL_RANK": "1"}, False), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
    ({"LOCAL_RANK": "1", "RANK": "0"}, True), ({"RANK": "3", "WORLD_SIZE": "4"}, False),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "1"}, True),   # one SLURM task: not a distributed launch
])
def test_only_global_rank_zero_is_primary(monkeypatch, env, primary):
    for name in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.is_primary() is primary


def test_epoch_sampler_shards_are_disjoint_equal_and_cover_all_but_the_remainder():
    whole = list(EpochSampler(11, seed=3))
    assert whole == list(EpochSampler(11, seed=3, rank=0, world_size=1))   # one process: unchanged order
    for world in (2, 3, 4):
        shards = [list(EpochSampler(11, seed=3, rank=r, world_size=world)) for r in range(world)]
        assert {len(s) for s in shards} == {11 // world}
        keys = [k for s in shards for k in s]
        assert len(set(keys)) == len(keys) == 11 - 11 % world
        assert set(keys) <= set(whole)
        assert shard_report(shards) == {"trainer/items_handed": len(keys), "trainer/items_shared": 0}
    sampler = EpochSampler(11, seed=3, rank=1, world_size=2)
    it = iter(sampler)
    first = [next(it), next(it)]
    assert sampler.handed == first                     # what the loader has been handed so far
    with pytest.raises(TimbrelabError, match="only 2 training items"):
        EpochSampler(2, world_size=3)
    assert shard_report([[(0, 1), (0, 2)], [(0, 2)]])["trainer/items_shared"] == 1


def test_trainer_configs_compose_and_validate():
    from timbrelab.config import compose

    repo = Path(__file__).resolve().parents[1]
    for name, expected in {"cpu": (1, "32-true"), "gpu": (1, "bf16-mixed"), "ddp": (2, "bf16-mixed"),
                           "ddp_cpu": (2, "32-true")}.items():
        composed = compose([f"trainer={name}"], conf_dir=repo / "conf")
        section = composed.train_ddsp.trainer
        assert section == composed.trainer      # every train stage runs on the one trainer switch
        cfg = TrainerConfig(**section)
        assert (cfg.world_size, cfg.precision) == expected
    assert TrainerConfig().operative() == {}           # the reference trainer keeps the old cache keys
    assert TrainerConfig(precision="bf16-mixed").operative() == {"precision": "bf16-mixed", "world_size": 1}
    with pytest.raises(ConfigError, match="trainer.strategy"):
        TrainerConfig(strategy="ddp_spawn")
    with pytest.raises(ConfigError, match="need strategy=ddp"):
        TrainerConfig(devices=2)
    with pytest.raises(ConfigError, match="trainer.devices"):
        TrainerConfig(devices=0)
    # Inside a stage's section the message names the stage's key path.
    from timbrelab.config import load_stage_config
    from timbrelab.training.ddsp_config import DDSPTrainConfig

    params = {"train_ddsp": {"trainer": {"devices": 0}}}
    with pytest.raises(ConfigError, match=r"^train_ddsp\.trainer\.devices must be a positive integer"):
        load_stage_config("train_ddsp", DDSPTrainConfig, params)


# ---------------------------------------------------------------------------------------- submitit

@pytest.mark.slow
def test_submitit_local_runs_each_sweep_point_as_its_own_job(repo):
    before = {r.info.run_id for r in _runs(repo)}
    command = _readme("submitit-local")
    assert "hydra/launcher=submitit_local" in command
    result = run(command, repo)
    (sweep,) = [p.parent for p in repo.glob("multirun/*/*/.submitit")]   # the one sweep Hydra made
    runs = [r for r in _runs(repo) if r.info.run_id not in before]
    assert sorted(float(r.data.params["model.lr"]) for r in runs) == [3e-4, 1e-3], result.stderr
    assert len({r.data.tags["hydra.sweep_id"] for r in runs}) == 1

    # Each point ran as a submitit job (its own process, log and pickled result) and returned its objective.
    jobs = sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
    assert len(jobs) == 2
    objectives = []
    for job in jobs:
        assert "[train_ddsp] trained DDSP (tiny)" in (job / f"{job.name}_0_log.err").read_text()
        status, job_return = pickle.loads((job / f"{job.name}_0_result.pkl").read_bytes())
        assert status == "success"
        objectives.append(job_return.return_value)
    assert sorted(objectives) == pytest.approx(sorted(r.data.metrics["val/loss_best"] for r in runs), rel=1e-12)


def test_the_slurm_launcher_writes_one_task_per_device(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm.yaml as Hydra composes it, turned into the sbatch script submitit would
    submit (a stand-in `srun` on PATH: there is no cluster here, the script is checked, not run)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    repo = Path(__file__).resolve().parents[1]
    (documented,) = readme.commands("slurm")
    assert documented.argv[:2] == ["timbrelab-train", "-m"]
    # The sweep's first point: compose takes single values, so the swept lr is given its first value.
    overrides = [o.split(",")[0] if o.startswith("train_ddsp.model.lr=") else o for o in documented.argv[2:]]
    with initialize_config_dir(str(repo / "conf"), version_base=None):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert cfg.train_ddsp.trainer.strategy == "ddp" and cfg.train_ddsp.model.lr == 1e-3

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    # What SlurmLauncher.launch does with its params: generic queue keys as they are, the rest slurm_-prefixed.
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "jobs")
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in generic else f"slurm_{key}": value for key, value in launcher.items()
                                  if key not in ("_target_", "submitit_folder", "max_num_timeout")})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=240"):
        assert line in script, script


# ----------------------------------------------------------------------------------------- precision

def test_bf16_mixed_precision_trains_and_exports_float32(tmp_path):
    """The gpu/ddp trainers' bf16-mixed, on CPU autocast: finite losses, a float32 model, its own cache key."""
    from test_train_ddsp import config, write_domain

    from timbrelab.training.ddsp import train

    features = write_domain(tmp_path / "features")
    cfg = config(tmp_path, max_steps=6, val_every_steps=3, baseline_steps=0,
                 trainer=TrainerConfig(accelerator="cpu", precision="bf16-mixed"))
    result = train(cfg, tmp_path / "out", features_root=features, progress=False)
    assert result["steps"] == 6 and torch.isfinite(torch.tensor(result["val/loss_best"]))
    payload = torch.load(tmp_path / "out/model.pt", weights_only=True)
    assert {t.dtype for t in payload["state_dict"].values() if t.is_floating_point()} == {torch.float32}
    reference = train(config(tmp_path, max_steps=6, val_every_steps=3, baseline_steps=0), tmp_path / "ref",
                      features_root=features, progress=False)
    assert reference["hash"] != result["hash"]
