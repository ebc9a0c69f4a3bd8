"""identity: the source itself, unchanged (no transfer). The floor for timbre, the ceiling for pitch and
loudness: its pitch row measures the f0 estimator on the source, not a system."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timbrelab.config import FeaturesConfig
from timbrelab.evaluation.systems import Output, System, system_params


@dataclass
class IdentityParams:
    """No settings."""


class Identity(System):
    label = "identity (no transfer)"
    description = "the source clip unchanged"

    def transfer(self, audio: np.ndarray, seed: int) -> Output:
        return Output(np.asarray(audio, dtype=np.float32).copy())


def build(params: dict, root: Path, features: FeaturesConfig) -> Identity:
    system_params(IdentityParams, params, "identity")
    return Identity()
