"""Timbre transfer: features of any source audio, decoded by a model trained on the target instrument.

DDSP transfer (:func:`ddsp_transfer`), in the steps of the DDSP paper's timbre transfer:

1. **Features** of the source exactly as the features stage computes them for the training data
   (:func:`source_features`): the checkpoint's ``stats["features_config"]`` (older checkpoints without it:
   the FeaturesConfig defaults with the stats' sample rate, frame hop, estimator and voicing threshold),
   f0 + confidence by :func:`~timbrelab.dsp.pitch.estimate_f0`, A-weighted loudness by
   :func:`~timbrelab.dsp.loudness.a_weighted_loudness`, on the centred grid (``1 + n // hop`` frames).
2. **Octave shift** (:func:`auto_octave_shift`): whole octaves only, so the melody keeps its key;
   ``"auto"`` picks the number that brings the mean MIDI pitch of the source's voiced frames
   (confidence >= the voicing threshold) nearest the target's ``f0.mean_midi``. Every frame's f0 is
   multiplied by ``2 ** shift``.
3. **Loudness** (:func:`quantile_map_loudness`): the source's distribution of *sounding* frames is mapped
   onto the target's train distribution of sounding frames by quantile mapping, then ``loudness_shift_db``
   is added. See that function for the silence rule.
4. **Decode** with the target model, noise seeded, and make the audio peak-safe (:func:`peak_safe`).

A warning (:class:`TransferWarning`, also returned in :attr:`TransferResult.warnings`) says when more than
:data:`OUT_OF_RANGE_FRACTION` of the shifted voiced frames lie outside the target's trained pitch range
``[f0.p01_midi, f0.p99_midi]``: the decoder has never seen such inputs and its timbre there is a guess.

Input is any rate and channel count (averaged to mono, resampled to the model's rate); the output is mono
float32 at the model's sample rate. Bad input raises :class:`~timbrelab.errors.AudioError` /
:class:`~timbrelab.errors.ConfigError` with a one-line message (:func:`transfer_file` prefixes the file).

Loading the model (a ``model.pt``, an MLflow run or registered version): :mod:`timbrelab.inference.loading`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timbrelab.config import FeaturesConfig, validate
from timbrelab.errors import AudioError, ConfigError, TimbrelabError, first_line

OUT_OF_RANGE_FRACTION = 0.05   # warn above this fraction of voiced frames outside the trained [p01, p99]
MIN_VOICED_FRACTION = 0.05     # fewer voiced frames than this among the sounding ones: unpitched input
PEAK_LIMIT = 0.99              # output peaking above 1 is scaled to this peak (prepare's peak_limit)
MAX_OCTAVE_SHIFT = 8           # |N| beyond this is certainly a typo (8 octaves span MIDI 0..96)


class TransferWarning(UserWarning):
    """Transfer ran but the result may be poor (pitch outside the trained range, output rescaled)."""


@dataclass
class TransferResult:
    """What :func:`ddsp_transfer` returns. Frame arrays are (F,) on the model's grid (``1 + n // hop``)."""

    audio: np.ndarray              # (n,) float32 mono at sample_rate, peak-safe in [-1, 1]
    sample_rate: int
    octave_shift: int
    f0_hz: np.ndarray              # source f0 (Hz)
    f0_confidence: np.ndarray      # source confidence in [0, 1]
    f0_shifted_hz: np.ndarray      # f0_hz * 2 ** octave_shift: what the decoder got
    loudness_db: np.ndarray        # source A-weighted loudness (dB)
    loudness_mapped_db: np.ndarray  # after quantile mapping and loudness_shift_db: what the decoder got
    voiced: np.ndarray             # (F,) bool, confidence >= the voicing threshold
    out_of_range_fraction: float   # of the voiced shifted frames outside [p01_midi, p99_midi]
    peak_scale: float = 1.0        # < 1 when the decoded audio was scaled down to PEAK_LIMIT
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate


# ------------------------------------------------------------------------------------------ pitch

def hz_to_midi(f0_hz: np.ndarray) -> np.ndarray:
    return 69.0 + 12.0 * np.log2(np.asarray(f0_hz, dtype=np.float64) / 440.0)


