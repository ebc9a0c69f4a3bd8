"""ddsp: the DDSP decoder trained on the target (train_ddsp) driven by the source's f0 and loudness.

Transfer is :func:`timbrelab.inference.ddsp_transfer.ddsp_transfer` exactly as ``timbrelab transfer`` runs it (whole-octave
shift toward the target's register, loudness quantile mapping); reconstruction renders a real target clip
from its own f0 and loudness, no shift and no mapping: what the model learnt of its instrument.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timbrelab.config import FeaturesConfig
from timbrelab.evaluation.systems import Output, System, system_params
from timbrelab.inference.ddsp_transfer import TransferWarning, ddsp_resynthesize, ddsp_transfer
from timbrelab.inference.loading import load_model


@dataclass
class DDSPParams:
    model: str = "models/ddsp"          # the train_ddsp output folder (model.pt inside)
    octave_shift: str = "auto"          # "auto" or a whole number of octaves, as `timbrelab transfer`
    loudness_shift_db: float = 0.0


class DDSPSystem(System):
    label = "DDSP"
    description = "harmonic-plus-noise decoder on the source's f0 and loudness (trained on the target)"

    def __init__(self, model, payload, cfg: DDSPParams, sample_rate: int):
        self.model, self.payload, self.cfg, self.sample_rate = model, payload, cfg, sample_rate

    def transfer(self, audio: np.ndarray, seed: int) -> Output:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TransferWarning)   # kept in the result and reported per clip
            result = ddsp_transfer(audio, self.sample_rate, self.model, self.payload,
                                   octave_shift=self.cfg.octave_shift, loudness_shift_db=self.cfg.loudness_shift_db,
                                   seed=seed)
        return Output(result.audio, float(result.octave_shift), list(result.warnings))

    def reconstruct(self, audio: np.ndarray, seed: int) -> np.ndarray:
        return ddsp_resynthesize(audio, self.sample_rate, self.model, self.payload, seed=seed)


def build(params: dict, root: Path, features: FeaturesConfig) -> DDSPSystem:
    cfg = system_params(DDSPParams, params, "ddsp")
    model, payload, _ = load_model("ddsp", checkpoint=root / cfg.model / "model.pt")
    return DDSPSystem(model, payload, cfg, features.sample_rate)
