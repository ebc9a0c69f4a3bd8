"""Streaming DDSP (timbrelab.models.ddsp_stream) and live features (timbrelab.inference.streaming), with numbers.

Stated tolerance: block by block, the stream equals the offline DDSP (same weights, controls and noise) delayed by
one hop to ``MAX_ABS_ERROR`` = 1e-5 max abs error over the whole signal, for signals peaking at 1-2 (below -100 dB
re the peak: float32 rounding of the GRU, the FFT sizes and the phase wrap). Measured: 2.4e-7 without reverb (peak
1.0), 4.8e-7 to 5.4e-7 with reverb (peak 2.0), for blocks of 1, 3, 8 and 64 frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from timbrelab.dsp.loudness import a_weighted_loudness
from timbrelab.dsp.pitch import SWIFT_HOP, SWIFT_TRUST, _run_swift, estimate_f0, latency_samples
from timbrelab.errors import AudioError, ConfigError
from timbrelab.models.ddsp import DDSP, PRESETS
from timbrelab.models.ddsp_stream import StreamingDDSP
from timbrelab.inference.streaming import (
    LiveFeatures,
    check_block_size,
    feature_latency,
    stream_audio,
    stream_controls,
    total_latency,
)

SR, HOP = 16000, 64
STATS = {"loudness_db": {"mean": -33.0, "std": 11.9}}
MAX_ABS_ERROR = 1e-5
LEAD = 256                    # filtered_noise's pre-roll at hop 64 (window 257)


def loud_model(reverb_seconds: float = 0.0, z_dim: int = 0, seed: int = 0) -> DDSP:
    """A tiny DDSP whose output is loud (the quiet init would make any absolute tolerance meaningless)."""
    torch.manual_seed(seed)
    model = DDSP(PRESETS["tiny"].replace(reverb_seconds=reverb_seconds, z_dim=z_dim), STATS).eval()
    with torch.no_grad():
        model.decoder.head.bias[0] += 4.0                      # total harmonic amplitude ~0.5
        model.decoder.head.bias[1 + model.cfg.n_harmonics:] += 3.0
        if model.reverb is not None:
            model.reverb.ir.mul_(1.5)
    return model


def controls(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f0 = 110.0 * 2.0 ** (3.0 * torch.rand(1, frames, generator=g))   # jumps 110-880 Hz: the worst case
    f0[:, frames // 2:] = torch.linspace(3000.0, 7900.0, frames - frames // 2)  # harmonics cross Nyquist
    loudness = -50.0 + 40.0 * torch.rand(1, frames, generator=g)
    return f0, loudness


def offline_and_noise(model: DDSP, f0, loudness, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The offline render (crop framing, n = N * hop) and the very noise it drew (filtered_noise's pre-roll first)."""
    n = f0.shape[1] * HOP
    with torch.no_grad():
        audio = model(f0, loudness, n, generator=torch.Generator().manual_seed(seed))
    noise = 2.0 * torch.rand(1, n + LEAD, generator=torch.Generator().manual_seed(seed)) - 1.0
    return audio, noise


def stream_error(stream: torch.Tensor, offline: torch.Tensor) -> float:
    """Max abs error of the stream against offline after the one-hop latency (the last offline hop is the held
    frame the next block would render)."""
    frames = offline.shape[1] // HOP
    assert stream.shape == offline.shape
    assert torch.all(stream[:, :HOP] == 0)                     # nothing precedes frame 0
    return float((stream[:, HOP:] - offline[:, :(frames - 1) * HOP]).abs().max())


# ----------------------------------------------------------------------------------- stream = offline

@pytest.mark.parametrize("reverb_seconds", [0.0, 0.05])
@pytest.mark.parametrize("block_frames", [1, 3, 8, 64])
def test_stream_equals_offline(reverb_seconds, block_frames):
    model = loud_model(reverb_seconds, z_dim=4 if reverb_seconds else 0)
    f0, loudness = controls(100)
    offline, noise = offline_and_noise(model, f0, loudness)
    assert offline.abs().max() > 0.5                           # a loud signal: the tolerance means something
    stream = stream_controls(StreamingDDSP(model), f0, loudness, block_frames, noise=noise)
    assert stream_error(stream, offline) < MAX_ABS_ERROR


