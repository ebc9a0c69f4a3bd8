"""cyclegan_untrained: the ``cyclegan`` system with the networks as train_cyclegan initialised them (step 0,
``models/cyclegan/untrained.pt``): what training added, on the same clips and metrics."""

from __future__ import annotations

from pathlib import Path

from timbrelab.config import FeaturesConfig
from timbrelab.evaluation.systems import cyclegan


class UntrainedCycleGAN(cyclegan.CycleGANSystem):
    label = "CycleGAN untrained + Griffin-Lim"
    description = "the CycleGAN's networks at step 0 (its initialisation), phase recovered by Griffin-Lim"

    def reconstruct(self, audio, seed):
        return None   # the transfer row is the comparison; untrained reconstructions would only cost time


def build(params: dict, root: Path, features: FeaturesConfig) -> UntrainedCycleGAN:
    return cyclegan.build({"model": "models/cyclegan/untrained.pt", **params}, root, features,
                          name="cyclegan_untrained", system=UntrainedCycleGAN)
