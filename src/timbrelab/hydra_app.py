"""`timbrelab-train`: the Hydra app over the same stage functions DVC runs.

DVC stages read params.yaml (DVC does not pass its config through @hydra.main); this app composes
conf/ itself, so `-m` multirun sweeps and Hydra launchers work with the params.yaml key paths. Each job
is one MLflow run tagged with its overrides (and the sweep directory for multirun).
"""

from __future__ import annotations

import sys

from timbrelab.errors import TimbrelabError


def _job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from timbrelab.stages import stage_module
    from timbrelab.stages.common import execute_stage

    params = OmegaConf.to_container(cfg, resolve=True)
    stage = params.pop("stage")
    hydra_cfg = HydraConfig.get()
    tags = {"hydra.overrides": " ".join(hydra_cfg.overrides.task) or "(none)",
            "hydra.job_num": str(hydra_cfg.job.num if hydra_cfg.job.get("num") is not None else 0)}
    if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
        tags["hydra.sweep_dir"] = str(hydra_cfg.sweep.dir)
    try:
        module = stage_module(stage)
        execute_stage(stage, module.SCHEMAS, module.run, params=params, extra_tags=tags)
    except TimbrelabError as exc:
        # The one-line convention, also under Hydra (which would otherwise print its own traceback).
        print(f"timbrelab: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    import hydra

    from timbrelab.tracking import repo_root

    conf = repo_root() / "conf"
    if not (conf / "train.yaml").is_file():
        print(f"timbrelab: error: {conf / 'train.yaml'} not found; run timbrelab-train from the repository",
              file=sys.stderr)
        sys.exit(2)
    hydra.main(version_base=None, config_path=str(conf), config_name="train")(_job)()


if __name__ == "__main__":
    main()