def test_scripted_stream_equals_eager_and_offline_with_ragged_blocks():
    model = loud_model(0.05)
    f0, loudness = controls(90, seed=1)
    offline, noise = offline_and_noise(model, f0, loudness)
    scripted = torch.jit.script(StreamingDDSP(model))
    eager = StreamingDDSP(model)
    outs, used, start = {"eager": [], "script": []}, 0, 0
    for size in [1, 5, 2, 17, 1, 64]:                          # the block may change size from call to call
        sl = slice(start, start + size)
        length = eager.noise_length(size)
        assert scripted.noise_length(size) == length
        outs["eager"].append(eager.forward_with_noise(f0[:, sl], loudness[:, sl], noise[:, used:used + length]))
        outs["script"].append(scripted.forward_with_noise(f0[:, sl], loudness[:, sl], noise[:, used:used + length]))
        used, start = used + length, start + size
    a, b = torch.cat(outs["eager"], 1), torch.cat(outs["script"], 1)
    assert float((a - b).abs().max()) < 1e-6
    assert stream_error(b, offline) < MAX_ABS_ERROR


def test_reset_starts_a_new_stream_and_forward_draws_noise():
    model = loud_model(0.05)
    f0, loudness = controls(40)
    stream = StreamingDDSP(model)
    torch.manual_seed(7)
    first = stream_controls(stream, f0, loudness, 4)
    torch.manual_seed(7)
    again = stream_controls(stream, f0, loudness, 4)           # resets by default
    assert torch.equal(first, again) and torch.isfinite(first).all()
    torch.manual_seed(8)
    other = stream_controls(stream, f0, loudness, 4)
    assert float((first - other).abs().max()) > 1e-3            # the noise is drawn, not fixed


def test_bad_blocks_are_clear_errors():
    stream = StreamingDDSP(loud_model())
    with pytest.raises(ValueError, match="at least one frame"):
        stream(torch.zeros(1, 0), torch.zeros(1, 0))
    with pytest.raises(ValueError, match="one shape"):
        stream(torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"noise must be \(B, 320\)"):
        stream.forward_with_noise(torch.full((1, 1), 220.0), torch.full((1, 1), -30.0), torch.zeros(1, 64))
    stream(torch.full((1, 2), 220.0), torch.full((1, 2), -30.0))
    with pytest.raises(ValueError, match="batch size changed"):
        stream(torch.full((2, 2), 220.0), torch.full((2, 2), -30.0))
    scripted = torch.jit.script(StreamingDDSP(loud_model()))
    with pytest.raises(Exception, match="at least one frame"):
        scripted(torch.zeros(1, 0), torch.zeros(1, 0))
    with pytest.raises(ConfigError, match="shorter than one hop"):
        check_block_size(32, HOP)
    with pytest.raises(ConfigError, match="not a multiple of the hop.*try 128"):
        check_block_size(130, HOP)
    with pytest.raises(ConfigError, match="positive"):
        check_block_size(0, HOP)
    assert check_block_size(512, HOP) == 512


# --------------------------------------------------------------------------------- constant cost

