"""cyclegan: TimbreTron's CQT translation (train_cyclegan) of the source's log-CQT, rendered by Griffin-Lim.

Transfer is :func:`timbrelab.inference.cyclegan_transfer.cyclegan_transfer` exactly as ``timbrelab transfer --model
cyclegan`` runs it (A -> B, chunked, Griffin-Lim with the features' iterations). Reconstruction sends a real target
clip through B -> A -> B (the cycle) and renders it: what the pair of generators keeps of the instrument. Compare
with ``cqt_griffinlim``, the same inversion without translation; ``cyclegan_untrained`` is these networks at step 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timbrelab.config import FeaturesConfig
from timbrelab.dsp.cqt import log_cqt
from timbrelab.evaluation.scoring import cqt_kwargs
from timbrelab.evaluation.systems import Output, System, system_params
from timbrelab.inference.cyclegan_transfer import (
    check_features_match,
    cyclegan_transfer,
    griffinlim_vocoder,
    translate_log_cqt,
)
from timbrelab.inference.loading import load_model


@dataclass
class CycleGANParams:
    model: str = "models/cyclegan/model.pt"   # a train_cyclegan output (model.pt, or untrained.pt)
    iters: int = 32                            # Griffin-Lim iterations (the cqt_griffinlim row's)


def model_card(payload: dict) -> str:
    """The report row's short model card: what it was trained on, how long, on what, and where the rest is."""
    train = payload.get("train_config") or {}
    model, loss, trainer = train.get("model") or {}, train.get("loss") or {}, train.get("trainer") or {}
    cfg = payload.get("model_config") or {}
    untrained = payload.get("steps") == 0
    steps = (f"not trained (the initial weights of a {train.get('max_steps', '?')}-step run)" if untrained
             else f"{train.get('max_steps', '?')} steps of batch {train.get('batch_size', '?')} x "
                  f"{train.get('crop_frames', '?')} frames (kept step {payload.get('steps', '?')})")
    return (f"model card: {train.get('domain_a', '?')} -> {train.get('domain_b', '?')}, {steps}, preset "
            f"{model.get('preset', '?')} ({cfg.get('generator', '?')} generator, "
            f"{cfg.get('upsample', '?')} upsampling, {cfg.get('discriminator', '?')} discriminator, "
            f"{loss.get('adversarial', '?')}), trainer {trainer.get('accelerator', '?')}; the offline cello is a "
            "soundfont render; data, time and known failures: docs/cyclegan.md")


class CycleGANSystem(System):
    label = "CycleGAN + Griffin-Lim"
    description = "the source's log-CQT translated by the CycleGAN (A -> B), phase recovered by Griffin-Lim"

    def __init__(self, model, payload, cfg: CycleGANParams, features: FeaturesConfig):
        self.model, self.payload, self.cfg, self.features = model, payload, cfg, features
        self.description = f"{self.description}; {model_card(payload)}"

    def _vocoder(self, seed: int):
        return griffinlim_vocoder(self.features, self.cfg.iters, seed)

    def transfer(self, audio: np.ndarray, seed: int) -> Output:
        result = cyclegan_transfer(audio, self.features.sample_rate, self.model, self.payload,
                                   vocoder=self._vocoder(seed), seed=seed)
        return Output(result.audio, 0.0, list(result.warnings))

    def reconstruct(self, audio: np.ndarray, seed: int) -> np.ndarray:
        spectrum = log_cqt(audio, self.features.sample_rate, **cqt_kwargs(self.features))
        as_a = translate_log_cqt(spectrum, self.model, self.payload, "b_to_a")
        return self._vocoder(seed)(translate_log_cqt(as_a, self.model, self.payload, "a_to_b"), audio.shape[0])


def build(params: dict, root: Path, features: FeaturesConfig, *, name: str = "cyclegan",
          system: type[CycleGANSystem] = CycleGANSystem) -> CycleGANSystem:
    cfg = system_params(CycleGANParams, params, name)
    model, payload, source = load_model("cyclegan", checkpoint=root / cfg.model)
    check_features_match(payload, features, source)
    return system(model, payload, cfg, features)
