"""``train_cyclegan``'s section as a schema (Lightning-free, so ``timbrelab params`` validates it cheaply): the
two domains, the model preset with TimbreTron's switches, the losses and their schedules, the optimisers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from timbrelab.errors import ConfigError
from timbrelab.models.cyclegan import DISCRIMINATORS, GENERATORS, PRESETS, UPSAMPLES, CycleGANConfig
from timbrelab.training.trainer import TrainerConfig

SECTION = "train_cyclegan"
MODEL_OVERRIDES = ("channels", "n_residual", "generator", "upsample", "mask_input", "disc_channels", "disc_layers",
                   "discriminator")
ADVERSARIAL = ("lsgan", "wgan_gp")
IDENTITY_SCHEDULES = ("decay", "constant")


def _positive(value: Any, key: str, *, integer: bool = False, zero: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kind) and math.isfinite(value) and (
        value >= 0 if zero else value > 0)
    if not ok:
        what = "an integer" if integer else "a finite number"
        raise ConfigError(f"{SECTION}.{key} must be {what} {'>= 0' if zero else '> 0'}, found {value!r}")


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{SECTION}.{key}={value!r} is not one of {list(allowed)}")


@dataclass
class CycleGANModelParams:
    """``train_cyclegan.model``: a preset and its overrides (None keeps the preset's value)."""

    preset: str = "demo"
    channels: int | None = None
    n_residual: int | None = None
    generator: str | None = None          # "2d" | "212d" (CycleGAN-VC2's 2-1-2D)
    upsample: str | None = None           # "nearest" (TimbreTron) | "transposed"
    mask_input: bool | None = None        # filling in frames (MaskCycleGAN-VC)
    disc_channels: int | None = None
    disc_layers: int | None = None
    discriminator: str | None = None      # "full" (TimbreTron: sees every bin) | "patch"

    def __post_init__(self) -> None:
        _choice(self.preset, "model.preset", tuple(PRESETS))
        for key, allowed in (("generator", GENERATORS), ("upsample", UPSAMPLES), ("discriminator", DISCRIMINATORS)):
            if getattr(self, key) is not None:
                _choice(getattr(self, key), f"model.{key}", allowed)


@dataclass
class CycleGANLossParams:
    """``train_cyclegan.loss``: what the generators and discriminators are trained on."""

    adversarial: str = "wgan_gp"          # "wgan_gp" (TimbreTron) | "lsgan"
    gp_weight: float = 10.0               # WGAN-GP's gradient penalty
    cycle_weight: float = 20.0
    identity_weight: float = 5.0
    identity_schedule: str = "decay"      # "decay": linearly to 0 at identity_decay_steps | "constant"
    identity_decay_steps: int = 1000
    two_step: bool = False                # CycleGAN-VC2: discriminators on the cycled spectrograms too
    mask_max_frames: int = 16             # filling in frames: longest masked run (with model.mask_input)

    def __post_init__(self) -> None:
        _choice(self.adversarial, "loss.adversarial", ADVERSARIAL)
        _choice(self.identity_schedule, "loss.identity_schedule", IDENTITY_SCHEDULES)
        for key in ("gp_weight", "cycle_weight", "identity_weight"):
            _positive(getattr(self, key), f"loss.{key}", zero=True)
        _positive(self.identity_decay_steps, "loss.identity_decay_steps", integer=True)
        _positive(self.mask_max_frames, "loss.mask_max_frames", integer=True, zero=True)

    def identity_at(self, step: int) -> float:
        """The identity loss weight at optimiser step ``step``."""
        if self.identity_schedule == "constant":
            return float(self.identity_weight)
        return float(self.identity_weight) * max(0.0, 1.0 - step / self.identity_decay_steps)


@dataclass
class CycleGANTrainConfig:
    domain_a: str = "source"
    domain_b: str = "cello"
    model: CycleGANModelParams = field(default_factory=CycleGANModelParams)
    loss: CycleGANLossParams = field(default_factory=CycleGANLossParams)
    lr_g: float = 1e-4
    lr_d: float = 4e-4                    # two time scales: the critic learns faster than the generators
    decay_from: float = 0.5               # learning rates decay linearly to 0 from this fraction of max_steps
    grad_clip: float = 10.0               # gradient norm clip of each optimiser step (0: off)
    pool_size: int = 50                   # past fakes the discriminators also see
    batch_size: int = 1
    crop_frames: int = 64                 # CQT frames per training crop (1.0 s at hop 256, 16 kHz)
    max_steps: int = 1000
    val_every_steps: int = 250
    seed: int = 0
    num_workers: int = 0
    checkpoint_root: str = "models/cache/cyclegan"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = CycleGANModelParams(**self.model)
        if isinstance(self.loss, dict):
            self.loss = CycleGANLossParams(**self.loss)
        if isinstance(self.trainer, dict):
            self.trainer = TrainerConfig(**self.trainer)
        for key in ("domain_a", "domain_b"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"{SECTION}.{key} must name a feature domain, found {getattr(self, key)!r}")
        if self.domain_a == self.domain_b:
            raise ConfigError(f"{SECTION}: domain_a and domain_b are both {self.domain_a!r}; name two domains")
        for key in ("lr_g", "lr_d"):
            _positive(getattr(self, key), key)
        _positive(self.grad_clip, "grad_clip", zero=True)
        if not (isinstance(self.decay_from, (int, float)) and 0.0 <= self.decay_from <= 1.0):
            raise ConfigError(f"{SECTION}.decay_from must be a fraction from 0 to 1, found {self.decay_from!r}")
        for key in ("max_steps", "val_every_steps", "batch_size", "crop_frames"):
            _positive(getattr(self, key), key, integer=True)
        _positive(self.pool_size, "pool_size", integer=True, zero=True)

    def model_config(self, n_bins: int | None = None) -> CycleGANConfig:
        """The preset with the overrides, on the features' CQT bins when given."""
        changes: dict[str, Any] = {k: getattr(self.model, k) for k in MODEL_OVERRIDES
                                   if getattr(self.model, k) is not None}
        if n_bins is not None:
            changes["n_bins"] = int(n_bins)
        try:
            return PRESETS[self.model.preset].replace(**changes)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{SECTION}.model overrides {changes}: {exc}") from exc

    def lr_factor(self, step: int) -> float:
        """Both learning rates' factor at optimiser step ``step``: 1, then linearly down to 0 at max_steps."""
        start = self.decay_from * self.max_steps
        if step < start or self.max_steps <= start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / (self.max_steps - start))
