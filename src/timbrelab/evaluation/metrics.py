"""Evaluation metrics: small pure functions on arrays, one clip at a time, plus the bootstrap over clips.

Every function takes the **reference first** (the true f0 track, the source's loudness, the target audio)
and the system's **output second**. Frame-based inputs share one frame grid (:mod:`timbrelab.dsp.framing`:
frame ``i`` at sample ``i * hop``); :func:`resample_f0_track` brings a ``.f0.csv`` truth onto a grid.

Directions at a glance: accuracies and correlations, higher is better; L1s, f0 errors, spectral
distances and the Fréchet distance, lower is better (0 = identical).

Confidence intervals are over **clips**, never over frames: consecutive frames of one clip are not
independent (an octave jump or a level offset spans whole notes, a model fails on whole clips), so
resampling frames would give intervals that are far too narrow. See :func:`bootstrap_ci` and
:func:`bootstrap_ratio_ci`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import mir_eval
import numpy as np
import torch

from timbrelab.dsp.cqt import log_cqt
from timbrelab.dsp.frechet import FRECHET_EPS, as_embeddings, frechet_distance, frechet_floor  # noqa: F401 - the API
from timbrelab.dsp.spectral import DEFAULT_FFT_SIZES, MultiScaleSpectralLoss
from timbrelab.f0track import read_f0_csv

CENT_TOLERANCE = 50.0      # mir_eval's (and MIREX's) raw pitch tolerance
SILENCE_DB = -60.0         # loudness frames of the reference at or below this are silence


# ------------------------------------------------------------------------------------------------ pitch

@dataclass(frozen=True)
class PitchAccuracy:
    """Raw pitch / raw chroma accuracy of one clip, with the frame counts behind them (for pooling).

    ``raw_pitch = n_pitch_correct / n_voiced`` (``nan`` when the reference has no voiced frame); the
    counts are what :func:`bootstrap_ratio_ci` takes to pool frames over clips.
    """

    raw_pitch: float
    raw_chroma: float
    n_pitch_correct: int
    n_chroma_correct: int
    n_voiced: int


@dataclass(frozen=True)
class F0Error:
    """Absolute f0 error in cents over the frames voiced in both tracks (``nan`` when there are none)."""

    median_abs_cents: float
    mean_abs_cents: float
    n_frames: int


def _f0_array(name: str, hz: np.ndarray) -> np.ndarray:
    array = np.asarray(hz, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be an f0 track of shape (frames,), got {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} must hold finite, non-negative frequencies in Hz (0 = no pitch)")
    return array


def _same_frames(*arrays: np.ndarray) -> None:
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"tracks must share one frame grid, got shapes {[a.shape for a in arrays]}")


def undo_octave_shift(out_hz: np.ndarray, octave_shift: float) -> np.ndarray:
    """(frames,) Hz -> the output's f0 divided by ``2 ** octave_shift``.

    ``octave_shift`` is the shift the transfer applied to the pitch, in octaves (``-1``: played an octave
    lower; ``-3 / 12``: a minor third lower). Undoing it compares the output against the source's own
    truth, so the identity row (shift 0) measures the f0 estimator, not the system against itself.
    """
    return np.asarray(out_hz, dtype=np.float64) / (2.0 ** float(octave_shift))


def pitch_accuracy(ref_hz: np.ndarray, ref_voiced: np.ndarray, out_hz: np.ndarray, *, octave_shift: float = 0.0,
                   cent_tolerance: float = CENT_TOLERANCE) -> PitchAccuracy:
    """Raw pitch and raw chroma accuracy (mir_eval.melody) of an output f0 track against the true one.

    ``ref_hz`` (frames,) true f0 in Hz, ``ref_voiced`` (frames,) bool, ``out_hz`` (frames,) the f0
    estimated on the output, same frame grid, in Hz. The output's f0 is first divided by
    ``2 ** octave_shift`` (:func:`undo_octave_shift`).

    Raw pitch: the fraction of reference-voiced frames whose output f0 is within ``cent_tolerance``
    cents (strictly) of the truth. Raw chroma: the same with octave errors forgiven (the difference is
    taken modulo 1200 cents). The output's voicing is ignored, as these metrics define it: an estimator
    that fills unvoiced frames (:func:`timbrelab.dsp.pitch.estimate_f0` does) is scored everywhere the
    reference is voiced, and an output frame with f0 = 0 counts as wrong (a reference frame marked voiced
    at 0 Hz counts as unvoiced). Higher is better, in [0, 1].
    """
    ref = _f0_array("ref_hz", ref_hz)
    out = undo_octave_shift(_f0_array("out_hz", out_hz), octave_shift)
    voiced = np.asarray(ref_voiced, dtype=bool)
    _same_frames(ref, out, voiced)
    voiced = voiced & (ref > 0)
    n_voiced = int(voiced.sum())
    if n_voiced == 0:
        return PitchAccuracy(math.nan, math.nan, 0, 0, 0)
    ref_cent = mir_eval.melody.hz2cents(np.where(voiced, ref, 0.0))
    out_cent = mir_eval.melody.hz2cents(out)
    ref_v = voiced.astype(np.float64)
    out_v = (out > 0).astype(np.float64)   # only for mir_eval's validation: raw metrics ignore it
    with warnings.catch_warnings():
        # "Estimated melody has no voiced frames": an all-zero output is a legitimate (all-wrong) answer.
        warnings.simplefilter("ignore", UserWarning)
        rpa = float(mir_eval.melody.raw_pitch_accuracy(ref_v, ref_cent, out_v, out_cent, cent_tolerance))
        rca = float(mir_eval.melody.raw_chroma_accuracy(ref_v, ref_cent, out_v, out_cent, cent_tolerance))
    # Binary voicing: mir_eval's fraction times n_voiced is an integer count (rounding only undoes float error).
    return PitchAccuracy(rpa, rca, round(rpa * n_voiced), round(rca * n_voiced), n_voiced)


def f0_error_cents(ref_hz: np.ndarray, ref_voiced: np.ndarray, out_hz: np.ndarray,
                   out_voiced: np.ndarray | None = None, *, octave_shift: float = 0.0) -> F0Error:
    """Median and mean ``|1200 * log2(out / ref)|`` in cents over frames voiced in both tracks.

    Same inputs as :func:`pitch_accuracy`; ``out_voiced`` (frames,) bool is the output's voicing (e.g.
    ``confidence >= 0.5``), None = every frame with ``out_hz > 0``. Unlike raw pitch this is a size,
    not a hit rate: it tells a 5-cent wobble from a 45-cent one. Lower is better, 0 = exact.
    """
    ref = _f0_array("ref_hz", ref_hz)
    out = undo_octave_shift(_f0_array("out_hz", out_hz), octave_shift)
    both = np.asarray(ref_voiced, dtype=bool)
    out_on = np.ones_like(both) if out_voiced is None else np.asarray(out_voiced, dtype=bool)
    _same_frames(ref, out, both, out_on)
    both = both & out_on & (ref > 0) & (out > 0)
    if not both.any():
        return F0Error(math.nan, math.nan, 0)
    cents = np.abs(1200.0 * np.log2(out[both] / ref[both]))
    return F0Error(float(np.median(cents)), float(np.mean(cents)), int(both.sum()))


def resample_f0_track(times_s: np.ndarray, f0_hz: np.ndarray, voiced: np.ndarray, grid_times_s: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """A true track (frames,) x3 -> ``(f0_hz, voiced)`` (grid,) on another frame grid.

    Grid frames that coincide with a track frame (within a thousandth of the track's hop, so the CSV's
    6-decimal times match) take its values. Between two track frames, f0 is interpolated in log
    frequency and the frame is voiced only if both neighbours are (a voicing edge is not scored).
    Outside the track's time span: unvoiced. f0 is 0.0 wherever unvoiced, as in ``.f0.csv``.
    """
    times = np.asarray(times_s, dtype=np.float64)
    hz = np.asarray(f0_hz, dtype=np.float64)
    on = np.asarray(voiced, dtype=bool) & (hz > 0)
    grid = np.asarray(grid_times_s, dtype=np.float64)
    _same_frames(times, hz, on)
    if times.size < 2 or np.any(np.diff(times) <= 0):
        raise ValueError("resample_f0_track: the track needs at least 2 frames at increasing times")
    tol = 1e-3 * float(np.min(np.diff(times)))
    right = np.clip(np.searchsorted(times, grid), 1, times.size - 1)
    left = right - 1
    frac = (grid - times[left]) / (times[right] - times[left])
    snap_left = np.abs(grid - times[left]) <= tol
    snap_right = np.abs(grid - times[right]) <= tol
    inside = (grid >= times[0] - tol) & (grid <= times[-1] + tol)
    out_on = np.where(snap_left, on[left], np.where(snap_right, on[right], on[left] & on[right])) & inside
    log_hz = np.log2(np.where(on, hz, 1.0))
    interp = np.exp2(log_hz[left] + np.clip(frac, 0.0, 1.0) * (log_hz[right] - log_hz[left]))
    out_hz = np.where(snap_left, hz[left], np.where(snap_right, hz[right], interp))
    return np.where(out_on, out_hz, 0.0), out_on


def load_true_f0(path, grid_times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.f0.csv`` truth (:mod:`timbrelab.f0track`) and resample it onto ``grid_times_s``."""
    return resample_f0_track(*read_f0_csv(path), grid_times_s)


