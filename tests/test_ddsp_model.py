"""DDSP model and baseline (timbrelab.models.ddsp): shapes, causality, streaming state, quiet init, a tiny
overfit against the average-spectrum baseline, and checkpoint round trip. Fast (CPU, seconds)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from timbrelab.dsp.loudness import a_weighted_loudness
from timbrelab.dsp.spectral import MultiScaleSpectralLoss
from timbrelab.models.ddsp import (
    DDSP,
    PRESETS,
    AverageSpectrumBaseline,
    DDSPDecoder,
    DDSPModelConfig,
    normalise_inputs,
    run_gru,
)

SR, HOP = 16000, 64
STATS = {"loudness_db": {"mean": -33.0, "std": 11.9}}     # shaped like data/features/<domain>/stats.json
TINY = PRESETS["tiny"]
TINY_FX = TINY.replace(reverb_seconds=0.05, z_dim=4)       # tiny, but with the reverb and embedding branches


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_inputs(batch: int, frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    f0 = 110.0 * 2.0 ** (3.0 * torch.rand(batch, frames, generator=g))          # 110 .. 880 Hz
    loudness = -60.0 + 50.0 * torch.rand(batch, frames, generator=g)
    return f0, loudness


def test_presets_and_normalise_inputs():
    assert PRESETS["full"].hidden == 512 and PRESETS["full"].n_harmonics == 100
    assert PRESETS["full"].n_noise_bands == 65 and PRESETS["full"].reverb_seconds == 1.0
    assert TINY.reverb_taps == 0 and PRESETS["demo"] == DDSPModelConfig()
    x = normalise_inputs(torch.tensor([[440.0, 8.175799, 1e5]]), torch.tensor([[-33.0, -21.1, -44.9]]), STATS)
    assert x.shape == (1, 3, 2)
    torch.testing.assert_close(x[0, :, 0], torch.tensor([69 / 127, 0.0, 1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[0, :, 1], torch.tensor([0.0, 1.0, -1.0]), atol=1e-5, rtol=0)


def test_output_shape_and_finite():
    torch.manual_seed(0)
    model = DDSP(TINY_FX, STATS)
    f0, loudness = random_inputs(2, 50)
    audio, controls = model(f0, loudness, 50 * HOP, generator=gen(1), return_controls=True)
    assert audio.shape == (2, 50 * HOP) and torch.isfinite(audio).all()
    assert controls["amplitude"].shape == (2, 50, 1)
    assert controls["harmonic_distribution"].shape == (2, 50, TINY.n_harmonics)
    assert controls["noise_magnitudes"].shape == (2, 50, TINY.n_noise_bands)
    audio.pow(2).mean().backward()                                              # differentiable end to end
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_decoder_is_frame_causal_exactly():
    torch.manual_seed(0)
    decoder = DDSPDecoder(TINY_FX, STATS).eval()
    f0, loudness = random_inputs(2, 40)
    t = 17
    f0_b, loud_b = f0.clone(), loudness.clone()
    f0_b[:, t:] *= 1.5
    loud_b[:, t:] += 10.0
    with torch.no_grad():
        a, _ = decoder(f0, loudness)
        b, _ = decoder(f0_b, loud_b)
    for key in a:
        assert torch.equal(a[key][:, :t], b[key][:, :t]), key
        assert not torch.equal(a[key][:, t], b[key][:, t]), key                 # the change does reach frame t


def test_gru_state_carries_across_blocks():
    torch.manual_seed(0)
    decoder = DDSPDecoder(TINY.replace(gru_layers=2), STATS).eval()
    f0, loudness = random_inputs(2, 40)
    with torch.no_grad():
        whole, state_whole = decoder(f0, loudness)
        first, state = decoder(f0[:, :20], loudness[:, :20])
        second, state_end = decoder(f0[:, 20:], loudness[:, 20:], state)
    assert state.shape == (2, 2, TINY.hidden)
    for key in whole:
        torch.testing.assert_close(torch.cat([first[key], second[key]], dim=1), whole[key], atol=1e-5, rtol=0)
    torch.testing.assert_close(state_end, state_whole, atol=1e-5, rtol=0)


def test_distribution_normalised_below_nyquist_and_quiet_init():
    torch.manual_seed(0)
    decoder = DDSPDecoder(TINY, STATS)
    f0 = torch.tensor([[220.0, 1000.0, 1500.0]])                   # 16, 7, 5 harmonics below 8 kHz
    with torch.no_grad():
        dist = decoder(f0, torch.full((1, 3), -30.0))[0]["harmonic_distribution"][0]
    k = torch.arange(1, TINY.n_harmonics + 1)
    for i, f in enumerate(f0[0].tolist()):
        below = k * f < SR / 2
        torch.testing.assert_close(dist[i, below].sum(), torch.tensor(1.0), atol=1e-6, rtol=0)
        assert torch.all(dist[i, ~below] == 0) and torch.all(dist[i, below] > 0)
    for cfg in (TINY, PRESETS["demo"]):
        torch.manual_seed(0)
        model = DDSP(cfg, STATS)
        f0, loudness = random_inputs(2, 125)
        with torch.no_grad():
            rms = model(f0, loudness, 125 * HOP, generator=gen(0)).pow(2).mean().sqrt().item()
        print(f"init rms ({cfg.hidden} hidden): {rms:.2e} ({20 * math.log10(rms):.1f} dBFS)")
        assert rms < 1e-2


# ---------------------------------------------------------------------------------------- overfit

@pytest.fixture(scope="module")
def clip():
    """0.5 s of a 220 Hz 3-harmonic tone whose brightness grows with its level (h2 ~ env^3, h3 ~ env^5), on a
    -60 dB white-noise floor; loudness from the project's own A-weighted meter, crop framing F = n // hop."""
    n = SR // 2
    frames = n // HOP
    t = torch.arange(n, dtype=torch.float32) / SR
    env = 0.05 + 0.95 * torch.sin(math.pi * t / 0.5)                    # swell 0.05 -> 1 -> 0.05
    f0 = 220.0
    audio = 0.25 * env * (torch.sin(2 * math.pi * f0 * t) + 0.8 * env ** 2 * torch.sin(4 * math.pi * f0 * t)
                          + 0.8 * env ** 4 * torch.sin(6 * math.pi * f0 * t))
    audio = audio + 1e-3 * (2 * torch.rand(n, generator=gen(7)) - 1)
    loudness = torch.from_numpy(a_weighted_loudness(audio.numpy(), SR, HOP))[:frames]
    return {"audio": audio[None], "f0_hz": torch.full((1, frames), f0), "loudness_db": loudness[None]}


