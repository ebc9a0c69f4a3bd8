"""cqt_griffinlim: the source's log-CQT brought back to audio by phase recovery (Griffin-Lim), no model.

What the CQT representation alone costs: TimbreTron's CycleGAN works on this magnitude CQT, so its outputs
can sound no better than this resynthesis of an untouched one (WaveNet then replaces Griffin-Lim). Its
reconstruction row is the same round trip on real target clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timbrelab.config import FeaturesConfig
from timbrelab.dsp.cqt import griffinlim, log_cqt
from timbrelab.evaluation.scoring import cqt_kwargs
from timbrelab.evaluation.systems import Output, System, system_params


@dataclass
class GriffinLimParams:
    iters: int = 32


class CQTGriffinLim(System):
    label = "CQT + Griffin-Lim (no model)"
    description = "the source's magnitude log-CQT, phase recovered by Griffin-Lim"

    def __init__(self, features: FeaturesConfig, iters: int):
        self.sample_rate = features.sample_rate
        self.iters = int(iters)
        self.grid = cqt_kwargs(features)

    def _round_trip(self, audio: np.ndarray, seed: int) -> np.ndarray:
        spectrum = log_cqt(audio, self.sample_rate, **self.grid)
        return griffinlim(spectrum, self.sample_rate, audio.shape[0], n_iter=self.iters, seed=seed, **self.grid)

    def transfer(self, audio: np.ndarray, seed: int) -> Output:
        return Output(self._round_trip(audio, seed))

    def reconstruct(self, audio: np.ndarray, seed: int) -> np.ndarray:
        return self._round_trip(audio, seed)


def build(params: dict, root: Path, features: FeaturesConfig) -> CQTGriffinLim:
    cfg = system_params(GriffinLimParams, params, "cqt_griffinlim")
    return CQTGriffinLim(features, cfg.iters)
