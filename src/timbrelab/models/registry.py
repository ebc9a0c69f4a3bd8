"""The model registry: one entry per model family, resolved lazily so that ``models/`` and inference never
import training code.

An entry names, by dotted path (``"package.module:attribute"``), what each part of the project needs:

* ``build`` (models/): ``build(model_config: dict, stats: dict | None) -> nn.Module`` — a model from a payload;
* ``example``: ``example(size) -> Example`` — the model at a preset size, a batch and how to take one optimiser
  step, for the test matrix (tests/test_models.py);
* ``lightning`` (training/): its LightningModule, which :mod:`timbrelab.training.loop` trains;
* ``schema`` and ``train`` (training/): the train stage's config dataclass and ``train(cfg, out_dir, *,
  features_root, mlflow_run_id) -> metrics``; ``summary(cfg, metrics) -> str`` for the stage's last line;
* ``transfer`` (inference/, optional): a module with ``check_payload(model, payload, source)``,
  ``transfer_file(input, output, model, payload, **options)`` and ``TransferWarning``: what
  ``timbrelab transfer --model <name>`` runs;
* ``export`` (inference/, optional): ``export(checkpoint, out, block_size) -> metadata`` for models that stream.

``stage`` and ``output`` say which DVC stage trains it and where its ``model.pt`` lands. The checkpoint's
``model_type`` is the entry's name (:mod:`timbrelab.models.checkpoint`). docs/adding-a-model.md lists every
edit a new model takes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timbrelab.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    name: str                        # registry key and checkpoint model_type
    label: str                       # what people call it
    build: str                       # models/: (model_config, stats) -> nn.Module
    example: str                     # (size) -> Example, for the test matrix
    stage: str                       # the DVC stage that trains it
    output: str                      # its output folder (holds model.pt)
    lightning: str | None = None     # training/: its LightningModule (None: trained by a loop of its own)
    schema: str | None = None        # training/: the stage's config dataclass (None: the stage has its own module)
    train: str | None = None         # training/: the stage body
    summary: str | None = None       # training/: (cfg, metrics) -> one line
    transfer: str | None = None      # inference/: the module `timbrelab transfer --model <name>` plays through
    export: str | None = None        # inference/: streaming export (None: the model does not stream)
    sizes: tuple[str, ...] = ("tiny", "full")   # what the test matrix builds (tiny: every check; full: a step)

    def resolve(self, part: str) -> Any:
        """The object a dotted-path field names, imported now."""
        target = getattr(self, part)
        if target is None:
            raise ConfigError(f"model {self.name!r} has no {part}")
        return resolve(target)

    @property
    def registry_name(self) -> str:
        """Prefix of its MLflow registered models: ``timbrelab-<name>-<domain>``."""
        return f"timbrelab-{self.name}"


def resolve(dotted: str) -> Any:
    module, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module), attribute)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (
        ModelSpec(
            name="ddsp", label="DDSP",
            build="timbrelab.models.ddsp:build", example="timbrelab.training.ddsp:example",
            stage="train_ddsp", output="models/ddsp", lightning="timbrelab.training.ddsp:DDSPLightningModule",
            schema="timbrelab.training.ddsp_config:DDSPTrainConfig", train="timbrelab.training.ddsp:train",
            summary="timbrelab.training.ddsp:summary", transfer="timbrelab.inference.ddsp_transfer",
            export="timbrelab.inference.streaming:export_torchscript",
        ),
        ModelSpec(
            name="cyclegan", label="CycleGAN (log-CQT)",
            build="timbrelab.models.cyclegan:build", example="timbrelab.training.cyclegan:example",
            stage="train_cyclegan", output="models/cyclegan",
            lightning="timbrelab.training.cyclegan:CycleGANLightningModule",
            schema="timbrelab.training.cyclegan_config:CycleGANTrainConfig",
            train="timbrelab.training.cyclegan:train", summary="timbrelab.training.cyclegan:summary",
            transfer="timbrelab.inference.cyclegan_transfer",
        ),
        ModelSpec(
            name="timbre_classifier", label="timbre classifier",
            build="timbrelab.models.classifier:build", example="timbrelab.evaluation.classifier:example",
            stage="train_classifier", output="models/classifier",
        ),
    )
}


def get(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(MODELS)}")
    return MODELS[name]


def trained_by_loop() -> list[ModelSpec]:
    """Models whose train stage is the generic one (``python -m timbrelab.stages.train <name>``)."""
    return [spec for spec in MODELS.values() if spec.train is not None]


@dataclass
class Example:
    """What the test matrix needs of a model at one size: the model, a small batch, and how one optimiser step
    is taken (the LightningModule's own step through a Trainer, or ``step`` for a model trained by hand)."""

    model: Any                                       # the nn.Module that goes into model.pt
    batch: Any = None                                # one training batch
    lightning_module: Any = None                     # its LightningModule (trained by training.loop)
    step: Callable[[], None] | None = None           # else: one optimiser step on the batch
    stream_block: int | None = None                  # a block size to export with, where the model streams
    payload: dict[str, Any] = field(default_factory=dict)   # make_payload(...) of the model


def load(path: str | os.PathLike, name: str, *, hint: str = "", map_location: str = "cpu"):
    """``model.pt`` of registered model ``name`` -> ``(model in eval mode, payload)``; CheckpointError naming
    the file for a missing, damaged, foreign, newer or other-model file."""
    from timbrelab.models.checkpoint import CheckpointError, load_payload, restore

    spec = get(name)
    payload = load_payload(path, spec.name, hint=hint or f"train one with `dvc repro {spec.stage}`",
                           map_location=map_location)
    try:
        model = spec.resolve("build")(payload["model_config"], payload.get("stats"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{Path(path)}: its config does not fit the {spec.label} of this timbrelab version "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return restore(path, payload, model), payload
