"""f0 estimation on the project's frame grid: one interface, two estimators (SwiftF0 and pYIN).

``estimate_f0(audio, sample_rate, hop)`` returns ``(f0_hz, confidence)``, both float32 of shape
``(1 + n // hop,)`` on the centred grid of :mod:`timbrelab.dsp.framing` (frame ``i`` at sample ``i * hop``).

Contract of the output
----------------------
* ``confidence`` in [0, 1] says whether a frame is voiced: **voiced means confidence >=**
  :data:`VOICED_THRESHOLD` (0.5). Unvoiced frames are marked by confidence only. Audio that peaks below
  :data:`SILENCE_PEAK` (1e-3, -60 dBFS) around a frame is silence for both estimators (confidence 0;
  swift-f0 applies this rule itself, this module applies it to pYIN, which is level-blind).
* ``f0_hz`` is always positive, finite and inside ``[fmin_hz, fmax_hz]``, never 0 Hz. Where the estimator
  does not trust its own pitch (each estimator's *trust rule* below) the value is filled from the trusted
  neighbours by linear interpolation in log2(f0), held flat before the first and after the last trusted
  frame. A clip without a single trusted frame gets one constant: the median of the estimator's raw
  pitch guesses inside the band (``fmin_hz`` if there are none); its confidences stay as the estimator
  gave them (for swift all below 0.2 by the trust rule).
* Deterministic: the same input gives the same bytes.

Estimators (:data:`ESTIMATORS`; lookahead: :func:`latency_samples`)
------------------------------------------------------------------
``"swift"`` (the default) -- SwiftF0 0.3, a 14k-parameter CNN on a spectrogram, on ONNX Runtime (CPU), from
the model inside the ``swift-f0`` wheel. Input 16 kHz, one frame per 256 samples, band 46.875-2093.75 Hz
(``fmin_hz``/``fmax_hz`` outside it raise ConfigError). Its frame ``k`` is centred on 16 kHz sample
``k * 256`` (:data:`SWIFT_FRAME_OFFSET` = 0), measured: fitting its track to 6 Hz / 50-100 cent vibratos
at 110-880 Hz puts the best time offset at 0 +- 3 samples, and frame 30's receptive field spans samples
-2749..+2775 around ``30 * 256``. The track is brought to the grid by linear interpolation in log2(f0)
(confidence: linearly) at the exact frame times ``k * 256 / 16000`` s.
Confidence: the model's (calibrated by its authors so that >= 0.5 means voiced). Trust rule for f0:
confidence >= :data:`SWIFT_TRUST` (0.2), below the voicing threshold because the model is under-confident
on *pure sines* while its pitch there is right: a steady pure sine gets 0.3-0.45 at 98 Hz, 0.5-0.6 at
220 Hz, ~0.8 at 440 Hz (about 1.0 with harmonics). Trusting only >= 0.5 would drop the raw pitch accuracy
on the pure-sine glides from 0.99 to 0.80 and on pure-sine vibrato from 1.00 to 0.76; white or brown noise
(-60 to -10 dBFS) reaches 0.2 on 0.6 % of frames (at most 1.6 %). The same under-confidence makes
swift's voicing on the project's pure-sine source domain poor (recall 0.35-0.62 at 0.5) and its
confidence rise ~70 ms late after a hard pure-sine onset (on time, +-2 frames of hop 64, with harmonics).
Known miss: the soundfont cello's G#4 and C5 (MIDI 68, 72) are read an octave up on a fifth / half of
their frames (pYIN gets them right).
Cost of the 256-hop interpolation on vibrato (``benchmarks/f0_estimators.py``, 16 kHz, grid hop 64):
interpolating the *true* track from 256-sample frames costs at most 2.3 cents (6 Hz, 50 cents) / 4.5 cents
(6 Hz, 100 cents), 1.2 / 2.3 cents RMS; end to end, swift on the grid vs on its own frames is 10.4 vs
9.9 cents RMS (220 Hz pure sine, 6 Hz, 50 cents), 11.0 vs 9.8 (100 cents), 6.2 vs 6.4 and 2.3 vs 3.2 with
6 harmonics: the model's own error dominates, the interpolation adds about a cent.
Lookahead: a swift frame depends on 2816 samples (176 ms) of future audio; a grid frame between two swift
frames waits for the later one: up to 3072 samples (192 ms) at 16 kHz. swift-f0's ``PitchStream`` emits a
frame once 11 * 256 samples after its centre have arrived and reproduces the batch result, so a live,
causal version is possible; this module's unvoiced *fill* interpolates towards the next trusted frame,
which a live version must replace by holding the last one. The detector (ONNX session) is created once
per process and cached (~0.1 s cold, then ~200x real time on one 2-core CPU).

``"pyin"`` -- ``librosa.pyin`` (probabilistic YIN + Viterbi) at 16 kHz with ``hop_length`` = the grid hop
in 16 kHz samples, so its centred frames land exactly on the grid whenever ``hop * 16000 / sample_rate``
is an integer (otherwise it runs on the nearest integer hop and is interpolated to the grid times as
above). ``frame_length`` is the smallest power of two >= 1024 that holds two periods of ``fmin_hz`` (1024
= 64 ms for 50 Hz); ``resolution`` 0.1 semitone, so its pitch is quantised to 10-cent steps (a tempered
note reads 5 cents off with fmin 50 Hz). Confidence: pYIN's voiced probability (then the silence rule);
trust rule for f0: pYIN's Viterbi voicing decision. With this window its voiced probability stays under
0.5 on cello notes below ~MIDI 42 (92 Hz) although the decision and the pitch are right; a 2048 window
fixes that but moves the onset of confidence ~9 frames (hop 64) early. Its 64 ms window smooths
vibrato (15 cents RMS on a 6 Hz, 100 cent vibrato). ~1x real time, 1.6 s cold (librosa's first call).
The Viterbi pass needs the whole clip: pYIN cannot run live (:func:`latency_samples` is None).

Audio at another sample rate is resampled to 16 kHz (soxr HQ via :func:`timbrelab.audio.resample`, linear
phase, so no time shift) before either estimator sees it; the grid stays in the caller's samples.
"""