# --------------------------------------------------------------------------------------------- loudness

def loudness_frames(ref_db: np.ndarray, silence_db: float = SILENCE_DB) -> np.ndarray:
    """(frames,) bool: the reference's frames above ``silence_db`` (dB re full scale), the ones scored.

    The mask comes from the reference alone, so every system is scored on the same frames and an output
    cannot drop frames from the score by being silent where the source plays.
    """
    return np.asarray(ref_db, dtype=np.float64) > float(silence_db)


def _loudness_pair(ref_db: np.ndarray, out_db: np.ndarray, silence_db: float) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref_db, dtype=np.float64)
    out = np.asarray(out_db, dtype=np.float64)
    if ref.ndim != 1 or ref.shape != out.shape:
        raise ValueError(f"loudness envelopes must be (frames,) on one grid, got {ref.shape} and {out.shape}")
    mask = loudness_frames(ref, silence_db)
    return ref[mask], out[mask]


def loudness_l1_db(ref_db: np.ndarray, out_db: np.ndarray, *, silence_db: float = SILENCE_DB) -> float:
    """Mean ``|out - ref|`` in dB over the reference's non-silent frames (:func:`loudness_frames`).

    Inputs: (frames,) loudness in dB (:func:`timbrelab.dsp.loudness.a_weighted_loudness`). An absolute
    level difference: a uniform gain of g dB scores g. Lower is better; ``nan`` if the reference is silent.
    Pool over clips with :func:`bootstrap_ratio_ci` (numerator ``l1 * n``, denominator
    ``n = loudness_frames(ref).sum()``) to weight clips by their scored frames.
    """
    ref, out = _loudness_pair(ref_db, out_db, silence_db)
    return float(np.mean(np.abs(out - ref))) if ref.size else math.nan


