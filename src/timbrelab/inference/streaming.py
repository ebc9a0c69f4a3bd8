"""Live input for a streaming DDSP: causal (f0, loudness) frames from audio blocks, and whole clips block by block.

:class:`LiveFeatures` turns audio blocks into the model's frames as soon as they are final:

* f0 from swift-f0's ``PitchStream`` (causal; it reproduces the batch result), brought to the grid as
  :func:`timbrelab.dsp.pitch.estimate_f0` does (log2-linear between the 256-sample swift frames). The fill is
  causal: a frame swift does not trust holds the **last trusted f0** (offline interpolates towards the next
  trusted frame, which needs look-ahead); before the first trusted frame it takes swift's own guess, clipped
  to the band (offline holds the first trusted value backwards). Where the two swift frames around a grid
  frame are trusted, live and offline are equal; confidence is equal on every frame.
* loudness: the centred A-weighted frames of :func:`timbrelab.dsp.loudness.a_weighted_loudness`, a frame
  computed once its whole window (``n_fft // 2`` samples past its centre) has arrived: equal on every frame.

A frame ``i`` is emitted when the input holds ``i * hop + feature_latency`` samples, ``feature_latency`` being
the estimator's lookahead (:func:`~timbrelab.dsp.pitch.latency_samples`: 3072 samples, 192 ms for swift at
16 kHz) or the loudness half-window (1024), whichever is longer, rounded up to whole hops: every block of
``k * hop`` samples then yields exactly ``k`` frames once the stream has filled. The synth adds one hop
(:class:`~timbrelab.models.ddsp_stream.StreamingDDSP`), so audio at input time ``t`` leaves the model
``feature_latency + hop`` samples later (3136 samples, 196 ms at 16 kHz, hop 64), plus the host's own block
buffering and the compute time of a block. pYIN cannot run live (its Viterbi pass needs the whole clip).

:func:`stream_controls` / :func:`stream_audio` run a whole clip through the streaming model block by block
(tests, benchmarks, and an offline-equivalent alternative to transfer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.fft
import scipy.signal
import torch

from timbrelab.dsp import pitch
from timbrelab.dsp.framing import n_frames
from timbrelab.dsp.loudness import DEFAULT_FLOOR_DB, DEFAULT_N_FFT, bin_power_weights
from timbrelab.errors import AudioError, ConfigError

LIVE_ESTIMATOR = "swift"
SWIFT_KEEP = 4   # swift frames kept for the grid interpolation (the grid only looks one swift frame back)


def check_block_size(block_size: int, hop: int) -> int:
    """A streaming block in samples: a positive multiple of the hop (ConfigError otherwise)."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size <= 0:
        raise ConfigError(f"block size ({block_size!r}) must be a positive number of samples, a multiple of the "
                          f"hop ({hop})")
    if block_size % hop:
        shorter = "shorter than one hop" if block_size < hop else "not a multiple of the hop"
        raise ConfigError(f"block size {block_size} is {shorter} ({hop} samples); try "
                          f"{max(1, round(block_size / hop)) * hop}")
    return int(block_size)


