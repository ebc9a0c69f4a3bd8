"""``train_ddsp``'s section as a schema: what the DDSP train stage trains and how (kept apart from the training
code, so validating params.yaml — ``timbrelab params`` — never imports Lightning)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from timbrelab.errors import ConfigError
from timbrelab.models.ddsp import PRESETS, DDSPModelConfig
from timbrelab.training.trainer import TrainerConfig

MODEL_OVERRIDES = ("hidden", "n_harmonics", "n_noise_bands", "gru_layers", "mlp_layers", "reverb_seconds", "z_dim")


@dataclass
class DDSPModelParams:
    """``train_ddsp.model``: what is learned, the preset with its overrides (None: the preset's value) and
    the optimiser's learning rate."""

    preset: str = "demo"
    hidden: int | None = None
    n_harmonics: int | None = None
    n_noise_bands: int | None = None
    gru_layers: int | None = None
    mlp_layers: int | None = None
    reverb_seconds: float | None = None
    z_dim: int | None = None
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"train_ddsp.model.preset={self.preset!r} is not one of {sorted(PRESETS)}")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr)
                                             and self.lr > 0):
            raise ConfigError(f"train_ddsp.model.lr must be a finite number > 0, found {self.lr!r}")


@dataclass
class DDSPTrainConfig:
    domain: str = "cello"
    model: DDSPModelParams = field(default_factory=DDSPModelParams)
    batch_size: int = 8          # per process (under DDP the effective batch is batch_size x world size)
    crop_seconds: float | None = 2.0
    max_steps: int = 2000
    val_every_steps: int = 200
    seed: int = 0
    num_workers: int = 0
    baseline_steps: int = 300
    checkpoint_root: str = "models/cache/ddsp"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = DDSPModelParams(**self.model)
        if isinstance(self.trainer, dict):
            self.trainer = TrainerConfig(**self.trainer)
        for name in ("max_steps", "val_every_steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train_ddsp.{name} must be a positive integer, found {value!r}")
        if isinstance(self.baseline_steps, bool) or not isinstance(self.baseline_steps, int) or self.baseline_steps < 0:
            raise ConfigError(f"train_ddsp.baseline_steps must be an integer >= 0, found {self.baseline_steps!r}")

    def model_config(self, stats: dict[str, Any] | None = None) -> DDSPModelConfig:
        """The preset with the overrides, on the features' grid (sample_rate, frame_hop) when stats are given."""
        changes = {name: getattr(self.model, name) for name in MODEL_OVERRIDES if getattr(self.model, name) is not None}
        if stats is not None:
            changes.update(sample_rate=int(stats["sample_rate"]), hop=int(stats["frame_hop"]))
        try:
            return PRESETS[self.model.preset].replace(**changes)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"train_ddsp.model overrides {changes}: {exc}") from exc