def loudness_correlation(ref_db: np.ndarray, out_db: np.ndarray, *, silence_db: float = SILENCE_DB) -> float:
    """Pearson correlation of the two envelopes (dB) over the reference's non-silent frames.

    Insensitive to a gain offset (that is :func:`loudness_l1_db`'s job): it asks whether the output
    follows the source's dynamics. In [-1, 1], higher is better; ``nan`` with fewer than 2 frames or a
    constant envelope. A per-clip number: average it over clips (:func:`bootstrap_ci`), since a
    correlation of frames pooled across clips would mostly measure level differences between clips.
    """
    ref, out = _loudness_pair(ref_db, out_db, silence_db)
    if ref.size < 2 or np.ptp(ref) == 0 or np.ptp(out) == 0:
        return math.nan
    return float(np.corrcoef(ref, out)[0, 1])


# ------------------------------------------------------------------------------------------ reconstruction

def _audio_pair(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(ref, dtype=np.float32)
    b = np.asarray(out, dtype=np.float32)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"audio must be two non-empty (n,) arrays of one length, got {a.shape} and {b.shape}")
    return a, b


def multiscale_spectral_distance(ref: np.ndarray, out: np.ndarray, *,
                                 fft_sizes: Sequence[int] = DEFAULT_FFT_SIZES, overlap: float = 0.75,
                                 mag_weight: float = 1.0, logmag_weight: float = 1.0) -> float:
    """DDSP's multi-scale spectral loss between two (n,) clips, as a float (training's own definition).

    :class:`timbrelab.dsp.spectral.MultiScaleSpectralLoss`: per FFT size, mean |Δ magnitude| plus mean
    |Δ log magnitude|, averaged over sizes. Lower is better, 0 = identical. The magnitude term is in
    unnormalised STFT units, so compare values only at one sample rate and loudness.
    """
    a, b = _audio_pair(ref, out)
    loss = MultiScaleSpectralLoss(fft_sizes, overlap, mag_weight, logmag_weight)
    with torch.no_grad():
        return float(loss(torch.from_numpy(b), torch.from_numpy(a)))