def feature_latency(hop: int, sample_rate: int = pitch.INTERNAL_RATE, n_fft: int = DEFAULT_N_FFT) -> int:
    """Samples past a frame's centre :class:`LiveFeatures` waits for: swift's lookahead or the loudness
    half-window, whichever is longer, rounded up to whole hops."""
    lookahead = max(int(pitch.latency_samples(LIVE_ESTIMATOR, sample_rate)), int(n_fft) // 2)
    return -(-lookahead // int(hop)) * int(hop)


def total_latency(hop: int, sample_rate: int = pitch.INTERNAL_RATE, n_fft: int = DEFAULT_N_FFT) -> int:
    """Input-to-output latency of live features + the streaming synth (one hop), in samples (no host buffering)."""
    return feature_latency(hop, sample_rate, n_fft) + int(hop)


class LiveFeatures:
    """Causal (f0, loudness, confidence) frames on the model grid from audio pushed block by block.

    ``push(block (n,))`` returns the frames that became final, ``flush()`` the rest of the clip's
    ``1 + n // hop`` frames (the end zero-padded, as offline). Memory and work per block are constant.
    Only 16 kHz input (swift's own rate; a resampling stream would add its own delay).
    """

    def __init__(self, sample_rate: int = 16000, hop: int = 64, *, fmin_hz: float = 50.0, fmax_hz: float = 2000.0,
                 n_fft: int = DEFAULT_N_FFT, floor_db: float = DEFAULT_FLOOR_DB):
        if sample_rate != pitch.INTERNAL_RATE:
            raise ConfigError(f"live features run at {pitch.INTERNAL_RATE} Hz (swift-f0's rate), got "
                              f"{sample_rate} Hz; resample the input first")
        lo, hi = pitch.ESTIMATORS[LIVE_ESTIMATOR].band
        if not (lo <= fmin_hz < fmax_hz <= hi):
            raise ConfigError(f"fmin_hz/fmax_hz ({fmin_hz}/{fmax_hz}): live f0 (swift) covers {lo}-{hi} Hz")
        self.sample_rate, self.hop, self.n_fft = int(sample_rate), int(hop), int(n_fft)
        self.fmin_hz, self.fmax_hz, self.floor_db = float(fmin_hz), float(fmax_hz), float(floor_db)
        self.latency = feature_latency(self.hop, self.sample_rate, self.n_fft)
        self._window = scipy.signal.get_window("hann", self.n_fft, fftbins=True).astype(np.float32)
        self._weights = bin_power_weights(self.n_fft, self.sample_rate, self._window)
        self._pitch = pitch.swift_detector().stream(fmin=self.fmin_hz, fmax=self.fmax_hz)
        self._received = 0        # samples pushed so far
        self._emitted = 0         # grid frames returned so far
        self._audio = np.zeros(self.n_fft // 2, dtype=np.float32)   # recent samples, zero padding before 0
        self._audio_start = -(self.n_fft // 2)                       # stream index of self._audio[0]
        self._swift_first = 0                                       # swift frame index of the kept frames
        self._swift_log_f0 = np.zeros(0)
        self._swift_conf = np.zeros(0)
        self._last_trusted: float | None = None

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any] | None, sample_rate: int, hop: int) -> LiveFeatures:
        """The settings a model was trained with (``stats["features_config"]``), defaults where absent."""
        features = (stats or {}).get("features_config") or {}
        p, ld = features.get("pitch") or {}, features.get("loudness") or {}
        return cls(sample_rate, hop, fmin_hz=float(p.get("fmin_hz", 50.0)), fmax_hz=float(p.get("fmax_hz", 2000.0)),
                   n_fft=int(ld.get("n_fft", DEFAULT_N_FFT)), floor_db=float(ld.get("floor_db", DEFAULT_FLOOR_DB)))

    # ------------------------------------------------------------------------------------ input

    def push(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Audio (n,) float in [-1, 1] -> newly final frames ``(f0_hz, loudness_db, confidence)``, float32 (k,)."""
        block = self._check(block)
        self._take_pitch(self._pitch.push(block, self.sample_rate))
        self._audio = np.concatenate([self._audio, block])
        self._received += block.shape[0]
        ready = max(0, (self._received - self.latency) // self.hop + 1)
        return self._emit(ready)

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """End of the clip: the remaining frames up to ``n // hop`` (the audio after the end reads as zeros)."""
        if self._received == 0:
            raise AudioError("live features: no audio was pushed")
        self._take_pitch(self._pitch.flush())
        self._audio = np.concatenate([self._audio, np.zeros(self.n_fft // 2, dtype=np.float32)])
        return self._emit(n_frames(self._received, self.hop))

    def _check(self, block: np.ndarray) -> np.ndarray:
        array = np.asarray(block)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
            raise AudioError(f"live features take mono float blocks (n,), got {array.dtype} {array.shape}")
        array = array.astype(np.float32, copy=False)
        if not np.all(np.isfinite(array)):
            raise AudioError("live features: the block holds NaN or infinite samples")
        return array

    # ------------------------------------------------------------------------------------ pitch

    def _take_pitch(self, result) -> None:
        """Append swift's newly final frames, filled causally in log2(f0), keeping only the last few."""
        log_lo, log_hi = math.log2(self.fmin_hz), math.log2(self.fmax_hz)
        conf = np.clip(np.nan_to_num(result.confidence, nan=0.0), 0.0, 1.0)
        filled = np.empty(conf.shape[0])
        for j, (f0, c) in enumerate(zip(result.pitch_hz, conf)):   # a few frames per block
            usable = bool(np.isfinite(f0) and f0 > 0)
            if c >= pitch.SWIFT_TRUST and usable:
                self._last_trusted = min(max(math.log2(f0), log_lo), log_hi)
            if self._last_trusted is not None:
                filled[j] = self._last_trusted
            else:
                filled[j] = min(max(math.log2(f0), log_lo), log_hi) if usable else log_lo
        self._swift_log_f0 = np.concatenate([self._swift_log_f0, filled])
        self._swift_conf = np.concatenate([self._swift_conf, conf])

    def _pitch_frames(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid frames [first, last) -> (f0, confidence) by estimate_f0's interpolation on the kept swift frames."""
        positions = np.arange(first, last, dtype=np.float64) * self.hop        # 16 kHz samples
        swift_pos = (self._swift_first + np.arange(self._swift_log_f0.shape[0])) * pitch.SWIFT_HOP \
            + pitch.SWIFT_FRAME_OFFSET
        log_f0 = np.interp(positions, swift_pos, self._swift_log_f0)
        conf = np.interp(positions, swift_pos, self._swift_conf)
        f0 = np.clip(np.exp2(log_f0), self.fmin_hz, self.fmax_hz)
        # Keep the swift frame at or before the next grid frame (and later ones): constant memory.
        keep_from = max(0, min(int(last * self.hop // pitch.SWIFT_HOP), self._swift_first + len(swift_pos) - 1)
                        - self._swift_first)
        self._swift_first += keep_from
        self._swift_log_f0, self._swift_conf = self._swift_log_f0[keep_from:], self._swift_conf[keep_from:]
        return f0.astype(np.float32), np.clip(conf, 0.0, 1.0).astype(np.float32)

    # --------------------------------------------------------------------------------- loudness

    def _loudness_frames(self, first: int, last: int) -> np.ndarray:
        """Grid frames [first, last) -> A-weighted loudness dB, exactly a_weighted_loudness's computation."""
        half = self.n_fft // 2
        offset = first * self.hop - half - self._audio_start
        span = self._audio[offset:offset + (last - first - 1) * self.hop + self.n_fft]
        frames = np.lib.stride_tricks.sliding_window_view(span, self.n_fft)[::self.hop]
        spec = scipy.fft.rfft(frames * self._window, axis=-1)
        power = (spec.real ** 2 + spec.imag ** 2) @ self._weights
        floor_power = 10.0 ** (self.floor_db / 10.0)
        drop = last * self.hop - half - self._audio_start                      # the next window starts here
        self._audio, self._audio_start = self._audio[drop:], self._audio_start + drop
        return (10.0 * np.log10(np.maximum(power, floor_power))).astype(np.float32)

    def _emit(self, ready: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        first, self._emitted = self._emitted, max(self._emitted, ready)
        if self._emitted == first:
            empty = np.zeros(0, dtype=np.float32)
            return empty, empty.copy(), empty.copy()
        f0, conf = self._pitch_frames(first, self._emitted)
        return f0, self._loudness_frames(first, self._emitted), conf


# ---------------------------------------------------------------------------------------- whole clips

def stream_controls(model: torch.nn.Module, f0_hz: torch.Tensor, loudness_db: torch.Tensor, block_frames: int, *,
                    noise: torch.Tensor | None = None, reset: bool = True) -> torch.Tensor:
    """Run frames (B, N) through a :class:`~timbrelab.models.ddsp_stream.StreamingDDSP` (eager or TorchScript)
    ``block_frames`` at a time (the last block may be shorter) -> audio (B, N * hop), one hop late.

    ``noise`` (B, N * hop + noise_lead) feeds ``forward_with_noise`` (deterministic); None draws it.
    """
    if isinstance(block_frames, bool) or not isinstance(block_frames, int) or block_frames <= 0:
        raise ConfigError(f"block_frames ({block_frames!r}) must be a positive integer")
    if reset:
        model.reset()
    outputs, used = [], 0
    with torch.inference_mode():
        for start in range(0, f0_hz.shape[1], block_frames):
            f0, ld = f0_hz[:, start:start + block_frames], loudness_db[:, start:start + block_frames]
            if noise is None:
                outputs.append(model(f0, ld))
                continue
            length = model.noise_length(f0.shape[1])
            outputs.append(model.forward_with_noise(f0, ld, noise[:, used:used + length]))
            used += length
    return torch.cat(outputs, dim=1)


def stream_audio(model: torch.nn.Module, audio: np.ndarray, block_size: int, features: LiveFeatures) -> np.ndarray:
    """Mono audio (n,) at the model's rate -> the model's audio (hop * (1 + n // hop),), everything causal:
    blocks of ``block_size`` samples through :class:`LiveFeatures` and the streaming model.

    Output sample ``hop + t`` is the synth at input frame time ``t`` (the model's one hop; the feature latency is
    real time spent waiting, not a shift of this signal). Frames arrive in bunches while the stream fills.
    """
    check_block_size(block_size, features.hop)
    array = features._check(audio)
    if array.shape[0] < block_size:
        raise AudioError(f"the clip ({array.shape[0]} samples) is shorter than one block ({block_size})")
    model.reset()
    outputs = []

    def play(frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        f0, loudness, _ = frames
        if f0.shape[0]:
            with torch.inference_mode():
                outputs.append(model(torch.from_numpy(f0)[None], torch.from_numpy(loudness)[None])[0])

    for start in range(0, array.shape[0], block_size):
        play(features.push(array[start:start + block_size]))
    play(features.flush())
    return torch.cat(outputs).numpy()


# ---------------------------------------------------------------------------------------------- export

EXPORT_METADATA = "timbrelab.json"   # the _extra_files entry of an exported stream


def export_metadata(model_cfg, block_size: int, payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a host needs to drive an exported stream: rates, block, latencies (samples), the model's hash."""
    features = (payload.get("stats") or {}).get("features_config") or {}
    n_fft = int((features.get("loudness") or {}).get("n_fft", DEFAULT_N_FFT))
    return {"sample_rate": int(model_cfg.sample_rate), "hop": int(model_cfg.hop), "block_size": int(block_size),
            "synth_latency_samples": int(model_cfg.hop),
            "feature_latency_samples": feature_latency(model_cfg.hop, model_cfg.sample_rate, n_fft)
            if model_cfg.sample_rate == pitch.INTERNAL_RATE else None,
            "total_latency_samples": total_latency(model_cfg.hop, model_cfg.sample_rate, n_fft)
            if model_cfg.sample_rate == pitch.INTERNAL_RATE else None,
            "f0_estimator": LIVE_ESTIMATOR, "inputs": "f0_hz (B, F), loudness_db (B, F) -> audio (B, F * hop)",
            "model_hash": payload.get("hash")}


def export_torchscript(checkpoint, out, block_size: int) -> dict[str, Any]:
    """model.pt -> TorchScript StreamingDDSP at ``out`` (written atomically), metadata in ``timbrelab.json``.

    Raises TimbrelabError for a bad checkpoint (see :func:`timbrelab.models.registry.load`), ConfigError for a bad
    block size.
    """
    import json
    import warnings

    from timbrelab.fsutil import atomic_path
    from timbrelab.models.ddsp_stream import StreamingDDSP
    from timbrelab.models import registry

    model, payload = registry.load(checkpoint, "ddsp")
    check_block_size(block_size, model.cfg.hop)
    meta = export_metadata(model.cfg, block_size, payload)
    with warnings.catch_warnings():   # torch 2.13 deprecates TorchScript; it is still what a host can load
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        scripted = torch.jit.script(StreamingDDSP(model, block_frames=block_size // model.cfg.hop))
        with atomic_path(out) as tmp:
            torch.jit.save(scripted, str(tmp), _extra_files={EXPORT_METADATA: json.dumps(meta, sort_keys=True)})
    return meta
