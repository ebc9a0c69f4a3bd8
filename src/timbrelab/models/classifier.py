"""The timbre (domain) classifier's network: a CNN over log-CQT patches (its training and what the evaluation
does with it: :mod:`timbrelab.evaluation.classifier`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from timbrelab.config import from_known_keys
from timbrelab.errors import ConfigError

MODEL_TYPE = "timbre_classifier"
# Grid keys every domain must share, and that a caller needs to compute the same CQT for new audio.
GRID_KEYS = ("sample_rate", "cqt_hop", "n_bins", "fmin_hz", "bins_per_octave", "log_floor")


class TimbreClassifier(nn.Module):
    """CNN over log-CQT patches -> ``(B, embed_dim)`` embeddings -> ``(B, K)`` logits over ``domains``.

    ``n_bins`` is the CQT grid it was trained on (inputs must match); ``cqt_std`` the fixed input scale
    (a buffer, so it travels with the weights). See the module doc for the normalisation and why the
    pooling makes it pitch-robust.
    """

    def __init__(self, domains: Sequence[str], n_bins: int, patch_frames: int = 32,
                 channels: Sequence[int] = (16, 32, 64, 64), embed_dim: int = 64, cqt_std: float = 1.0):
        super().__init__()
        if len(domains) < 2 or len(set(domains)) != len(domains):
            raise ConfigError(f"the classifier needs at least two distinct domains, found {list(domains)}")
        self.domains = tuple(str(d) for d in domains)
        self.n_bins, self.patch_frames = int(n_bins), int(patch_frames)
        self.channels, self.embed_dim = tuple(int(c) for c in channels), int(embed_dim)
        self.register_buffer("cqt_std", torch.tensor(float(cqt_std), dtype=torch.float32))
        self.grid: dict[str, Any] = {}   # the features' CQT grid (GRID_KEYS), set by training / loading
        blocks, width = [], 1
        for out in self.channels:
            blocks += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            width = out
        self.features = nn.Sequential(*blocks)
        self.project = nn.Linear(2 * width, self.embed_dim)
        self.head = nn.Linear(self.embed_dim, len(self.domains))

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as plain values (what a checkpoint stores)."""
        return {"domains": list(self.domains), "n_bins": self.n_bins, "patch_frames": self.patch_frames,
                "channels": list(self.channels), "embed_dim": self.embed_dim}

    def normalise(self, cqt: Tensor) -> Tensor:
        """Raw log-CQT ``(B, n_bins, T)`` or ``(B, 1, n_bins, T)`` -> ``(B, 1, n_bins, T)``: minus each
        patch's mean, over the fixed scale."""
        x = cqt.unsqueeze(1) if cqt.ndim == 3 else cqt
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != self.n_bins:
            raise ValueError(f"expected log-CQT patches (B, {self.n_bins}, T) or (B, 1, {self.n_bins}, T), "
                             f"got {tuple(cqt.shape)}")
        x = x.float()
        return (x - x.mean(dim=(2, 3), keepdim=True)) / self.cqt_std

    def embed(self, cqt: Tensor) -> Tensor:
        """Raw log-CQT patches -> ``(B, embed_dim)`` embeddings (pooled over frequency and time)."""
        h = self.features(self.normalise(cqt))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.project(pooled)

    def forward(self, cqt: Tensor) -> Tensor:
        """Raw log-CQT patches -> ``(B, len(domains))`` logits."""
        return self.head(self.embed(cqt))


@dataclass  # not frozen: OmegaConf validates params.yaml's section into it (a frozen one is read-only there)
class ClassifierConfig:
    """Model size and training schedule (``steps`` Adam steps at ``batch_size`` patches)."""

    patch_frames: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 64)
    embed_dim: int = 64
    batch_size: int = 64
    steps: int = 200
    lr: float = 3e-3
    weight_decay: float = 1e-4
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        for name in ("patch_frames", "embed_dim", "batch_size", "steps", "eval_batch_size"):
            _positive_int(getattr(self, name), f"classifier.{name}")
        if not self.channels:
            raise ConfigError("classifier.channels must list at least one conv width")
        for width in self.channels:
            _positive_int(width, "classifier.channels[]")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "lr" and value == 0):
                raise ConfigError(f"classifier.{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, "
                                  f"found {value!r}")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> ClassifierConfig:
        return from_known_keys(cls, params, "classifier")


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, found {value!r}")
    return value


def build(model_config: Mapping[str, Any], stats: Mapping[str, Any] | None) -> TimbreClassifier:
    """The registry's builder: ``model_config`` is :meth:`TimbreClassifier.config`, ``stats`` the CQT grid."""
    model = TimbreClassifier(**model_config)
    model.grid = dict(stats or {})
    return model
