"""Thin DVC entry points: load and validate the stage's section of params.yaml, call the library,
write the outputs atomically, log one MLflow run. Run as ``python -m timbrelab.stages.<name>``.

Every stage module defines ``STAGE`` (its params.yaml section), ``SCHEMAS`` (its dataclass schema, or
a mapping from the section's ``source`` to one) and ``run(cfg, root) -> StageResult``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES = ("acquire_cello", "acquire_nsynth", "acquire_source", "prepare", "features", "train_ddsp", "train_classifier",
          "transfer_set", "evaluate", "report")


def stage_module(name: str) -> ModuleType:
    from timbrelab.errors import ConfigError

    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)}")
    return importlib.import_module(f"timbrelab.stages.{name}")