from __future__ import annotations

import functools
import os
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from timbrelab.dsp.framing import n_frames
from timbrelab.errors import AudioError, ConfigError

VOICED_THRESHOLD = 0.5   # confidence >= this: voiced
SWIFT_TRUST = 0.2        # swift frames at or above this confidence keep their own pitch (see the module doc)
INTERNAL_RATE = 16000    # both estimators run at 16 kHz
SWIFT_HOP = 256
SWIFT_FRAME_OFFSET = 0   # swift frame k is centred on 16 kHz sample k * 256 + this (measured, see above)
SWIFT_LOOKAHEAD = 11 * SWIFT_HOP   # PitchStream: a frame is final once 11 hops after its centre exist
PYIN_RESOLUTION = 0.1    # semitones between pYIN's pitch states
SILENCE_PEAK = 1e-3      # -60 dBFS: audio peaking below this is silence for every estimator (swift-f0's rule)


@dataclass(frozen=True)
class RawTrack:
    """An estimator's own frames: positions in 16 kHz samples, pitch (Hz), confidence, trusted-pitch mask."""

    positions: np.ndarray   # (k,) float64, frame centres in 16 kHz samples
    f0_hz: np.ndarray       # (k,) float64, may hold NaN/garbage where not trusted
    confidence: np.ndarray  # (k,) float64 in [0, 1]
    trusted: np.ndarray     # (k,) bool


@dataclass(frozen=True)
class Estimator:
    name: str
    run: Callable[[np.ndarray, float, float, float], RawTrack]  # (audio16k, grid hop in 16k samples, fmin, fmax)
    band: tuple[float, float]            # pitch range the estimator supports
    window_samples: Callable[[float], int]   # analysis window (16 kHz samples) for a given fmin
    lookahead_samples: int | None        # future 16 kHz samples a grid frame needs; None: the whole clip
    note: str


# --------------------------------------------------------------------------------------------- swift

_SWIFT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _swift_detector():
    """One SwiftF0 detector (ONNX session) per process; ~0.1 s to import and build, reused afterwards."""
    try:
        import swift_f0
    except ImportError as exc:  # pragma: no cover - swift-f0 is a dependency of this module
        raise ConfigError("estimator 'swift' needs the swift-f0 package (pip install swift-f0)") from exc
    # One ONNX thread: measured twice as fast as onnxruntime's default thread pool on 2 cores (the
    # model is small; its threads mostly synchronise). TIMBRELAB_ONNX_THREADS overrides.
    threads = int(os.environ.get("TIMBRELAB_ONNX_THREADS", "1"))
    return swift_f0.SwiftF0(threads=threads)


def swift_detector():
    """The process's one SwiftF0 detector (built on first use, under a lock: threads may ask at once)."""
    with _SWIFT_LOCK:
        return _swift_detector()


def _run_swift(audio16k: np.ndarray, grid_hop16k: float, fmin: float, fmax: float) -> RawTrack:
    del grid_hop16k  # swift has a fixed hop
    detector = swift_detector()
    result = detector.detect(audio16k, INTERNAL_RATE, fmin=fmin, fmax=fmax)
    k = np.arange(result.pitch_hz.shape[0], dtype=np.float64)
    conf = np.clip(np.nan_to_num(result.confidence, nan=0.0), 0.0, 1.0)
    f0 = result.pitch_hz
    trusted = (conf >= SWIFT_TRUST) & np.isfinite(f0) & (f0 > 0)
    return RawTrack(k * SWIFT_HOP + SWIFT_FRAME_OFFSET, f0, conf, trusted)


