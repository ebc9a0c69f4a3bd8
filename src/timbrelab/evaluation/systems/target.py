"""target: real clips of the target instrument (no transfer): the ceiling for the timbre metrics.

It transfers nothing: its outputs are the transfer set's real target clips, so the pitch and loudness
metrics (which compare an output with its source) do not apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from timbrelab.config import FeaturesConfig
from timbrelab.evaluation.systems import System, system_params


@dataclass
class TargetParams:
    """No settings."""


class RealTarget(System):
    label = "real target clips"
    description = "recordings of the target instrument itself (held-out clips)"
    transfers = False


def build(params: dict, root: Path, features: FeaturesConfig) -> RealTarget:
    system_params(TargetParams, params, "target")
    return RealTarget()