class _OpTrace(TorchDispatchMode):
    """Every aten op with its output shapes: the work of one block, exactly."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = tuple(tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out])
                       if isinstance(t, torch.Tensor))
        self.ops.append((str(func), shapes))
        return out


def _block_cost(stream: StreamingDDSP, f0, loudness) -> tuple[int, list]:
    flops, trace = FlopCounterMode(display=False), _OpTrace()
    with torch.inference_mode(), flops, trace:
        stream(f0, loudness)
    return flops.get_total_flops(), trace.ops


def test_cost_per_block_is_constant_over_a_long_stream():
    stream = StreamingDDSP(loud_model(0.05))
    f0, loudness = torch.full((1, 2), 330.0), torch.full((1, 2), -25.0)
    with torch.inference_mode():
        for _ in range(5):
            stream(f0, loudness)
    sizes = stream.state_sizes()
    flops_5, ops_5 = _block_cost(stream, f0, loudness)
    with torch.inference_mode():
        for _ in range(1000 - 6):                              # 1000 blocks = 8 s of audio
            stream(f0, loudness)
    flops_1000, ops_1000 = _block_cost(stream, f0, loudness)
    assert flops_5 > 0 and flops_5 == flops_1000
    assert ops_5 == ops_1000                                   # the same ops on the same shapes
    assert stream.state_sizes() == sizes
    assert sizes[-1] == [1, 12, HOP + 1]                       # reverb delay line: 800 taps / 64 - 1 partitions


# --------------------------------------------------------------------------------- live features

def _tone_with_gap(seconds: float = 1.5) -> np.ndarray:
    """A harmonic glide 220 -> 440 Hz with 200 ms of silence inside (untrusted frames to fill) and a ragged end."""
    n = int(seconds * SR) + 37
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(220.0 * 2.0 ** (t / seconds)) / SR
    y = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6)).astype(np.float32)
    y[int(0.6 * SR):int(0.8 * SR)] = 0.0
    return y


def _stream_features(audio: np.ndarray, block: int) -> tuple[np.ndarray, ...]:
    live = LiveFeatures(SR, HOP)
    parts = [live.push(audio[s:s + block]) for s in range(0, audio.shape[0], block)] + [live.flush()]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


@pytest.mark.parametrize("block", [64, 200, 1024])
def test_live_features_equal_offline_on_final_frames(block):
    audio = _tone_with_gap()
    f0_off, conf_off = estimate_f0(audio, SR, HOP)
    loud_off = a_weighted_loudness(audio, SR, HOP)
    f0, loudness, conf = _stream_features(audio, block)
    assert f0.shape == f0_off.shape == loudness.shape
    assert np.abs(loudness - loud_off).max() < 1e-4            # dB; measured 0 (the same computation)
    assert np.abs(conf - conf_off).max() < 1e-6                # measured 0
    # f0: equal wherever the two swift frames around a grid frame are trusted; elsewhere live holds the last
    # trusted f0 where offline interpolates towards the next one.
    raw = _run_swift(audio, HOP, 50.0, 2000.0)
    k = np.arange(f0.shape[0]) * HOP // SWIFT_HOP
    near = np.minimum(k + 1, raw.trusted.shape[0] - 1)
    both = raw.trusted[np.minimum(k, raw.trusted.shape[0] - 1)] & raw.trusted[near] \
        & (raw.confidence[near] >= SWIFT_TRUST)
    cents = np.abs(1200 * np.log2(f0 / f0_off))
    assert both.sum() > 0.7 * f0.shape[0]
    assert cents[both].max() < 1e-3
    assert cents[~both].max() > 1.0                            # the hold-vs-interpolate fill does differ


def test_live_features_emit_frames_at_a_constant_latency():
    assert latency_samples("swift", SR) == 3072
    assert feature_latency(HOP) == 3072 and total_latency(HOP) == 3072 + HOP   # 196 ms at 16 kHz
    live, audio = LiveFeatures(SR, HOP), _tone_with_gap(1.0)
    counts = [live.push(audio[s:s + 256])[0].shape[0] for s in range(0, 16 * 256, 256)]
    # Frame i leaves once i * hop + 3072 samples are in: none before 3072, then 4 frames per 256 samples.
    assert counts[:11] == [0] * 11 and counts[11] == 1 and counts[12:] == [4] * 4
    with pytest.raises(ConfigError, match="16000 Hz"):
        LiveFeatures(44100, HOP)


def test_stream_audio_runs_a_clip_causally():
    model = loud_model(0.05)
    stream = torch.jit.script(StreamingDDSP(model))
    audio = _tone_with_gap(1.0)
    torch.manual_seed(0)
    out = stream_audio(stream, audio, 256, LiveFeatures(SR, HOP))
    assert out.shape == (HOP * (1 + audio.shape[0] // HOP),) and np.isfinite(out).all() and np.abs(out).max() > 0.1
    with pytest.raises(ConfigError, match="not a multiple"):
        stream_audio(stream, audio, 100, LiveFeatures(SR, HOP))
    with pytest.raises(AudioError, match="shorter than one block"):
        stream_audio(stream, audio[:200], 256, LiveFeatures(SR, HOP))