# ---------------------------------------------------------------------------------------------- pyin

def _pyin_frame_length(fmin: float) -> int:
    """Smallest power of two >= 1024 that holds two periods of fmin (librosa warns below two)."""
    need = 2 * (math.ceil(INTERNAL_RATE / fmin) + 2)
    return max(1024, 1 << (need - 1).bit_length())


def _run_pyin(audio16k: np.ndarray, grid_hop16k: float, fmin: float, fmax: float) -> RawTrack:
    import librosa

    hop = max(1, round(grid_hop16k))
    frame_length = _pyin_frame_length(fmin)
    f0, voiced_flag, voiced_prob = librosa.pyin(
        np.asarray(audio16k, dtype=np.float32), fmin=fmin, fmax=fmax, sr=INTERNAL_RATE,
        frame_length=frame_length, hop_length=hop, center=True, fill_na=None, resolution=PYIN_RESOLUTION)
    conf = np.clip(np.nan_to_num(np.asarray(voiced_prob, dtype=np.float64), nan=0.0), 0.0, 1.0)
    f0 = np.asarray(f0, dtype=np.float64)
    trusted = np.asarray(voiced_flag, dtype=bool) & np.isfinite(f0) & (f0 > 0)
    positions = np.arange(f0.shape[0], dtype=np.float64) * hop
    conf[_silent(audio16k, positions)] = 0.0
    return RawTrack(positions, f0, conf, trusted)


