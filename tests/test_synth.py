"""Numbers checks for the DDSP core (:mod:`timbrelab.dsp.synth`, :mod:`timbrelab.dsp.spectral`).

Every test measures something: a spectral peak, an energy ratio in dB, a maximum per-sample step, a
maximum deviation from a float64 reference or from an offline computation. Short signals (<= 1 s at 16 kHz
except the phase-precision test) keep the file fast on a 2-core CPU.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from timbrelab.dsp import synth
from timbrelab.dsp.spectral import MultiScaleSpectralLoss, stft_magnitude

SR = 16000
HOP = 64
NYQUIST = SR / 2


def frames_for(n_samples: int, hop: int = HOP) -> int:
    return 1 + n_samples // hop


def sine_osc(freq_hz: float, n_samples: int = SR, amplitude: float = 0.5) -> torch.Tensor:
    """(1, n) a single harmonic from the oscillator."""
    return synth.harmonic_oscillator(torch.full((1, n_samples), float(freq_hz)),
                                     torch.full((1, n_samples, 1), amplitude), SR)


def power_spectrum(x: torch.Tensor, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """(n,) signal -> (freqs, power) of a Hann-windowed float64 rFFT over the whole signal."""
    y = x.detach().double().numpy()
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size))) ** 2
    return np.fft.rfftfreq(y.size, 1.0 / sr), spec


# --------------------------------------------------------------------------------------------- upsampling

@pytest.mark.parametrize("mode", ["linear", "window"])
def test_upsample_constant_stays_constant_and_hits_frame_values(mode):
    n = 1000                                                    # not a multiple of the hop
    const = torch.full((2, frames_for(n), 3), 0.37)
    up = synth.upsample_frames(const, n, HOP, mode)
    assert up.shape == (2, n, 3)
    assert torch.allclose(up, const[:, :1].expand(2, n, 3), atol=1e-7)

    ramp = torch.randn(2, frames_for(n), 3)
    up = synth.upsample_frames(ramp, n, HOP, mode)
    idx = torch.arange(0, n, HOP)
    assert torch.allclose(up[:, idx], ramp[:, :idx.numel()], atol=1e-6)  # frame i is sample i * hop


@pytest.mark.parametrize("mode, bound", [("linear", 1.0), ("window", math.pi / 2)])
def test_upsample_step_has_no_zipper(mode, bound):
    n, step = 20 * HOP, 1.0
    ctrl = torch.zeros(1, frames_for(n), 1)
    ctrl[:, 10:] = step                                         # a step between frames 9 and 10
    up = synth.upsample_frames(ctrl, n, HOP, mode)[0, :, 0]
    increments = torch.diff(up)
    assert float(increments.min()) >= -1e-7                     # monotone: no overshoot or ringing
    assert float(increments.max()) <= bound * step / HOP + 1e-6  # linear: exactly step / hop per sample
    assert float(up[9 * HOP]) == 0.0 and float(up[10 * HOP]) == step
    assert torch.isclose(increments.sum(), torch.tensor(step))


def test_upsample_accepts_crop_frames_and_holds_last():
    n = 10 * HOP + 5
    ctrl = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1)   # F = n // hop (a crop)
    up = synth.upsample_frames(ctrl, n, HOP)
    assert up.shape == (1, n, 1)
    assert torch.all(up[0, 9 * HOP:, 0] == 9.0)
    with pytest.raises(ValueError, match="frames do not fit"):
        synth.upsample_frames(torch.zeros(1, 8, 1), n, HOP)


# --------------------------------------------------------------------------------------------- harmonics

def test_single_harmonic_peaks_at_440_hz():
    freqs, power = power_spectrum(sine_osc(440.0, n_samples=SR)[0])  # 1 Hz bins
    assert abs(freqs[np.argmax(power)] - 440.0) <= freqs[1]

    num_frames = frames_for(SR)
    dist = torch.zeros(1, num_frames, 8)
    dist[..., 0] = 1.0
    audio = synth.harmonic_synth(torch.full((1, num_frames), 440.0), torch.full((1, num_frames, 1), 0.5),
                                 dist, SR, HOP, SR)
    freqs, power = power_spectrum(audio[0])
    assert abs(freqs[np.argmax(power)] - 440.0) <= freqs[1]
    assert float(audio.abs().max()) == pytest.approx(0.5, abs=1e-3)


def test_harmonics_above_nyquist_are_silenced_and_distribution_renormalised():
    f0, num_harmonics, n = 1100.0, 20, SR                         # harmonics 8..20 are above 8 kHz
    num_frames = frames_for(n)
    dist = torch.ones(1, num_frames, num_harmonics)
    norm = synth.normalize_harmonic_distribution(dist, torch.full((1, num_frames), f0), SR)
    assert torch.allclose(norm.sum(-1), torch.ones(1, num_frames), atol=1e-6)
    assert torch.all(norm[..., 7:] == 0) and torch.allclose(norm[..., :7], torch.full((1, num_frames, 7), 1 / 7))

    audio = synth.harmonic_synth(torch.full((1, num_frames), f0), torch.full((1, num_frames, 1), 0.7),
                                 dist, n, HOP, SR)[0]
    freqs, power = power_spectrum(audio)
    on_harmonics = np.zeros(freqs.shape, bool)
    for k in range(1, 8):
        on_harmonics |= np.abs(freqs - k * f0) <= 5.0
    alias_db = 10 * np.log10(power[~on_harmonics].sum() / power.sum())
    assert alias_db < -80.0, alias_db                                # aliases would land at 7200, 6100, ... Hz
    # The renormalised stack carries the whole amplitude: 7 equal partials of 0.1 each, rms^2 = 7 * 0.1^2 / 2.
    assert float(audio.pow(2).mean()) == pytest.approx(7 * 0.1 ** 2 / 2, rel=1e-3)


def test_nyquist_gain_is_a_ramp_to_zero_at_nyquist():
    f = torch.tensor([0.0, NYQUIST - 200.0, NYQUIST - 80.0, NYQUIST - 1e-3, NYQUIST, NYQUIST + 1.0])
    gain = synth.nyquist_gain(f, SR, ramp_hz=160.0)
    assert torch.allclose(gain, torch.tensor([1.0, 1.0, 0.5, 1e-3 / 160.0, 0.0, 0.0]), atol=1e-6)
    assert torch.equal(synth.nyquist_gain(f, SR, ramp_hz=0.0), torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0]))


def test_phase_is_precise_for_long_signals():
    n, f0, k = 30 * SR, 440.0, 16                                  # 30 s; the 16th harmonic at 7040 Hz
    amps = torch.zeros(1, n, k)
    amps[..., -1] = 1.0
    audio = synth.harmonic_oscillator(torch.full((1, n), f0), amps, SR)[0].double().numpy()
    t = np.arange(n, dtype=np.float64)
    reference = np.sin(2 * np.pi * k * f0 * t / SR)
    assert np.max(np.abs(audio - reference)) < 1e-4


def test_phase_carries_across_blocks():
    n, num_harmonics = 4 * SR, 30
    t = torch.arange(n, dtype=torch.float64) / SR
    f0 = (220.0 + 20.0 * torch.sin(2 * math.pi * 5.0 * t)).float()[None]     # vibrato
    amps = torch.rand(1, n, num_harmonics, generator=torch.Generator().manual_seed(1)) / num_harmonics
    whole, final_whole = synth.harmonic_oscillator(f0, amps, SR, return_phase=True)
    half = n // 2 + 37
    first, phase = synth.harmonic_oscillator(f0[:, :half], amps[:, :half], SR, return_phase=True)
    second, final_two = synth.harmonic_oscillator(f0[:, half:], amps[:, half:], SR, initial_phase=phase,
                                                  return_phase=True)
    assert float((torch.cat([first, second], 1) - whole).abs().max()) < 1e-4
    assert float(torch.remainder(final_two - final_whole + math.pi, 2 * math.pi).sub(math.pi).abs().max()) < 1e-3


def test_exp_sigmoid_matches_ddsp():
    x = torch.tensor([-100.0, 0.0, 100.0])
    expected = torch.tensor([1e-7, 2 * 0.5 ** math.log(10) + 1e-7, 2 + 1e-7])
    assert torch.allclose(synth.exp_sigmoid(x), expected, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------- noise

def band_magnitudes(num_frames: int, lo: float, hi: float, bands: int = 65) -> torch.Tensor:
    centres = torch.linspace(0, NYQUIST, bands)
    mags = torch.zeros(1, num_frames, bands)
    mags[..., (centres >= lo) & (centres <= hi)] = 1.0
    return mags


def test_filtered_noise_band_pass_puts_energy_in_band():
    n = SR
    noise = synth.filtered_noise(band_magnitudes(frames_for(n), 2000.0, 4000.0), n, HOP,
                                 generator=torch.Generator().manual_seed(0))[0]
    y = noise.double().numpy()
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    in_band = power[(freqs >= 1750) & (freqs <= 4250)].sum() / power.sum()   # one transition width of margin
    far_db = 10 * np.log10(power[(freqs < 1000) | (freqs > 5000)].sum() / power.sum())
    assert in_band > 0.999, in_band
    assert far_db < -40.0, far_db
    # stationary from sample 0 (no start-up fade): the first 256 samples are as loud as the rest
    assert 0.8 < y[:256].std() / y[256:].std() < 1.25


def test_flat_filter_is_a_pure_delay():
    n = 3000
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(2))
    y = synth.time_varying_filter(x, torch.ones(2, frames_for(n), 65), HOP, window_size=257)
    assert torch.allclose(y[:, 128:], x[:, :-128], atol=1e-5)
    assert float(y[:, :128].abs().max()) < 1e-5


def test_filtered_noise_is_deterministic_and_differentiable():
    n, num_frames = 4000, frames_for(4000)
    mags = torch.rand(2, num_frames, 33, generator=torch.Generator().manual_seed(3), requires_grad=True)
    a = synth.filtered_noise(mags, n, HOP, generator=torch.Generator().manual_seed(7))
    b = synth.filtered_noise(mags, n, HOP, generator=torch.Generator().manual_seed(7))
    c = synth.filtered_noise(mags, n, HOP, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, n) and torch.equal(a, b) and not torch.allclose(a, c)
    a.pow(2).sum().backward()
    assert mags.grad is not None and torch.isfinite(mags.grad).all() and float(mags.grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------------- convolution

def test_fft_convolve_delta_and_delayed_delta():
    x = torch.randn(2, 1000, generator=torch.Generator().manual_seed(4))
    delta = torch.zeros(64)
    delta[0] = 1.0
    assert torch.allclose(synth.fft_convolve(x, delta), x, atol=1e-6)
    delayed = torch.zeros(2, 64)
    delayed[0, 17], delayed[1, 40] = 1.0, 0.5                    # per-example IRs
    y = synth.fft_convolve(x, delayed)
    assert y.shape == x.shape
    assert torch.allclose(y[0, 17:], x[0, :-17], atol=1e-6) and float(y[0, :17].abs().max()) < 1e-6
    assert torch.allclose(y[1, 40:], 0.5 * x[1, :-40], atol=1e-6)


@pytest.mark.parametrize("block_size", [16, 64, 100, 256, 4096])
def test_partitioned_convolution_equals_offline(block_size):
    n, n_ir = 8000, 3001
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, n, generator=gen)
    ir = torch.randn(n_ir, generator=gen) * torch.exp(-torch.arange(n_ir) / 600.0) * 0.1
    offline = synth.fft_convolve(x, ir)
    conv = synth.PartitionedConvolver(ir, block_size)
    padded = torch.nn.functional.pad(x, (0, -n % block_size))
    streamed = torch.cat([conv.process(block) for block in padded.split(block_size, dim=1)], dim=1)[:, :n]
    assert float((streamed - offline).abs().max()) < 1e-5


def test_reverb_trains_and_streams():
    reverb = synth.Reverb(2000, SR, seed=0)
    assert float(reverb.wet_ir().detach()[0]) == 0.0
    ir_db = 20 * torch.log10(reverb.ir.detach().abs().reshape(-1, 100).max(-1).values)
    assert float(ir_db[0] - ir_db[-1]) > 10.0                    # initialised as decaying noise
    x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(6))
    y = reverb(x)
    conv = reverb.streaming(500)
    streamed = torch.cat([conv(block) for block in x.split(500, dim=1)], dim=1)
    assert float((streamed - y.detach()).abs().max()) < 1e-5
    y.pow(2).mean().backward()
    assert float(reverb.ir.grad[1:].abs().sum()) > 0 and float(reverb.ir.grad[0]) == 0.0


# --------------------------------------------------------------------------------------------- spectral loss

def test_stft_magnitude_framing():
    x = torch.randn(2, 1000)
    mag = stft_magnitude(x, 256, overlap=0.75)
    assert mag.shape == (2, 1 + 1000 // 64, 129)


def test_spectral_loss_zero_for_identity_and_monotone_in_detuning():
    loss = MultiScaleSpectralLoss()
    mag_only = MultiScaleSpectralLoss(logmag_weight=0.0)
    reference = sine_osc(440.0)
    assert float(loss(reference, reference)) == 0.0
    totals = [float(loss(sine_osc(f), reference)) for f in (440.0, 441.0, 445.0, 460.0, 490.0)]
    assert all(a < b for a, b in itertools.pairwise(totals)), totals
    # The magnitude term keeps growing over a wide range; the log term alone is not monotone past ~60 Hz
    # (it saturates, and exact-bin tones such as 500 Hz spike it via the 1e-7 floor).
    mags = [float(mag_only(sine_osc(f), reference)) for f in (441, 445, 460, 500, 600, 880)]
    assert all(a < b for a, b in itertools.pairwise(mags)), mags
    terms = loss.terms(sine_osc(445.0), reference)
    assert set(terms) == {f"spectral/{kind}_{n}" for kind in ("mag", "logmag")
                          for n in loss.fft_sizes} | {"spectral/total"}


@pytest.mark.parametrize("eps", [1e-7, 1e-5])
def test_spectral_loss_detuning_over_a_wide_range_and_the_log_floor(eps):
    """Measured with the project's 1e-7 and magenta's 1e-5 log floor: both grow with detuning up to ~20 Hz
    (2 Hz steps), both keep the coarse trend to an octave, and neither removes the spike of a tone aligned with
    the bins of the small FFTs (500 Hz = 2 bins of the 64-point FFT: most bins exactly 0 -> the floor). On a
    5 Hz grid over 440..900 Hz the total drops at 43 (1e-7) and 38 (1e-5) of 95 steps: 1e-5 does not make the
    loss monotone, so the default stays 1e-7."""
    loss = MultiScaleSpectralLoss(eps=eps)
    reference = sine_osc(440.0)
    near = [float(loss(sine_osc(f), reference)) for f in (441.0, 443.0, 445.0, 447.0, 449.0, 451.0, 455.0, 460.0)]
    assert all(a < b for a, b in itertools.pairwise(near)), near
    coarse = [float(loss(sine_osc(f), reference)) for f in (490.0, 600.0, 880.0)]
    assert all(a < b for a, b in itertools.pairwise(coarse)), coarse
    aligned, neighbour = float(loss(sine_osc(500.0), reference)), float(loss(sine_osc(530.0), reference))
    assert aligned > 1.5 * neighbour, (aligned, neighbour)       # measured 3.0x (1e-7) and 2.2x (1e-5)


def test_spectral_loss_gradient_and_tiny_optimisation():
    """Fit the harmonic distribution of a 4-harmonic tone with Adam: the loss must drop substantially."""
    n, num_harmonics = SR // 4, 4
    num_frames = frames_for(n)
    f0 = torch.full((1, num_frames), 330.0)
    amplitude = torch.full((1, num_frames, 1), 0.5)
    target_dist = torch.tensor([1.0, 0.5, 0.25, 0.125]).expand(1, num_frames, num_harmonics)
    target = synth.harmonic_synth(f0, amplitude, target_dist, n, HOP, SR)
    logits = torch.zeros(1, 1, num_harmonics, requires_grad=True)
    loss_fn = MultiScaleSpectralLoss(fft_sizes=(512, 256, 128))
    opt = torch.optim.Adam([logits], lr=0.1)
    history = []
    for _ in range(30):
        dist = synth.exp_sigmoid(logits).expand(1, num_frames, num_harmonics)
        loss = loss_fn(synth.harmonic_synth(f0, amplitude, dist, n, HOP, SR), target)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) > 0
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.3 * history[0], history


# --------------------------------------------------------------------------------------------- batching

def test_batch_items_are_independent():
    n, num_frames, k = 4000, frames_for(4000), 10
    gen = torch.Generator().manual_seed(9)
    f0 = 100.0 + 900.0 * torch.rand(2, num_frames, generator=gen)
    amp = torch.rand(2, num_frames, 1, generator=gen)
    dist = torch.rand(2, num_frames, k, generator=gen)
    mags = torch.rand(2, num_frames, 17, generator=gen)
    both = synth.harmonic_synth(f0, amp, dist, n, HOP, SR)
    assert both.shape == (2, n)
    for b in range(2):
        alone = synth.harmonic_synth(f0[b:b + 1], amp[b:b + 1], dist[b:b + 1], n, HOP, SR)
        assert torch.allclose(both[b:b + 1], alone, atol=1e-6)
    x = torch.zeros(2, n).normal_(generator=gen)
    filt = synth.time_varying_filter(x, mags, HOP)
    assert torch.allclose(filt[1:], synth.time_varying_filter(x[1:], mags[1:], HOP), atol=1e-6)
    loss = MultiScaleSpectralLoss(fft_sizes=(256, 64))
    pair = torch.stack([float(loss(both[b:b + 1], filt[b:b + 1])) * torch.ones(()) for b in range(2)])
    assert float(loss(both, filt)) == pytest.approx(float(pair.mean()), rel=1e-5)