def auto_octave_shift(f0_hz: np.ndarray, voiced: np.ndarray, target_mean_midi: float) -> int:
    """Whole octaves that bring the mean MIDI pitch of the voiced frames nearest ``target_mean_midi``.

    The mean is taken in MIDI (log frequency), the scale the target's ``f0.mean_midi`` uses; rounding
    half away from zero never matters in practice (a source exactly 6 semitones off either way is as far).
    """
    source_mean = float(np.mean(hz_to_midi(f0_hz[voiced])))
    return int(np.round((float(target_mean_midi) - source_mean) / 12.0))


def out_of_range_fraction(f0_hz: np.ndarray, voiced: np.ndarray, lo_midi: float, hi_midi: float) -> float:
    """Fraction of the voiced frames whose pitch lies outside ``[lo_midi, hi_midi]`` (0 without voiced frames)."""
    midi = hz_to_midi(f0_hz[voiced])
    return float(np.mean((midi < lo_midi) | (midi > hi_midi))) if midi.size else 0.0


# --------------------------------------------------------------------------------------- loudness

def target_quantiles(stats: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(q, Q(q))`` of the target's train loudness: stats.json's quantiles at evenly spaced levels 0..1."""
    values = np.asarray(stats["loudness_db"]["quantiles"], dtype=np.float64)
    return np.linspace(0.0, 1.0, values.size), values


def _active_quantile_function(levels: np.ndarray, values: np.ndarray, silence_db: float
                              ) -> tuple[np.ndarray, np.ndarray]:
    """The target's quantile function restricted to its sounding part (above ``silence_db``), re-scaled
    so its levels run 0..1 again; the knot at ``silence_db`` is interpolated like the stats' own bins."""
    above = values > silence_db
    if not above.any():
        raise ConfigError(f"the target's train loudness never rises above the silence level {silence_db:g} dB; "
                          "its stats cannot drive a loudness mapping")
    first = int(np.argmax(above))
    if first == 0:
        p_silent, knots_q, knots_v = 0.0, levels, values
    else:
        lo_q, hi_q, lo_v, hi_v = levels[first - 1], levels[first], values[first - 1], values[first]
        p_silent = float(lo_q + (hi_q - lo_q) * (silence_db - lo_v) / (hi_v - lo_v)) if hi_v > lo_v else float(lo_q)
        knots_q = np.concatenate([[p_silent], levels[first:]])
        knots_v = np.concatenate([[silence_db], values[first:]])
    if p_silent >= 1.0:
        raise ConfigError("the target's train loudness is silent at every quantile")
    return (knots_q - p_silent) / (1.0 - p_silent), knots_v


def quantile_map_loudness(loudness_db: np.ndarray, target_levels: np.ndarray, target_values: np.ndarray, *,
                          silence_db: float, floor_db: float, shift_db: float = 0.0,
                          n_levels: int = 101) -> np.ndarray:
    """Map the source loudness onto the target's distribution; monotone non-decreasing in the input.

    Silence rule: only *sounding* frames (above ``silence_db``, the features stage's silence level) take
    part on either side. Silent frames (pauses, the floor) say nothing about the player's dynamics, and
    counting them would make the mapping depend on how much silence surrounds a note: a source that is half
    pauses would see its quietest notes lifted to the target's median. So the source's sounding quantiles
    (``n_levels`` of them, min and max included) go onto the target's quantiles above ``silence_db``
    (the target's own pauses and floor frames removed the same way), piecewise linearly in between;
    silent source frames keep their level. Since the target's sounding part starts at ``silence_db``, the
    map stays monotone across the boundary and loud stays loud. Ties (a source with one steady level)
    map to the mean of the target quantiles they span. Then ``shift_db`` is added to every frame and the
    result floored at ``floor_db`` (the model never saw less).
    """
    x = np.asarray(loudness_db, dtype=np.float64)
    active = x > silence_db
    out = x.copy()
    if active.any():
        u = np.linspace(0.0, 1.0, int(n_levels))
        src_q = np.quantile(x[active], u)
        tgt_levels, tgt_values = _active_quantile_function(target_levels, target_values, silence_db)
        tgt_q = np.interp(u, tgt_levels, tgt_values)
        knots, inverse = np.unique(src_q, return_inverse=True)
        mapped_knots = np.bincount(inverse, weights=tgt_q) / np.bincount(inverse)
        if knots.size == 1:
            out[active] = mapped_knots[0]
        else:
            out[active] = np.interp(x[active], knots, mapped_knots)
    return np.maximum(out + float(shift_db), float(floor_db)).astype(np.float32)


# --------------------------------------------------------------------------------------- features

def features_config(stats: Mapping[str, Any]) -> FeaturesConfig:
    """How the target's training features were computed: ``stats["features_config"]`` (ConfigError when the
    checkpoint's stats do not say: it was made before they did; retrain it)."""
    stored = stats.get("features_config")
    if not isinstance(stored, Mapping):
        raise ConfigError("the checkpoint's stats lack features_config (how its training features were "
                          "computed); rerun `dvc repro` to rebuild the features and the model")
    return validate(dict(stored), FeaturesConfig, "checkpoint stats.features_config")


def min_samples(cfg: FeaturesConfig) -> int:
    """Shortest clip (samples at ``cfg.sample_rate``) the features can be computed on: two periods of the
    estimator's lowest pitch (what :func:`estimate_f0` needs), and never under one model frame hop."""
    return max(cfg.frame_hop, math.ceil(2 * cfg.sample_rate / cfg.pitch.fmin_hz))


def prepare_audio(audio: np.ndarray, sample_rate: int, cfg: FeaturesConfig) -> np.ndarray:
    """(n,) or (n, channels) audio at any rate -> (n',) float32 mono at the features' rate, checked."""
    from timbrelab.audio import resample, to_mono

    array = np.asarray(audio)
    if array.ndim not in (1, 2) or not np.issubdtype(array.dtype, np.floating):
        raise AudioError(f"expected float audio of shape (n,) or (n, channels), got {array.dtype} {array.shape}")
    if not np.all(np.isfinite(array)):
        raise AudioError("audio holds NaN or infinite samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"sample rate {sample_rate!r} must be a positive integer")
    mono = to_mono(array)
    shortest = min_samples(cfg)
    if mono.shape[0] * cfg.sample_rate < shortest * int(sample_rate):
        raise AudioError(f"{1000 * mono.shape[0] / sample_rate:.1f} ms of audio is too short: transfer needs at least "
                         f"{1000 * shortest / cfg.sample_rate:.1f} ms ({shortest} samples at {cfg.sample_rate} Hz, "
                         f"two periods of the f0 estimator's fmin {cfg.pitch.fmin_hz:g} Hz)")
    return resample(mono, int(sample_rate), cfg.sample_rate)


def source_features(audio: np.ndarray, cfg: FeaturesConfig) -> dict[str, np.ndarray]:
    """f0, confidence and loudness of (n,) audio at ``cfg.sample_rate``, exactly as the features stage
    computes them (:func:`timbrelab.data.features.clip_features` without the CQT, which DDSP does not use)."""
    from timbrelab.dsp.loudness import a_weighted_loudness
    from timbrelab.dsp.pitch import estimate_f0

    f0, confidence = estimate_f0(audio, cfg.sample_rate, cfg.frame_hop, estimator=cfg.pitch.estimator,
                                 fmin_hz=cfg.pitch.fmin_hz, fmax_hz=cfg.pitch.fmax_hz)
    loudness = a_weighted_loudness(audio, cfg.sample_rate, cfg.frame_hop, n_fft=cfg.loudness.n_fft,
                                   floor_db=cfg.loudness.floor_db)
    return {"f0_hz": f0.astype(np.float32), "f0_confidence": confidence.astype(np.float32),
            "loudness_db": loudness.astype(np.float32)}


def _check_pitched(feats: dict[str, np.ndarray], cfg: FeaturesConfig) -> np.ndarray:
    """The voiced mask; AudioError for silent or unpitched input (the model only renders pitched notes)."""
    loud = feats["loudness_db"]
    sounding = loud > cfg.silence_db
    if not sounding.any():
        raise AudioError(f"silent: the loudness never rises above {cfg.silence_db:g} dB (peak {float(loud.max()):.1f} "
                         "dB); nothing to transfer")
    voiced = feats["f0_confidence"] >= cfg.pitch.voiced_threshold
    fraction = float(voiced[sounding].mean())
    if not voiced.any() or fraction < MIN_VOICED_FRACTION:
        raise AudioError(f"no pitch found: {100 * fraction:.1f} % of the {int(sounding.sum())} sounding frames are "
                         f"voiced (f0 confidence >= {cfg.pitch.voiced_threshold:g}, need "
                         f"{100 * MIN_VOICED_FRACTION:g} %); transfer needs a pitched, monophonic source with its "
                         f"pitch inside the f0 estimator's band {cfg.pitch.fmin_hz:g}-{cfg.pitch.fmax_hz:g} Hz")
    return voiced


# ------------------------------------------------------------------------------------------ model

def _target_stats(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's stats with the keys transfer needs checked (ConfigError naming the missing one)."""
    stats = payload.get("stats")
    if not isinstance(stats, Mapping):
        raise ConfigError("the checkpoint holds no training stats; retrain it with this timbrelab version")
    needed = [("loudness_db", "quantiles"), ("f0", "mean_midi"), ("f0", "p01_midi"), ("f0", "p99_midi")]
    for group, key in needed:
        if not isinstance(stats.get(group), Mapping) or key not in stats[group]:
            raise ConfigError(f"the checkpoint's stats lack {group}.{key}; rerun `dvc repro` to rebuild the features "
                              "and the model")
    if len(stats["loudness_db"]["quantiles"]) < 3:
        raise ConfigError("the checkpoint's stats hold fewer than 3 loudness quantiles")
    return dict(stats)


def check_model_matches(model, cfg: FeaturesConfig) -> None:
    """The model must run on the features' grid; a checkpoint whose model and features disagree is refused."""
    mcfg = model.cfg
    if (mcfg.sample_rate, mcfg.hop) != (cfg.sample_rate, cfg.frame_hop):
        raise ConfigError(f"the checkpoint's model runs at {mcfg.sample_rate} Hz / hop {mcfg.hop} but its features "
                          f"were computed at {cfg.sample_rate} Hz / hop {cfg.frame_hop}")


def peak_safe(audio: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale (never clip) audio peaking above 1 down to :data:`PEAK_LIMIT`: clipping would add harmonics the
    model did not make, a gain keeps the waveform. Returns ``(audio, scale)``; scale 1 when untouched."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 1.0:
        return audio, 1.0
    scale = PEAK_LIMIT / peak
    return (audio * scale).astype(np.float32), scale


def _decode(model, f0_hz: np.ndarray, loudness_db: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        audio = model(torch.from_numpy(np.ascontiguousarray(f0_hz, dtype=np.float32))[None],
                      torch.from_numpy(np.ascontiguousarray(loudness_db, dtype=np.float32))[None],
                      int(n_samples), generator=generator)
    decoded = audio[0].detach().cpu().numpy().astype(np.float32)
    if not np.all(np.isfinite(decoded)):
        raise TimbrelabError("the model produced non-finite audio (NaN or inf); the checkpoint is likely damaged")
    return decoded


def parse_octave_shift(value: str | int) -> str | int:
    """``"auto"`` or a whole number of octaves (``"+1"``, ``-2``); ConfigError otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        shift = int(value)
    elif isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    else:
        try:
            shift = int(str(value).strip())
        except ValueError:
            raise ConfigError(f"octave shift {value!r}: expected 'auto' or a whole number of octaves") from None
    if abs(shift) > MAX_OCTAVE_SHIFT:
        raise ConfigError(f"octave shift {shift}: at most {MAX_OCTAVE_SHIFT} octaves either way")
    return shift


def ddsp_transfer(audio: np.ndarray, sample_rate: int, model, payload: Mapping[str, Any], *,
                  octave_shift: str | int = "auto", loudness_shift_db: float = 0.0, seed: int = 0) -> TransferResult:
    """Source audio -> the target model's rendition of it (see the module doc for the steps).

    ``audio`` (n,) or (n, channels) float at ``sample_rate``; ``model`` a :class:`~timbrelab.models.ddsp.DDSP`
    and ``payload`` its checkpoint payload (:func:`load_transfer_model`). Raises AudioError for silent,
    unpitched, too short or non-finite input and ConfigError for unusable checkpoint stats or settings.
    """
    stats = _target_stats(payload)
    cfg = features_config(stats)
    check_model_matches(model, cfg)
    shift_request = parse_octave_shift(octave_shift)
    if not math.isfinite(float(loudness_shift_db)):
        raise ConfigError(f"loudness shift {loudness_shift_db!r} dB must be finite")

    mono = prepare_audio(audio, sample_rate, cfg)
    feats = source_features(mono, cfg)
    voiced = _check_pitched(feats, cfg)
    f0_stats = stats["f0"]
    shift = (auto_octave_shift(feats["f0_hz"], voiced, f0_stats["mean_midi"]) if shift_request == "auto"
             else shift_request)
    f0_shifted = (feats["f0_hz"].astype(np.float64) * 2.0 ** shift).astype(np.float32)
    levels, values = target_quantiles(stats)
    loud_mapped = quantile_map_loudness(feats["loudness_db"], levels, values, silence_db=cfg.silence_db,
                                        floor_db=cfg.loudness.floor_db, shift_db=float(loudness_shift_db))

    messages: list[str] = []
    lo, hi = float(f0_stats["p01_midi"]), float(f0_stats["p99_midi"])
    outside = out_of_range_fraction(f0_shifted, voiced, lo, hi)
    if outside > OUT_OF_RANGE_FRACTION:
        midi = hz_to_midi(f0_shifted[voiced])
        messages.append(f"{100 * outside:.0f} % of the voiced frames (pitch MIDI {np.min(midi):.1f}-{np.max(midi):.1f} "
                        f"after a {shift:+d} octave shift) lie outside the range the model was trained on "
                        f"(MIDI {lo:.1f}-{hi:.1f}, the train set's 1-99 %); expect a poor timbre there")

    decoded = _decode(model, f0_shifted, loud_mapped, mono.shape[0], seed)
    decoded, scale = peak_safe(decoded)
    if scale < 1.0:
        messages.append(f"the decoded audio peaked at {PEAK_LIMIT / scale:.2f}; scaled by {scale:.3f} "
                        f"({20 * math.log10(scale):.1f} dB) to peak {PEAK_LIMIT}; lower --loudness-shift to avoid it")
    for message in messages:
        warnings.warn(message, TransferWarning, stacklevel=2)
    return TransferResult(audio=decoded, sample_rate=cfg.sample_rate, octave_shift=shift, f0_hz=feats["f0_hz"],
                          f0_confidence=feats["f0_confidence"], f0_shifted_hz=f0_shifted,
                          loudness_db=feats["loudness_db"], loudness_mapped_db=loud_mapped, voiced=voiced,
                          out_of_range_fraction=outside, peak_scale=scale, warnings=messages)


def ddsp_resynthesize(audio: np.ndarray, sample_rate: int, model, payload: Mapping[str, Any], *,
                      seed: int = 0) -> np.ndarray:
    """A clip of the target instrument re-rendered from its own f0 and loudness: no octave shift, no loudness
    mapping (the evaluation's reconstruction; (n,) float32 at the model's rate, peak-safe)."""
    cfg = features_config(_target_stats(payload))
    check_model_matches(model, cfg)
    mono = prepare_audio(audio, sample_rate, cfg)
    feats = source_features(mono, cfg)
    decoded = _decode(model, feats["f0_hz"], feats["loudness_db"], mono.shape[0], seed)
    return peak_safe(decoded)[0]


# ---------------------------------------------------------------------------------- checks and files

def check_payload(model, payload: Mapping[str, Any], source: str) -> FeaturesConfig:
    """Refuse, at load time and naming ``source``, a checkpoint transfer cannot use: stats without the
    loudness quantiles or pitch range, an unreadable features config, or a model off the features' grid."""
    try:
        cfg = features_config(_target_stats(payload))
        check_model_matches(model, cfg)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {first_line(exc)}") from None
    return cfg


def transfer_file(input_path: str | os.PathLike, output_path: str | os.PathLike, model, payload: Mapping[str, Any],
                  **options: Any) -> TransferResult:
    """Read ``input_path`` (any format, rate, channels), transfer, write mono audio at the model's rate
    atomically in the format ``output_path``'s extension names (:mod:`timbrelab.audio_out`): on any error
    nothing is written. Errors about the input name the file; the output may not be the input."""
    from timbrelab.audio_out import render_file

    return render_file(input_path, output_path, lambda audio, sr: ddsp_transfer(audio, sr, model, payload, **options))