def _silent(audio16k: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(k,) bool: frames whose 256 samples around the centre peak below SILENCE_PEAK (swift-f0's own rule)."""
    from scipy.ndimage import maximum_filter1d

    peak = maximum_filter1d(np.abs(np.asarray(audio16k, dtype=np.float32)), size=SWIFT_HOP, mode="constant")
    index = np.clip(np.round(positions).astype(np.int64), 0, peak.shape[0] - 1)
    return peak[index] < SILENCE_PEAK


# ------------------------------------------------------------------------------------------ registry

_SWIFT_BAND = (46.875, 2093.75)  # swift_f0.FMIN / FMAX (checked against the package in the tests)

ESTIMATORS: dict[str, Estimator] = {
    "swift": Estimator(
        name="swift", run=_run_swift, band=_SWIFT_BAND,
        window_samples=lambda fmin: 2 * 2816,  # receptive field: 2048-sample STFT window + 7 frames each side
        lookahead_samples=SWIFT_LOOKAHEAD + SWIFT_HOP,
        note="SwiftF0 CNN on ONNX Runtime, 256-sample hop at 16 kHz interpolated to the grid; streamable "
             "(swift_f0.PitchStream, 176 ms lookahead + up to one hop for the grid interpolation)"),
    "pyin": Estimator(
        name="pyin", run=_run_pyin, band=(1.0, 0.45 * INTERNAL_RATE),
        window_samples=_pyin_frame_length,
        lookahead_samples=None,
        note="librosa.pyin at 16 kHz on the grid hop; Viterbi over the whole clip, not streamable"),
}


def _estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"f0 estimator {name!r}: unknown; choose one of "
                          f"{', '.join(repr(k) for k in ESTIMATORS)}") from None


def latency_samples(estimator: str, sample_rate: int = INTERNAL_RATE) -> int | None:
    """Future audio (in samples at ``sample_rate``) one grid frame needs beyond its centre; None = the whole clip.

    swift: 3072 samples at 16 kHz (192 ms): 176 ms for the model, plus up to one 256-sample hop because a
    grid frame between two swift frames needs the later one (a resampling stream adds its own delay).
    pyin: None (its Viterbi decoding looks at the whole clip; a single frame's window reaches half its
    ``frame_length``, 512 samples for fmin 50 Hz, but the decoded path is only final at the end).
    """
    spec = _estimator(estimator)
    if spec.lookahead_samples is None:
        return None
    return math.ceil(spec.lookahead_samples * int(sample_rate) / INTERNAL_RATE)


# --------------------------------------------------------------------------------------- the interface

def _check_args(audio: np.ndarray, sample_rate: int, hop: int, fmin_hz: float, fmax_hz: float,
                spec: Estimator) -> np.ndarray:
    for key, value in (("sample_rate", sample_rate), ("hop", hop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ConfigError(f"{key} ({value!r}) must be a positive integer")
    if not (math.isfinite(fmin_hz) and math.isfinite(fmax_hz) and 0 < fmin_hz < fmax_hz):
        raise ConfigError(f"fmin_hz/fmax_hz ({fmin_hz}/{fmax_hz}): need 0 < fmin_hz < fmax_hz, both finite")
    lo, hi = spec.band
    if fmin_hz < lo or fmax_hz > hi:
        raise ConfigError(f"fmin_hz/fmax_hz ({fmin_hz}/{fmax_hz}): estimator {spec.name!r} covers "
                          f"{lo}-{hi} Hz only")
    if fmax_hz >= 0.5 * sample_rate:
        raise ConfigError(f"fmax_hz ({fmax_hz}) must be below the Nyquist frequency of {sample_rate} Hz audio")
    array = np.asarray(audio)
    if array.ndim != 1:
        raise AudioError(f"f0 estimation needs mono audio of shape (n,), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise AudioError(f"f0 estimation needs float audio in [-1, 1], got dtype {array.dtype} "
                         "(convert integer PCM with timbrelab.audio.load_audio or divide by its full scale)")
    array = array.astype(np.float32, copy=False)
    shortest = max(1, math.ceil(2 * sample_rate / fmin_hz))
    if array.shape[0] < shortest:
        raise AudioError(f"audio has {array.shape[0]} samples ({1000 * array.shape[0] / sample_rate:.1f} ms at "
                         f"{sample_rate} Hz); f0 estimation needs at least {shortest} "
                         f"({1000 * shortest / sample_rate:.1f} ms, two periods of fmin_hz={fmin_hz:g})")
    if not np.all(np.isfinite(array)):
        raise AudioError("audio holds NaN or infinite samples; f0 estimation needs finite audio")
    return array


def _fill_and_grid(raw: RawTrack, grid_positions: np.ndarray, fmin: float, fmax: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Fill untrusted frames in log2(f0) from trusted neighbours, then interpolate to the grid positions."""
    log_lo, log_hi = math.log2(fmin), math.log2(fmax)
    f0 = np.asarray(raw.f0_hz, dtype=np.float64)
    trusted = np.asarray(raw.trusted, dtype=bool)
    if trusted.any():
        log_f0 = np.clip(np.log2(f0[trusted]), log_lo, log_hi)
        filled = np.interp(raw.positions, raw.positions[trusted], log_f0)
    else:
        usable = np.isfinite(f0) & (f0 >= fmin) & (f0 <= fmax)
        constant = math.log2(float(np.median(f0[usable]))) if usable.any() else log_lo
        filled = np.full(raw.positions.shape, constant)
    log_grid = np.interp(grid_positions, raw.positions, filled)
    conf_grid = np.interp(grid_positions, raw.positions, raw.confidence)
    f0_grid = np.clip(np.exp2(log_grid), fmin, fmax)
    return f0_grid.astype(np.float32), np.clip(conf_grid, 0.0, 1.0).astype(np.float32)


def estimate_f0(audio: np.ndarray, sample_rate: int, hop: int, *, estimator: str = "swift",
                fmin_hz: float = 50.0, fmax_hz: float = 2000.0) -> tuple[np.ndarray, np.ndarray]:
    """(n,) audio -> ``(f0_hz, confidence)``, float32 ``(1 + n // hop,)`` each, frame i at sample ``i * hop``.

    See the module docstring for the contract (voiced = confidence >= 0.5; f0 always positive, finite, in
    the band, filled in log-frequency where unvoiced) and for each estimator. Raises ConfigError for an
    unknown estimator or impossible settings, AudioError for empty, too short (< two periods of fmin),
    non-mono or non-finite audio.
    """
    spec = _estimator(estimator)
    fmin_hz, fmax_hz = float(fmin_hz), float(fmax_hz)
    array = _check_args(audio, sample_rate, hop, fmin_hz, fmax_hz, spec)
    n = array.shape[0]
    sample_rate, hop = int(sample_rate), int(hop)
    if sample_rate != INTERNAL_RATE:
        from timbrelab.audio import resample

        array = resample(array, sample_rate, INTERNAL_RATE)
    grid_hop16k = hop * INTERNAL_RATE / sample_rate
    raw = spec.run(array, grid_hop16k, fmin_hz, fmax_hz)
    # Grid frame i sits at i * hop input samples = i * hop * 16000 / sample_rate samples at 16 kHz
    # (computed from integers, so an exact multiple stays exact and pYIN's frames coincide with the grid).
    grid = np.arange(n_frames(n, hop), dtype=np.float64) * (hop * INTERNAL_RATE) / sample_rate
    return _fill_and_grid(raw, grid, fmin_hz, fmax_hz)
