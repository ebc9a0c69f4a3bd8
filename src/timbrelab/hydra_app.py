"""`timbrelab-train`: the Hydra app over the same stage functions DVC runs.

DVC stages read params.yaml (DVC does not pass its config through @hydra.main); this app composes
conf/ itself, so `-m` multirun sweeps and Hydra sweepers work with the params.yaml key paths. Each job
is one MLflow run tagged with its overrides (and the sweep for multirun), and returns the stage's
``objective`` metric (conf/train.yaml), the value an Optuna sweep (conf/hparams_search/) minimises.
Launchers: the basic one (in this process), submitit's local executor or SLURM (conf/hydra/launcher/); a
multi-process (DDP) trainer in a sweep is refused unless SLURM or torchrun started the ranks
(:func:`check_ddp_in_sweep`).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from timbrelab.errors import Terminated, TimbrelabError


def _multirun_sweeper(hydra_cfg: Any) -> Any:
    """The sweeper's config node in a multirun, None in a single run."""
    if hydra_cfg.mode is None or hydra_cfg.mode.name != "MULTIRUN":
        return None
    return hydra_cfg.get("sweeper") or {}


def sweep_tags(hydra_cfg: Any) -> dict[str, str]:
    """MLflow tags of one job: its overrides and job number; in a multirun also the sweep directory, a
    short id of it (``hydra.sweep_id``, the same for every job of one sweep) and, for an Optuna sweep
    of a fresh in-memory study, the trial number (``optuna.trial``, equal to the job number there)."""
    tags = {"hydra.overrides": " ".join(hydra_cfg.overrides.task) or "(none)",
            "hydra.job_num": str(hydra_cfg.job.num if hydra_cfg.job.get("num") is not None else 0)}
    sweeper = _multirun_sweeper(hydra_cfg)
    if sweeper is None:
        return tags
    sweep_dir = str(hydra_cfg.sweep.dir)
    tags["hydra.sweep_dir"] = sweep_dir
    tags["hydra.sweep_id"] = hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]
    # A persistent `storage` may hold earlier trials (numbering goes on there, job numbers restart at 0).
    if "optuna" in str(sweeper.get("_target_", "")) and sweeper.get("storage") is None:
        tags["optuna.trial"] = tags["hydra.job_num"]
    return tags


def objective_value(stage: str, objective: str | None, metrics: dict[str, float], *, required: bool) -> float | None:
    """The job's return value: ``metrics[objective]``; None without an objective, or when the stage has
    no such metric and nothing needs the value (a single run, the basic sweeper)."""
    if objective is None:
        return None
    if objective in metrics:
        return float(metrics[objective])
    if required:
        raise TimbrelabError(f"objective {objective!r} is not a metric of stage {stage} (it has: "
                             f"{', '.join(sorted(metrics)) or 'none'}); set objective=<metric> or stage=<stage>")
    return None


def check_ddp_in_sweep(params: dict[str, Any], stage: str, *, multirun: bool) -> None:
    """Refuse a multi-process trainer in a sweep whose ranks Lightning would start itself: its launcher
    re-runs the command line for every other rank, and under ``-m`` that line is the whole sweep, so each
    child would start the sweep again. Fine when SLURM (hydra/launcher=slurm) or torchrun started the ranks."""
    from timbrelab.distributed import launched_externally

    trainer = (params.get(stage) or {}).get("trainer") or {}
    world = int(trainer.get("devices", 1)) * int(trainer.get("num_nodes", 1))
    if multirun and world > 1 and not launched_externally():
        raise TimbrelabError(
            f"{stage}.trainer asks for {world} processes (DDP) inside a `timbrelab-train -m` sweep: Lightning would "
            "start the other ranks by re-running this command line, i.e. the whole sweep again. Run each point as "
            "a single run, queue DVC experiments (`dvc exp run --queue -S trainer=ddp ...`), or sweep on SLURM "
            "with hydra/launcher=slurm (one task per device); docs/scaling-out.md")


def _job(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from timbrelab.stages import stage_entry
    from timbrelab.stages.common import execute_stage

    params = OmegaConf.to_container(cfg, resolve=True)
    stage = params.pop("stage")
    objective = params.pop("objective", None)
    hydra_cfg = HydraConfig.get()
    tags = sweep_tags(hydra_cfg)
    # The basic sweeper ignores return values; any other (Optuna) needs a number from every job.
    sweeper = _multirun_sweeper(hydra_cfg)
    required = sweeper is not None and not str(sweeper.get("_target_", "")).endswith("BasicSweeper")
    try:
        check_ddp_in_sweep(params, stage, multirun=sweeper is not None)
        module = stage_entry(stage)
        result = execute_stage(stage, module.SCHEMAS, module.run, params=params, extra_tags=tags)
        return objective_value(stage, objective, result.metrics, required=required)
    except Terminated as exc:   # SIGTERM (a scheduler's pre-emption): not a success, and resumable
        print(f"timbrelab: terminated: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except TimbrelabError as exc:
        # The one-line convention, also under Hydra (which would otherwise print its own traceback).
        print(f"timbrelab: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    import hydra

    from timbrelab.paths import repo_root

    conf = repo_root() / "conf"
    if not (conf / "train.yaml").is_file():
        print(f"timbrelab: error: {conf / 'train.yaml'} not found; run timbrelab-train from the repository",
              file=sys.stderr)
        sys.exit(2)
    hydra.main(version_base=None, config_path=str(conf), config_name="train")(_job)()


if __name__ == "__main__":
    main()
