"""Scoring one system: per-clip measurements of its outputs, then each metric over clips with a bootstrap CI.

Every output is analysed exactly as the training data was (:func:`timbrelab.data.features.clip_features`
with the target's features config): f0 + confidence, A-weighted loudness, log-CQT. Then, per clip:

* **pitch** against the source's *true* f0 track (``.f0.csv`` from the source generator), after undoing the
  octave shift the system applied (:func:`~timbrelab.evaluation.metrics.pitch_accuracy`,
  :func:`~timbrelab.evaluation.metrics.f0_error_cents`); the identity row therefore measures the f0
  estimator itself;
* **loudness** against the source's own loudness envelope (L1 in dB over the source's sounding frames,
  Pearson correlation);
* **target timbre**: the classifier's acceptance (fraction of the clip's patches it calls the target) and
  the clip's patch embeddings, pooled over clips for the Fréchet distance to the reference clips;
* **transfer score** = acceptance x raw pitch accuracy of the clip: the fraction of the clip that both
  sounds like the target and keeps the melody (the ranking's key: identity keeps the melody and scores ~0
  on timbre, a system that ignores the source scores ~0 on pitch).

Reconstruction (per model, on the reference clips): the model re-renders each real target clip from its
own features; multi-scale spectral distance and log-CQT L1 against the original.

Metrics that do not apply to a system are ``None`` (shown "n/a"): pitch and loudness for the real-target
row (it has no source), reconstruction for systems without a model of the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timbrelab.config import FeaturesConfig
from timbrelab.data.features import clip_features
from timbrelab.dsp.framing import frame_times as grid_times
from timbrelab.dsp.framing import n_frames
from timbrelab.errors import ConfigError
from timbrelab.evaluation import metrics as m
from timbrelab.evaluation.classifier import clip_acceptance, clip_embeddings
from timbrelab.models.classifier import TimbreClassifier


@dataclass
class MetricsConfig:
    """``evaluate.metrics``: how every system is scored (changing it re-evaluates every system)."""

    seed: int = 0
    n_resamples: int = 1000          # bootstrap resamples of clips for the mean / pooled-ratio metrics
    frechet_resamples: int = 200     # for the Fréchet distance (each resample is a matrix square root)
    confidence: float = 0.95
    embedding_hop: int = 8           # CQT columns between classifier patches pooled for the Fréchet distance
    silence_db: float = m.SILENCE_DB  # source frames at or below this are not scored for loudness

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"evaluate.metrics.confidence ({self.confidence}) must lie strictly between 0 and 1")
        for key in ("n_resamples", "frechet_resamples", "embedding_hop"):
            if getattr(self, key) < 1:
                raise ConfigError(f"evaluate.metrics.{key} ({getattr(self, key)}) must be at least 1")


@dataclass(frozen=True)
class MetricInfo:
    key: str
    label: str
    group: str
    direction: str      # "higher" or "lower" is better
    unit: str
    description: str


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("transfer_score", "Transfer score", "summary", "higher", "",
               "per clip, target acceptance x raw pitch accuracy, averaged over clips: the share of the clip that "
               "sounds like the target AND keeps the melody; the table is ranked by it"),
    MetricInfo("raw_pitch", "Raw pitch acc.", "pitch", "higher", "",
               "frames (voiced in the source's true f0) whose output f0 is within 50 cents of the truth, after "
               "undoing the system's octave shift (mir_eval), pooled over frames"),
    MetricInfo("raw_chroma", "Raw chroma acc.", "pitch", "higher", "",
               "as raw pitch, with octave errors forgiven"),
    MetricInfo("f0_cents", "f0 error", "pitch", "lower", "cents",
               "median |output f0 - true f0| over frames voiced in both, per clip, averaged over clips"),
    MetricInfo("loudness_l1", "Loudness L1", "loudness", "lower", "dB",
               "mean |output - source| A-weighted loudness over the source's sounding frames, pooled over frames"),
    MetricInfo("loudness_corr", "Loudness corr.", "loudness", "higher", "",
               "Pearson correlation of output and source loudness envelopes (dynamics kept), averaged over clips"),
    MetricInfo("acceptance", "Target acceptance", "timbre", "higher", "",
               "share of 0.5 s patches the timbre classifier assigns to the target instrument, averaged over clips"),
    MetricInfo("frechet", "Fréchet dist. (in-house)", "timbre", "lower", "",
               "Fréchet distance between the classifier's patch embeddings of the outputs and of held-out real "
               "target clips: an in-house embedding, not VGGish FAD; compare with its floor"),
    MetricInfo("recon_spectral", "Recon. spectral dist.", "reconstruction", "lower", "",
               "the model re-renders real target clips from their own features: multi-scale spectral distance "
               "(DDSP's training loss) to the originals"),
    MetricInfo("recon_cqt_l1", "Recon. log-CQT L1", "reconstruction", "lower", "",
               "the same reconstructions: mean |log-CQT difference| (natural log of magnitude)"),
)
METRIC_KEYS = tuple(info.key for info in METRICS)


@dataclass
class ClipScore:
    """One output clip's measurements (``None``: the metric does not apply to it)."""

    id: str
    acceptance: float
    embeddings: np.ndarray                      # (P, D) classifier patch embeddings
    pitch: m.PitchAccuracy | None = None
    f0_error: m.F0Error | None = None
    loudness_l1: float | None = None
    loudness_frames: int = 0
    loudness_corr: float | None = None
    octave_shift: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The per-clip values results.json keeps (embeddings left out)."""
        values: dict[str, Any] = {"id": self.id, "acceptance": self.acceptance, "octave_shift": self.octave_shift}
        if self.pitch is not None:
            values.update(raw_pitch=_finite(self.pitch.raw_pitch), raw_chroma=_finite(self.pitch.raw_chroma),
                          voiced_frames=self.pitch.n_voiced, transfer_score=_transfer_score(self))
        if self.f0_error is not None:
            values["f0_cents"] = _finite(self.f0_error.median_abs_cents)
        if self.loudness_l1 is not None:
            values.update(loudness_l1=_finite(self.loudness_l1), loudness_corr=_finite(self.loudness_corr),
                          loudness_frames=self.loudness_frames)
        if self.warnings:
            values["warnings"] = list(self.warnings)
        return values


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _transfer_score(score: ClipScore) -> float | None:
    if score.pitch is None or not math.isfinite(score.pitch.raw_pitch):
        return None
    return score.acceptance * score.pitch.raw_pitch


def cqt_kwargs(features: FeaturesConfig) -> dict[str, Any]:
    """The features' CQT grid as :func:`timbrelab.dsp.cqt.log_cqt` keyword arguments."""
    c = features.cqt
    return {"hop_length": c.hop_length, "fmin_hz": c.fmin_hz, "bins_per_octave": c.bins_per_octave,
            "n_bins": c.n_bins, "log_floor": c.log_floor}


