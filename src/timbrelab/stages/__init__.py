"""Thin DVC entry points: load and validate the stage's section of params.yaml, call the library,
write the outputs atomically, log one MLflow run. Run as ``python -m timbrelab.stages.<name>``.

Every stage module defines ``STAGE`` (its params.yaml section), ``SCHEMAS`` (its dataclass schema, or
a mapping from the section's ``source`` to one) and ``run(cfg, root) -> StageResult``. The train stages of
the models that train through the shared loop are one module, :mod:`timbrelab.stages.train`, with the model
as its argument. This file is the one stage table the CLI and the Hydra app use.
"""

from __future__ import annotations

import importlib
from typing import Any

BASE_STAGES = ("acquire_cello", "acquire_nsynth", "acquire_source", "prepare", "features", "train_classifier",
               "transfer_set", "evaluate", "report")


def _train_stages() -> dict[str, str]:
    from timbrelab.models import registry

    return {spec.stage: spec.name for spec in registry.trained_by_loop()}


def stage_names() -> tuple[str, ...]:
    """Every stage ``timbrelab stage`` and ``timbrelab-train stage=...`` accept."""
    return (*BASE_STAGES[:5], *_train_stages(), *BASE_STAGES[5:])


def stage_entry(name: str) -> Any:
    """An object with ``STAGE``, ``SCHEMAS`` and ``run(cfg, root)``; ConfigError for an unknown name."""
    from timbrelab.errors import ConfigError

    trained = _train_stages()
    if name in trained:
        from timbrelab.stages.train import TrainStage

        return TrainStage(trained[name])
    if name not in BASE_STAGES:
        raise ConfigError(f"unknown stage {name!r}; expected one of {', '.join(stage_names())}")
    return importlib.import_module(f"timbrelab.stages.{name}")


def run_stage_command(name: str, args: list[str]) -> int:
    """``timbrelab stage NAME [ARGS]``: the stage's own ``main`` (the train stages with their model)."""
    trained = _train_stages()
    if name in trained:
        from timbrelab.stages.train import main

        return main([trained[name]])
    module = stage_entry(name)
    return module.main(args) if args else module.main()