@pytest.fixture(scope="module")
def overfit(clip):
    torch.manual_seed(0)
    stats = {"loudness_db": {"mean": float(clip["loudness_db"].mean()), "std": float(clip["loudness_db"].std())}}
    loss_fn = MultiScaleSpectralLoss()
    n = clip["audio"].shape[-1]
    model = DDSP(TINY, stats)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = loss_fn(model(clip["f0_hz"], clip["loudness_db"], n, generator=gen(999)), clip["audio"]).item()
    for step in range(150):
        loss = loss_fn(model(clip["f0_hz"], clip["loudness_db"], n, generator=gen(step)), clip["audio"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_fn(model(clip["f0_hz"], clip["loudness_db"], n, generator=gen(999)), clip["audio"]).item()
    return {"model": model, "stats": stats, "before": before, "after": after, "loss_fn": loss_fn}


def test_tiny_overfit_halves_the_spectral_loss(overfit):
    print(f"tiny DDSP overfit: spectral loss {overfit['before']:.4f} -> {overfit['after']:.4f} "
          f"({100 * (1 - overfit['after'] / overfit['before']):.1f}% lower) after 150 Adam steps")
    assert overfit["after"] < 0.5 * overfit["before"]


def test_average_spectrum_baseline_is_worse_than_overfit_model(clip, overfit):
    torch.manual_seed(0)
    baseline = AverageSpectrumBaseline(TINY, overfit["stats"])
    history = baseline.fit([clip], steps=150, lr=0.05)
    n = clip["audio"].shape[-1]
    with torch.no_grad():
        base = overfit["loss_fn"](baseline(clip["f0_hz"], clip["loudness_db"], n, generator=gen(999)),
                                  clip["audio"]).item()
    print(f"baseline fit {history[0]:.4f} -> {history[-1]:.4f}; held-out noise draw: baseline {base:.4f} "
          f"vs DDSP {overfit['after']:.4f}")
    assert history[-1] < history[0]                                      # the fit itself works
    assert overfit["after"] < base


def test_state_dict_round_trip_weights_only():
    torch.manual_seed(0)
    model = DDSP(TINY_FX, STATS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))                            # not just the init
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "decoder.loudness_mean" in state and "decoder.loudness_std" in state
    fresh = DDSP(TINY_FX)                                                 # stats come from the checkpoint
    fresh.load_state_dict(state)
    f0, loudness = random_inputs(2, 30)
    with torch.no_grad():
        a = model(f0, loudness, 30 * HOP, generator=gen(3))
        b = fresh(f0, loudness, 30 * HOP, generator=gen(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("layers,with_state", [(1, False), (2, True)])
def test_training_gru_equals_torch_gru_in_values_and_gradients(layers, with_state):
    """run_gru's hand-written recurrence (used when training on a CPU) is torch's GRU, gradients included."""
    torch.manual_seed(0)
    gru = nn.GRU(6, 8, num_layers=layers, batch_first=True)
    x = torch.randn(3, 17, 6, requires_grad=True)
    h0 = torch.randn(layers, 3, 8, requires_grad=True) if with_state else None
    grads = []
    for fn in (lambda: gru(x, h0), lambda: run_gru(gru, x, h0)):
        gru.zero_grad()
        x.grad = None
        if h0 is not None:
            h0.grad = None
        out, final = fn()
        (out.square().sum() + final.sin().sum()).backward()
        params = [p.grad.clone() for p in gru.parameters()]
        grads.append((out.detach(), final.detach(), x.grad.clone(), h0.grad.clone() if h0 is not None else None,
                      params))
    (o1, f1, gx1, gh1, p1), (o2, f2, gx2, gh2, p2) = grads
    torch.testing.assert_close(o2, o1, rtol=0, atol=1e-6)
    torch.testing.assert_close(f2, f1, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx2, gx1, rtol=1e-5, atol=1e-5)
    if gh1 is not None:
        torch.testing.assert_close(gh2, gh1, rtol=1e-5, atol=1e-5)
    for a, b in zip(p2, p1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