def analyse(audio: np.ndarray, features: FeaturesConfig) -> dict[str, np.ndarray]:
    """f0, confidence, loudness and log-CQT of (n,) audio at the features' rate, as the features stage does."""
    return clip_features(np.asarray(audio, dtype=np.float32), features)


def frame_times(n_samples: int, features: FeaturesConfig) -> np.ndarray:
    """Times (s) of the features' frame grid for a clip of ``n_samples``."""
    return grid_times(n_frames(n_samples, features.frame_hop), features.frame_hop, features.sample_rate)


def score_output(clip_id: str, output: np.ndarray, features: FeaturesConfig, classifier: TimbreClassifier,
                 target_domain: str, cfg: MetricsConfig, *, source: Mapping[str, np.ndarray] | None = None,
                 true_f0: tuple[np.ndarray, np.ndarray] | None = None, octave_shift: float = 0.0) -> ClipScore:
    """Measure one output clip. ``source``: the source clip's :func:`analyse` result (None for real target
    clips, which have no source); ``true_f0``: ``(f0_hz, voiced)`` of the source on the features' grid."""
    out = analyse(output, features)
    score = ClipScore(clip_id, clip_acceptance(classifier, out["cqt"], target_domain),
                      clip_embeddings(classifier, out["cqt"], cfg.embedding_hop).numpy().astype(np.float64),
                      octave_shift=float(octave_shift))
    if true_f0 is not None:
        ref_hz, ref_voiced = true_f0
        out_voiced = out["f0_confidence"] >= features.pitch.voiced_threshold
        score.pitch = m.pitch_accuracy(ref_hz, ref_voiced, out["f0_hz"], octave_shift=octave_shift)
        score.f0_error = m.f0_error_cents(ref_hz, ref_voiced, out["f0_hz"], out_voiced, octave_shift=octave_shift)
    if source is not None:
        ref_db, out_db = source["loudness_db"], out["loudness_db"]
        score.loudness_l1 = m.loudness_l1_db(ref_db, out_db, silence_db=cfg.silence_db)
        score.loudness_frames = int(m.loudness_frames(ref_db, cfg.silence_db).sum())
        score.loudness_corr = m.loudness_correlation(ref_db, out_db, silence_db=cfg.silence_db)
    return score


