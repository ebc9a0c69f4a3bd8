"""CycleGAN transfer: CycleGAN(CQT(audio)), brought back to audio by a vocoder (Griffin-Lim until the WaveNet
vocoder exists; a vocoder is any function ``(log-CQT (bins, frames), n_samples) -> audio``).

1. The source is made mono at the features' rate and its log-CQT computed on the checkpoint's grid
   (``stats["a"]["features_config"]``, the features the model was trained on).
2. Optionally moved by whole octaves (``octave_shift``: a roll of ``bins_per_octave`` bins per octave; ``"auto"``
   is 0, the register the model was trained on), normalised with domain A's statistics, translated in chunks
   (:func:`timbrelab.models.cyclegan.translate_chunked`: bounded memory, no seam), un-normalised with domain B's.
3. Vocoded, ``loudness_shift_db`` applied as a gain, and made peak-safe.

``direction="b_to_a"`` runs the other generator (the cello played back as the source domain).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timbrelab.config import FeaturesConfig
from timbrelab.errors import ConfigError, first_line
from timbrelab.inference.ddsp_transfer import MAX_OCTAVE_SHIFT, features_config, peak_safe, prepare_audio

Vocoder = Callable[[np.ndarray, int], np.ndarray]


class TransferWarning(UserWarning):
    """Transfer ran but the result may be poor (output rescaled to stay peak-safe)."""


@dataclass
class CycleGANResult:
    audio: np.ndarray              # (n,) float32 mono at sample_rate
    sample_rate: int
    log_cqt: np.ndarray            # (bins, frames) the translated log-CQT the vocoder rendered
    octave_shift: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate


def _sides(payload: Mapping[str, Any], direction: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    stats = payload.get("stats") or {}
    if direction not in ("a_to_b", "b_to_a"):
        raise ConfigError(f"direction must be 'a_to_b' or 'b_to_a', got {direction!r}")
    src, dst = ("a", "b") if direction == "a_to_b" else ("b", "a")
    if not isinstance(stats.get(src), Mapping) or not isinstance(stats.get(dst), Mapping):
        raise ConfigError("the checkpoint's stats lack the two domains' statistics ('a' and 'b'); retrain it with "
                          "`dvc repro train_cyclegan`")
    return stats[src], stats[dst]


def check_payload(model, payload: Mapping[str, Any], source: str) -> FeaturesConfig:
    """The features config the checkpoint was trained on; ConfigError naming ``source`` when it cannot be used."""
    from timbrelab.data.datasets import cqt_normaliser

    try:
        side_a, side_b = _sides(payload, "a_to_b")
        cfg = features_config(side_a)
        cqt_normaliser(side_a), cqt_normaliser(side_b)
        if cfg.cqt.n_bins != model.cfg.n_bins:
            raise ConfigError(f"its generator takes {model.cfg.n_bins} CQT bins but its features have "
                              f"{cfg.cqt.n_bins}")
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {first_line(exc)}") from None
    return cfg


def check_features_match(payload: Mapping[str, Any], features: FeaturesConfig, source: str) -> None:
    """ConfigError when the checkpoint was trained on another CQT grid than ``features`` (this pipeline's)."""
    trained = features_config(_sides(payload, "a_to_b")[0])

    def grid(cfg: FeaturesConfig) -> dict[str, Any]:   # what shapes the CQT (not how it is inverted)
        c = cfg.cqt
        return {"sample_rate": cfg.sample_rate, "hop_length": c.hop_length, "fmin_hz": c.fmin_hz,
                "bins_per_octave": c.bins_per_octave, "n_bins": c.n_bins, "log_floor": c.log_floor}

    if grid(trained) != grid(features):
        diff = {k: (v, grid(features)[k]) for k, v in grid(trained).items() if v != grid(features)[k]}
        raise ConfigError(f"{source}: trained on other CQT settings than the features' (trained, features: {diff}); "
                          "retrain with `dvc repro train_cyclegan`")


def griffinlim_vocoder(cfg: FeaturesConfig, iters: int | None = None, seed: int = 0) -> Vocoder:
    from timbrelab.dsp.cqt import griffinlim

    c = cfg.cqt
    grid = dict(hop_length=c.hop_length, fmin_hz=c.fmin_hz, bins_per_octave=c.bins_per_octave, n_bins=c.n_bins,
                log_floor=c.log_floor)
    n_iter = c.griffinlim_iters if iters is None else iters
    return lambda spectrum, n: griffinlim(spectrum, cfg.sample_rate, n, n_iter=n_iter, seed=seed, **grid)


def shift_octaves(log_cqt: np.ndarray, octaves: int, bins_per_octave: int, floor: float) -> np.ndarray:
    """Roll ``(bins, frames)`` by whole octaves, the bins that come in at ``floor`` (silence)."""
    shift = int(octaves) * int(bins_per_octave)
    if shift == 0:
        return log_cqt
    out = np.full_like(log_cqt, floor)
    if shift > 0:
        out[shift:] = log_cqt[:-shift]
    else:
        out[:shift] = log_cqt[-shift:]
    return out


def translate_log_cqt(spectrum: np.ndarray, model, payload: Mapping[str, Any], direction: str = "a_to_b", *,
                      chunk_frames: int = 512) -> np.ndarray:
    """``(bins, frames)`` log-CQT of one domain -> the other's, normalised and un-normalised with the two domains'
    statistics, translated in chunks (bounded memory, no seam)."""
    import torch

    from timbrelab.data.datasets import cqt_normaliser
    from timbrelab.models.cyclegan import translate_chunked

    side_src, side_dst = _sides(payload, direction)
    (mean_s, std_s), (mean_d, std_d) = cqt_normaliser(side_src), cqt_normaliser(side_dst)
    x = torch.from_numpy(((spectrum - mean_s) / std_s).astype(np.float32))[None, None]
    with torch.no_grad():
        y = translate_chunked(model.generator(direction).eval(), x, chunk_frames=chunk_frames)
    return (y[0, 0].numpy() * std_d + mean_d).astype(np.float32)


def cyclegan_transfer(audio: np.ndarray, sample_rate: int, model, payload: Mapping[str, Any], *,
                      direction: str = "a_to_b", octave_shift: str | int = "auto", loudness_shift_db: float = 0.0,
                      vocoder: Vocoder | None = None, seed: int = 0, chunk_frames: int = 512) -> CycleGANResult:
    """(n,) or (n, channels) audio at any rate -> the other domain's rendition (see the module doc)."""
    from timbrelab.dsp.cqt import log_cqt

    cfg = features_config(_sides(payload, direction)[0])
    if octave_shift != "auto" and (isinstance(octave_shift, bool) or not isinstance(octave_shift, int)
                                   or abs(octave_shift) > MAX_OCTAVE_SHIFT):
        raise ConfigError(f"octave_shift must be 'auto' or a whole number from -{MAX_OCTAVE_SHIFT} to "
                          f"{MAX_OCTAVE_SHIFT}, got {octave_shift!r}")
    shift = 0 if octave_shift == "auto" else int(octave_shift)
    mono = prepare_audio(audio, sample_rate, cfg)
    c = cfg.cqt
    spectrum = log_cqt(mono, cfg.sample_rate, hop_length=c.hop_length, fmin_hz=c.fmin_hz,
                       bins_per_octave=c.bins_per_octave, n_bins=c.n_bins, log_floor=c.log_floor)
    spectrum = shift_octaves(spectrum, shift, c.bins_per_octave, float(np.log(c.log_floor)))
    translated = translate_log_cqt(spectrum, model, payload, direction, chunk_frames=chunk_frames)
    rendered = (vocoder or griffinlim_vocoder(cfg, seed=seed))(translated, mono.shape[0])
    rendered = (rendered * np.float32(10.0 ** (float(loudness_shift_db) / 20.0))).astype(np.float32)
    out, scale = peak_safe(rendered)
    warnings_ = [f"the output peaked above full scale and was scaled by {scale:.3f}"] if scale != 1.0 else []
    return CycleGANResult(out, cfg.sample_rate, translated, shift, warnings_)


def transfer_file(input_path: str | os.PathLike, output_path: str | os.PathLike, model, payload: Mapping[str, Any],
                  **options: Any) -> CycleGANResult:
    """Read ``input_path``, transfer, write ``output_path`` atomically (nothing written on an error)."""
    from timbrelab.audio_out import render_file

    return render_file(input_path, output_path, lambda audio, sr: cyclegan_transfer(audio, sr, model, payload,
                                                                                    **options))