def log_cqt_l1(ref: np.ndarray, out: np.ndarray, sample_rate: int, **cqt_kwargs) -> float:
    """Mean ``|log_cqt(out) - log_cqt(ref)|`` over bins and frames (natural log of magnitude).

    The representation the CycleGAN translates (:func:`timbrelab.dsp.cqt.log_cqt`; ``cqt_kwargs`` are
    its hop/bins/floor arguments, pass the features config's). A uniform gain g reads ``|ln g|`` where
    the CQT is well above the log floor. Lower is better, 0 = identical.
    """
    a, b = _audio_pair(ref, out)
    return float(np.mean(np.abs(log_cqt(b, sample_rate, **cqt_kwargs) - log_cqt(a, sample_rate, **cqt_kwargs))))


# ----------------------------------------------------------------------------------------------- Fréchet

# --------------------------------------------------------------------------------------------- bootstrap

def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) clip indices drawn with replacement, in one draw (the same for a seed)."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples ({n_resamples}) must be >= 1")
    return np.random.default_rng(seed).integers(0, n, size=(int(n_resamples), n))


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence ({confidence}) must be in (0, 1)")
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.nanpercentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _per_clip(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be per-clip values of shape (n >= 1,), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values: drop clips where the metric does not apply")
    return array


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """Per-clip values (n,) -> ``(mean, lo, hi)``: the mean and its percentile bootstrap interval.

    Clips are resampled with replacement (one numpy draw of (n_resamples, n) indices), the mean is taken
    per resample, and ``lo``/``hi`` are its ``(1 -/+ confidence) / 2`` percentiles. Every clip weighs the
    same. Deterministic for a seed; one clip gives ``lo == hi == mean``. Values must be finite (leave
    out clips where the metric is "not applicable" or nan).
    """
    x = _per_clip("values", values)
    means = x[_resample_indices(x.size, n_resamples, seed)].mean(axis=1)
    lo, hi = _percentiles(means, confidence)
    return float(x.mean()), lo, hi


def bootstrap_ratio_ci(numerators: np.ndarray, denominators: np.ndarray, n_resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """A frame-pooled ratio over clips -> ``(sum(num) / sum(den), lo, hi)`` with a clip bootstrap.

    For metrics pooled over frames, e.g. raw pitch accuracy = correct frames / voiced frames of all
    clips together (:class:`PitchAccuracy`'s counts). The point estimate weighs each clip by its
    frames, as the pooled metric does (the mean of per-clip accuracies would let a clip with 10 voiced
    frames count as much as one with 1000). The bootstrap still resamples **clips**, keeping each
    clip's numerator with its denominator, and recomputes the pooled ratio per resample: frames within
    a clip are correlated, and the clip is the unit that was sampled. Resamples whose denominators sum
    to 0 are left out. Same indices as :func:`bootstrap_ci` for the same seed and n.
    """
    num = _per_clip("numerators", numerators)
    den = _per_clip("denominators", denominators)
    if num.shape != den.shape or np.any(den < 0):
        raise ValueError("numerators and denominators must be (n,) each, denominators >= 0")
    if den.sum() <= 0:
        raise ValueError("bootstrap_ratio_ci: every denominator is 0 (no frames to score)")
    index = _resample_indices(num.size, n_resamples, seed)
    num_sum, den_sum = num[index].sum(axis=1), den[index].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(den_sum > 0, num_sum / den_sum, np.nan)
    lo, hi = _percentiles(ratios, confidence)
    return float(num.sum() / den.sum()), lo, hi


def bootstrap_frechet_ci(clips: Sequence[np.ndarray], reference: np.ndarray, n_resamples: int = 200,
                         confidence: float = 0.95, seed: int = 0, *, eps: float = FRECHET_EPS
                         ) -> tuple[float, float, float]:
    """Fréchet distance of the pooled per-clip embeddings ``clips`` ((P_i, D) each) to ``reference`` (N, D),
    with a clip bootstrap: ``(distance of all clips, lo, hi)``.

    Each resample draws clips with replacement (the same indices as :func:`bootstrap_ci` for the seed),
    pools their embeddings and recomputes the distance to the fixed reference. A resample repeats clips, so
    its covariance is narrower and its distance biased upward: read the interval as the spread from which
    clips happened to be chosen, not as an unbiased interval around the point value.
    """
    if not clips:
        raise ValueError("bootstrap_frechet_ci: no clips")
    arrays = [as_embeddings(f"clip {i}", c) if len(c) >= 2 else np.asarray(c, dtype=np.float64)
              for i, c in enumerate(clips)]
    ref = as_embeddings("reference", reference)
    value = frechet_distance(np.concatenate(arrays), ref, eps=eps)
    stats = []
    for index in _resample_indices(len(arrays), n_resamples, seed):
        pooled = np.concatenate([arrays[i] for i in index])
        stats.append(frechet_distance(pooled, ref, eps=eps) if pooled.shape[0] >= 2 else np.nan)
    lo, hi = _percentiles(np.asarray(stats), confidence)
    return value, lo, hi


def frechet_floor_by_clip(clips: Sequence[np.ndarray], seed: int = 0, n_splits: int = 200,
                          confidence: float = 0.95, *, eps: float = FRECHET_EPS) -> tuple[float, float, float]:
    """The Fréchet floor of a set of real clips: the distance between two disjoint random halves **by clip**
    (``len(clips) // 2`` clips each, embeddings pooled per half) -> ``(value at seed, lo, hi)``, with lo/hi the
    percentiles over ``n_splits`` further random splits.

    Splitting by clip, not by embedding row, keeps a clip's (correlated, overlapping) patches on one side, as
    they are when a system's clips are compared with the reference. Needs at least 2 clips.
    """
    if len(clips) < 2:
        raise ValueError(f"frechet_floor_by_clip needs at least 2 clips, got {len(clips)}")
    arrays = [np.asarray(c, dtype=np.float64) for c in clips]
    half = len(arrays) // 2

    def split_distance(split_seed: int) -> float:
        order = np.random.default_rng(split_seed).permutation(len(arrays))
        a = np.concatenate([arrays[i] for i in order[:half]])
        b = np.concatenate([arrays[i] for i in order[half:2 * half]])
        return frechet_distance(a, b, eps=eps)

    value = split_distance(seed)
    spread = np.asarray([split_distance(seed + 1 + k) for k in range(int(n_splits))])
    lo, hi = _percentiles(spread, confidence)
    return value, lo, hi