def reference_embeddings(clips: Sequence[np.ndarray], features: FeaturesConfig, classifier: TimbreClassifier,
                         cfg: MetricsConfig) -> list[np.ndarray]:
    """Per real reference clip, its (P, D) patch embeddings (the Fréchet distance's other side)."""
    return [clip_embeddings(classifier, analyse(audio, features)["cqt"], cfg.embedding_hop).numpy().astype(np.float64)
            for audio in clips]


def reconstruction_row(reference: np.ndarray, rendered: np.ndarray, features: FeaturesConfig) -> dict[str, float]:
    return {
        "recon_spectral": m.multiscale_spectral_distance(reference, rendered),
        "recon_cqt_l1": m.log_cqt_l1(reference, rendered, features.sample_rate, **cqt_kwargs(features)),
    }


def _interval(value: float, lo: float, hi: float, n: int) -> dict[str, float | int]:
    return {"value": float(value), "low": float(lo), "high": float(hi), "n": int(n)}


def _mean_ci(values: Sequence[float | None], cfg: MetricsConfig, salt: int) -> dict[str, float | int] | None:
    kept = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if kept.size == 0:
        return None
    return _interval(*m.bootstrap_ci(kept, cfg.n_resamples, cfg.confidence, cfg.seed + salt), kept.size)


def _ratio_ci(num: Sequence[float], den: Sequence[float], cfg: MetricsConfig, salt: int
              ) -> dict[str, float | int] | None:
    pairs = [(a, b) for a, b in zip(num, den, strict=True) if b > 0 and math.isfinite(a)]
    if not pairs:
        return None
    n, d = (np.asarray(x, dtype=np.float64) for x in zip(*pairs, strict=True))
    return _interval(*m.bootstrap_ratio_ci(n, d, cfg.n_resamples, cfg.confidence, cfg.seed + salt), len(pairs))


def summarise(scores: Sequence[ClipScore], reconstructions: Sequence[Mapping[str, float]] | None,
              reference: Sequence[np.ndarray], cfg: MetricsConfig) -> dict[str, dict[str, float | int] | None]:
    """Every metric of :data:`METRICS` over the clips -> ``{key: {"value", "low", "high", "n"} | None}``.

    Each metric draws its bootstrap from its own seed (``cfg.seed`` + the metric's position), so adding a
    metric does not move the others' intervals.
    """
    salt = {key: i for i, key in enumerate(METRIC_KEYS)}
    pitched = [s for s in scores if s.pitch is not None]
    loud = [s for s in scores if s.loudness_l1 is not None]
    result: dict[str, dict[str, float | int] | None] = dict.fromkeys(METRIC_KEYS)
    result["transfer_score"] = _mean_ci([_transfer_score(s) for s in pitched], cfg, salt["transfer_score"])
    result["raw_pitch"] = _ratio_ci([s.pitch.n_pitch_correct for s in pitched], [s.pitch.n_voiced for s in pitched],
                                    cfg, salt["raw_pitch"])
    result["raw_chroma"] = _ratio_ci([s.pitch.n_chroma_correct for s in pitched],
                                     [s.pitch.n_voiced for s in pitched], cfg, salt["raw_chroma"])
    result["f0_cents"] = _mean_ci([s.f0_error.median_abs_cents for s in pitched if s.f0_error], cfg, salt["f0_cents"])
    result["loudness_l1"] = _ratio_ci([s.loudness_l1 * s.loudness_frames for s in loud],
                                      [s.loudness_frames for s in loud], cfg, salt["loudness_l1"])
    result["loudness_corr"] = _mean_ci([s.loudness_corr for s in loud], cfg, salt["loudness_corr"])
    result["acceptance"] = _mean_ci([s.acceptance for s in scores], cfg, salt["acceptance"])
    if scores:
        pooled_reference = np.concatenate(list(reference))
        value = m.bootstrap_frechet_ci([s.embeddings for s in scores], pooled_reference, cfg.frechet_resamples,
                                       cfg.confidence, cfg.seed + salt["frechet"])
        result["frechet"] = _interval(*value, len(scores))
    if reconstructions:
        for key in ("recon_spectral", "recon_cqt_l1"):
            result[key] = _mean_ci([row[key] for row in reconstructions], cfg, salt[key])
    return result


def frechet_floor(reference: Sequence[np.ndarray], cfg: MetricsConfig) -> dict[str, float | int] | None:
    """The Fréchet floor of the reference clips (two disjoint halves by clip), or None with fewer than 4 clips."""
    if len(reference) < 4:
        return None
    value = m.frechet_floor_by_clip(reference, cfg.seed, cfg.frechet_resamples, cfg.confidence)
    return _interval(*value, len(reference) // 2)
