"""DDSP solo-instrument model (decoder + differentiable synth) and a non-learned baseline, in pure torch.

Design, after magenta/ddsp's ``RnnFcDecoder`` ("solo instrument" autoencoder without a z encoder), written
from scratch here:

* Inputs per frame: f0 as MIDI scaled to ``[0, 1]`` over 0..127 and loudness standardised with the training
  stats (:func:`normalise_inputs`).
* One MLP stack per input (``mlp_layers`` x [Linear -> LayerNorm -> LeakyReLU], all per frame), a GRU over the
  concatenated stacks, then an output MLP on ``[gru_out, f0_stack, loudness_stack]`` and one linear head
  split into amplitude (1), harmonic distribution (K) and noise magnitudes (M), each through
  :func:`~timbrelab.dsp.synth.exp_sigmoid`. The amplitude and noise heads get negative bias offsets so the
  initial output is quiet (about -70 dBFS measured for tiny and demo).
* Frame-causal: nothing looks ahead (per-frame MLPs / LayerNorm, a uni-directional GRU), and the GRU state is
  returned so a streaming path can carry it across blocks.
* Synthesis: :func:`~timbrelab.dsp.synth.harmonic_synth` + :func:`~timbrelab.dsp.synth.filtered_noise`, then an
  optional learned :class:`~timbrelab.dsp.synth.Reverb`.

Shapes: ``B`` batch, ``F`` frames, ``n`` samples, ``K`` harmonics, ``M`` noise bands. Frames follow the
DDSPDataset crop convention ``F = n // hop`` (``F = 1 + n // hop`` works too).

Presets (:data:`PRESETS`): ``full`` is magenta's solo-instrument size (512-wide stacks of 3 layers, GRU 512,
100 harmonics, 65 noise bands, 1 s reverb); ``demo`` the defaults; ``tiny`` a CPU/test size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from timbrelab.dsp.spectral import MultiScaleSpectralLoss
from timbrelab.dsp.synth import (
    Reverb,
    exp_sigmoid,
    filtered_noise,
    harmonic_synth,
    normalize_harmonic_distribution,
)

MIDI_MAX = 127.0
MIN_F0_HZ = 1e-3                  # floor before log2 (f0 from the tracker is always positive anyway)
AMP_BIAS = -3.0                   # exp_sigmoid(-3) ~ 1.8e-3 total harmonic amplitude at init
NOISE_BIAS = -5.0                 # exp_sigmoid(-5) ~ 2e-5 per noise band at init (magenta's FilteredNoise bias)
LN10_OVER_20 = math.log(10.0) / 20.0


@dataclass(frozen=True)
class DDSPModelConfig:
    """Sizes of :class:`DDSP` (see the module doc). ``reverb_seconds=0`` disables the reverb; ``z_dim > 0`` adds
    one learned timbre embedding (a trainable vector fed to the GRU at every frame); 0 = off."""

    sample_rate: int = 16000
    hop: int = 64
    n_harmonics: int = 60
    n_noise_bands: int = 65
    hidden: int = 256
    gru_layers: int = 1
    mlp_layers: int = 2
    reverb_seconds: float = 0.5
    z_dim: int = 0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "hop", "n_harmonics", "n_noise_bands", "hidden", "gru_layers", "mlp_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DDSPModelConfig.{name} ({value!r}) must be a positive integer")
        if self.n_noise_bands < 2:
            raise ValueError(f"DDSPModelConfig.n_noise_bands ({self.n_noise_bands}) must be >= 2")
        if not self.reverb_seconds >= 0:
            raise ValueError(f"DDSPModelConfig.reverb_seconds ({self.reverb_seconds!r}) must be >= 0")
        if isinstance(self.z_dim, bool) or not isinstance(self.z_dim, int) or self.z_dim < 0:
            raise ValueError(f"DDSPModelConfig.z_dim ({self.z_dim!r}) must be an integer >= 0")

    @property
    def reverb_taps(self) -> int:
        """IR length in samples (0: no reverb)."""
        taps = round(self.reverb_seconds * self.sample_rate)
        return taps if taps >= 2 else 0

    def replace(self, **changes: Any) -> DDSPModelConfig:
        return replace(self, **changes)


PRESETS: dict[str, DDSPModelConfig] = {
    # CPU / unit-test size: no reverb, tiny stacks.
    "tiny": DDSPModelConfig(hidden=32, n_harmonics=16, n_noise_bands=16, reverb_seconds=0.0),
    # The defaults: a model that trains on one GPU in minutes to hours.
    "demo": DDSPModelConfig(),
    # magenta/ddsp "solo instrument": RnnFcDecoder ch=512, rnn_channels=512 (GRU), layers_per_stack=3,
    # output splits amps 1 / harmonic_distribution 100 / noise_magnitudes 65; trainable reverb (1 s here).
    "full": DDSPModelConfig(hidden=512, n_harmonics=100, n_noise_bands=65, mlp_layers=3, reverb_seconds=1.0),
}


# ------------------------------------------------------------------------------------------- inputs

def _register_loudness_norm(module: nn.Module, stats) -> tuple[float, float]:
    """Store the input loudness normalisation as buffers, so a checkpoint is self-contained."""
    mean, std = _loudness_norm(stats)
    module.register_buffer("loudness_mean", torch.tensor(mean, dtype=torch.float32))
    module.register_buffer("loudness_std", torch.tensor(std, dtype=torch.float32))
    return mean, std


def _loudness_norm(stats: Mapping[str, Any] | tuple[float, float] | None) -> tuple[float, float]:
    """``(mean, std)`` of loudness dB from stats.json (``stats["loudness_db"]``) or a pair; checked."""
    if stats is None:
        return -40.0, 20.0                         # rough full-scale-dB range, only for stats-less use
    if isinstance(stats, Mapping):
        ld = stats.get("loudness_db")
        if not isinstance(ld, Mapping):
            raise TypeError(f"stats must hold 'loudness_db' with 'mean' and 'std', found {ld!r}")
        mean, std = ld.get("mean"), ld.get("std")
    else:
        mean, std = stats
    mean, std = float(mean), float(std)
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"loudness stats need a finite mean and std > 0, found mean={mean!r} std={std!r}")
    return mean, std


def scale_f0(f0_hz: Tensor) -> Tensor:
    """f0 (any shape) Hz -> MIDI / 127, clamped to ``[0, 1]`` (DDSP's ``f0_scaled``)."""
    midi = 12.0 * torch.log2(f0_hz.clamp(min=MIN_F0_HZ) / 440.0) + 69.0
    return midi.clamp(0.0, MIDI_MAX) / MIDI_MAX


def normalise_inputs(f0_hz: Tensor, loudness_db: Tensor,
                     stats: Mapping[str, Any] | tuple[float | Tensor, float | Tensor] | None) -> Tensor:
    """f0 (B, F) Hz, loudness (B, F) dB -> (B, F, 2) decoder inputs ``[f0_scaled, loudness_standardised]``.

    ``stats`` is a stats.json mapping (uses ``loudness_db.mean`` / ``.std``) or a ``(mean, std)`` pair
    (floats or tensors, e.g. a model's buffers).
    """
    if f0_hz.ndim != 2 or f0_hz.shape != loudness_db.shape:
        raise ValueError(f"normalise_inputs expects f0 and loudness of one shape (B, F), got "
                         f"{tuple(f0_hz.shape)} and {tuple(loudness_db.shape)}")
    if isinstance(stats, tuple) and any(isinstance(v, Tensor) for v in stats):
        mean, std = stats
    else:
        mean, std = _loudness_norm(stats)
    return torch.stack([scale_f0(f0_hz), (loudness_db - mean) / std], dim=-1)


# ------------------------------------------------------------------------------------------ decoder

def _mlp(in_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` x [Linear -> LayerNorm -> LeakyReLU]; all per frame (no mixing over time)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.2)]
    return nn.Sequential(*mods)


def run_gru(gru: nn.GRU, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``gru(x (B, T, in), state (layers, B, H))`` for a batch-first, uni-directional, biased GRU without dropout.

    Equal to ``gru(x, state)`` to float rounding. When a gradient is needed, each layer runs as
    :class:`_GRULayer`, whose backward computes the recurrent weights' gradient in one matrix product over all
    steps instead of one small product and accumulation per step (torch's per-step autograd graph, the largest
    item in the profile of a training step on a CPU). Otherwise (inference, streaming, GPU) torch's own kernel runs.
    """
    wants_grad = x.requires_grad or (state is not None and state.requires_grad) \
        or any(p.requires_grad for p in gru.parameters())
    # CPU only: on a GPU cuDNN's fused GRU is far faster than any per-step Python recurrence.
    plain = (x.device.type != "cpu" or not torch.is_grad_enabled() or not wants_grad or not gru.batch_first
             or gru.bidirectional or not gru.bias
             or gru.dropout or getattr(gru, "proj_size", 0) or x.ndim != 3)
    if plain:
        return gru(x, state)
    if state is None:
        state = x.new_zeros(gru.num_layers, x.shape[0], gru.hidden_size)
    finals = []
    # The recurrence in float32 also under mixed precision (CPU autocast would hand it bf16 gates and float32
    # weights); a long scan is where low precision accumulates.
    with torch.autocast(x.device.type, enabled=False):
        x, state = x.float(), state.float()
        for layer in range(gru.num_layers):
            w_ih, w_hh, b_ih, b_hh = (getattr(gru, f"{name}_l{layer}")
                                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            input_gates = nn.functional.linear(x, w_ih, b_ih)                      # (B, T, 3H), one product
            x, final = _GRULayer.apply(input_gates, state[layer], w_hh, b_hh)
            finals.append(final)
    return x, torch.stack(finals)


class _GRULayer(torch.autograd.Function):
    """One GRU layer's recurrence (torch's gate order r, z, n) from precomputed input gates.

    ``forward(input_gates (B, T, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,)) -> (out (B, T, H), h_T (B, H))`` with
    ``r, z = sigmoid(gi + gh)``, ``n = tanh(gi_n + r * gh_n)``, ``h = n + z * (h_prev - n)``, ``gh = w_hh h_prev + b_hh``.
    """

    @staticmethod
    def forward(ctx, input_gates, h0, w_hh, b_hh):
        batch, steps, three_h = input_gates.shape
        hidden = three_h // 3
        states = input_gates.new_empty(batch, steps + 1, hidden)                  # h_0 .. h_T
        gates = input_gates.new_empty(batch, steps, three_h)                      # r, z, n after activation
        gh_n = input_gates.new_empty(batch, steps, hidden)
        states[:, 0] = h = h0
        w_t = w_hh.t()
        for t in range(steps):
            gh = torch.addmm(b_hh, h, w_t)                                         # (B, 3H)
            gi = input_gates[:, t]
            rz = torch.sigmoid(gh[:, :2 * hidden] + gi[:, :2 * hidden])
            r, z = rz[:, :hidden], rz[:, hidden:]
            n = torch.tanh(gi[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
            h = (h - n) * z + n
            states[:, t + 1] = h
            gates[:, t, :2 * hidden] = rz
            gates[:, t, 2 * hidden:] = n
            gh_n[:, t] = gh[:, 2 * hidden:]
        ctx.save_for_backward(states, gates, gh_n, w_hh)
        return states[:, 1:].clone(), h.clone()

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        states, gates, gh_n, w_hh = ctx.saved_tensors
        batch, steps, three_h = gates.shape
        hidden = three_h // 3
        d_gi = gates.new_empty(batch, steps, three_h)                              # grad of the input gates
        d_gh = gates.new_empty(batch, steps, three_h)                              # grad of w_hh h + b_hh
        dh = grad_final if grad_final is not None else states.new_zeros(batch, hidden)
        for t in range(steps - 1, -1, -1):
            if grad_out is not None:
                dh = dh + grad_out[:, t]
            r, z, n = gates[:, t, :hidden], gates[:, t, hidden:2 * hidden], gates[:, t, 2 * hidden:]
            d_n = dh * (1 - z) * (1 - n * n)                                       # through tanh
            d_gi[:, t, 2 * hidden:] = d_n
            d_gh[:, t, 2 * hidden:] = d_n * r
            d_r = d_n * gh_n[:, t]
            d_z = dh * (states[:, t] - n)
            d_rz = torch.cat([d_r * r * (1 - r), d_z * z * (1 - z)], dim=1)      # through the sigmoids
            d_gi[:, t, :2 * hidden] = d_rz
            d_gh[:, t, :2 * hidden] = d_rz
            dh = torch.addmm(dh * z, d_gh[:, t], w_hh)
        flat = d_gh.reshape(-1, three_h)
        d_w_hh = flat.t() @ states[:, :-1].reshape(-1, hidden)                    # all steps in one product
        return d_gi, dh, d_w_hh, flat.sum(dim=0)


class DDSPDecoder(nn.Module):
    """(f0, loudness) frames -> synth controls; frame-causal, with carried GRU state.

    ``forward(f0_hz (B, F), loudness_db (B, F), state=None) -> (controls, new_state)``:

    * ``amplitude`` (B, F, 1) total harmonic amplitude, ``exp_sigmoid``-scaled, in (0, 2);
    * ``harmonic_distribution`` (B, F, K), ``exp_sigmoid``-scaled then normalised to sum 1 over the harmonics
      strictly below Nyquist (``k * f0 < sr / 2``; those at or above are 0);
    * ``noise_magnitudes`` (B, F, M) band gains, ``exp_sigmoid``-scaled.

    ``state`` / ``new_state``: the GRU hidden state (gru_layers, B, hidden); feeding ``new_state`` of frames
    ``[0, t)`` into a call on ``[t, T)`` equals one call on ``[0, T)`` (to float rounding). Buffers
    ``loudness_mean`` / ``loudness_std`` hold the input normalisation (from ``stats``) so that a checkpoint is
    self-contained.
    """

    def __init__(self, cfg: DDSPModelConfig, stats: Mapping[str, Any] | tuple[float, float] | None = None):
        super().__init__()
        self.cfg = cfg
        mean, std = _register_loudness_norm(self, stats)
        h = cfg.hidden
        self.f0_mlp = _mlp(1, h, cfg.mlp_layers)
        self.loudness_mlp = _mlp(1, h, cfg.mlp_layers)
        if cfg.z_dim:
            self.z = nn.Parameter(torch.zeros(cfg.z_dim))
        else:
            self.register_parameter("z", None)
        self.gru = nn.GRU(2 * h + cfg.z_dim, h, num_layers=cfg.gru_layers, batch_first=True)
        self.out_mlp = _mlp(3 * h, h, cfg.mlp_layers)
        self.splits = (1, cfg.n_harmonics, cfg.n_noise_bands)
        self.head = nn.Linear(h, sum(self.splits))
        offset = torch.zeros(sum(self.splits))
        offset[0] = AMP_BIAS
        offset[1 + cfg.n_harmonics:] = NOISE_BIAS
        with torch.no_grad():
            self.head.bias.add_(offset)

    def initial_state(self, batch: int, *, device=None, dtype=torch.float32) -> Tensor:
        """(gru_layers, B, hidden) zeros: the state of a fresh stream."""
        return torch.zeros(self.cfg.gru_layers, batch, self.cfg.hidden, device=device, dtype=dtype)

    def forward(self, f0_hz: Tensor, loudness_db: Tensor,
                state: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
        x = normalise_inputs(f0_hz, loudness_db, (self.loudness_mean, self.loudness_std))
        f0_feat = self.f0_mlp(x[..., :1])
        ld_feat = self.loudness_mlp(x[..., 1:])
        rnn_in = [f0_feat, ld_feat]
        if self.z is not None:
            rnn_in.append(self.z.expand(*f0_feat.shape[:2], -1))
        rnn_out, new_state = run_gru(self.gru, torch.cat(rnn_in, dim=-1), state)
        hidden = self.out_mlp(torch.cat([rnn_out, f0_feat, ld_feat], dim=-1))
        amp_logit, harm_logit, noise_logit = torch.split(self.head(hidden), self.splits, dim=-1)
        distribution = normalize_harmonic_distribution(exp_sigmoid(harm_logit), f0_hz, self.cfg.sample_rate,
                                                       nyquist_ramp_hz=0.0)
        controls = {"amplitude": exp_sigmoid(amp_logit), "harmonic_distribution": distribution,
                    "noise_magnitudes": exp_sigmoid(noise_logit)}
        return controls, new_state


# ------------------------------------------------------------------------------------------- synth

def render(cfg: DDSPModelConfig, f0_hz: Tensor, controls: Mapping[str, Tensor], n_samples: int,
           reverb: nn.Module | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Controls (see :class:`DDSPDecoder`) -> audio (B, n): harmonic + filtered noise [-> reverb]."""
    harmonic = harmonic_synth(f0_hz, controls["amplitude"], controls["harmonic_distribution"], n_samples,
                              cfg.hop, cfg.sample_rate)
    noise = filtered_noise(controls["noise_magnitudes"], n_samples, cfg.hop, generator=generator)
    audio = harmonic + noise
    return reverb(audio) if reverb is not None else audio


class DDSP(nn.Module):
    """Decoder + synth: ``forward(f0_hz (B, F), loudness_db (B, F), n_samples) -> audio (B, n_samples)``.

    ``generator`` seeds the noise (default: torch's global RNG); ``return_controls=True`` returns
    ``(audio, controls)``. ``stats`` is a stats.json mapping (or a ``(mean, std)`` loudness pair); its loudness
    mean / std are buffers of the decoder, so ``state_dict()`` (plain tensors only) is a self-contained
    checkpoint loadable with ``torch.load(weights_only=True)``.
    """

    def __init__(self, cfg: DDSPModelConfig, stats: Mapping[str, Any] | tuple[float, float] | None = None):
        super().__init__()
        self.cfg = cfg
        self.decoder = DDSPDecoder(cfg, stats)
        taps = cfg.reverb_taps
        self.reverb = Reverb(taps, cfg.sample_rate, decay_s=cfg.reverb_seconds) if taps else None

    def forward(self, f0_hz: Tensor, loudness_db: Tensor, n_samples: int, *,
                generator: torch.Generator | None = None, return_controls: bool = False):
        controls, _ = self.decoder(f0_hz, loudness_db)
        audio = render(self.cfg, f0_hz, controls, n_samples, self.reverb, generator)
        return (audio, controls) if return_controls else audio


# ----------------------------------------------------------------------------------------- baseline

class AverageSpectrumBaseline(nn.Module):
    """Non-learned reference: the same synth driven by ONE fixed harmonic distribution and ONE noise spectrum.

    Controls per frame, with ``level = (loudness_db - mean) / std`` from the stats:

    * ``amplitude = exp(a * level + b)`` (log-amplitude linear in loudness dB; initialised to the physical
      ``10 ** (loudness_db / 20)``), clamped to at most 2;
    * ``harmonic_distribution = softmax(h)`` for one learned vector ``h`` (K,), masked above Nyquist;
    * ``noise_magnitudes = exp_sigmoid(q) * amplitude`` for one learned vector ``q`` (M,): a fixed noise
      spectrum riding on the same loudness envelope.

    :meth:`fit` sets these ``K + M + 2`` numbers by Adam on the multi-scale spectral loss over the training
    batches (the honest "average spectrum" estimate under the loss the model is judged by). Nothing depends
    on time except through loudness and f0, so it is what a DDSP decoder reduces to without any learned
    timbre dynamics; the trained model must beat it.
    """

    def __init__(self, cfg: DDSPModelConfig, stats: Mapping[str, Any] | tuple[float, float] | None = None):
        super().__init__()
        self.cfg = cfg
        mean, std = _register_loudness_norm(self, stats)
        self.harmonic_logits = nn.Parameter(torch.zeros(cfg.n_harmonics))
        self.noise_logits = nn.Parameter(torch.full((cfg.n_noise_bands,), NOISE_BIAS))
        self.amp_scale = nn.Parameter(torch.tensor(std * LN10_OVER_20))
        self.amp_offset = nn.Parameter(torch.tensor(mean * LN10_OVER_20))

    def controls(self, f0_hz: Tensor, loudness_db: Tensor) -> dict[str, Tensor]:
        level = (loudness_db - self.loudness_mean) / self.loudness_std
        amplitude = torch.exp((self.amp_scale * level + self.amp_offset).clamp(max=math.log(2.0)))[..., None]
        dist = torch.softmax(self.harmonic_logits, dim=0).expand(*f0_hz.shape, -1)
        dist = normalize_harmonic_distribution(dist, f0_hz, self.cfg.sample_rate, nyquist_ramp_hz=0.0)
        noise = exp_sigmoid(self.noise_logits) * amplitude
        return {"amplitude": amplitude, "harmonic_distribution": dist, "noise_magnitudes": noise}

    def forward(self, f0_hz: Tensor, loudness_db: Tensor, n_samples: int, *,
                generator: torch.Generator | None = None) -> Tensor:
        return render(self.cfg, f0_hz, self.controls(f0_hz, loudness_db), n_samples, None, generator)

    def fit(self, batches: Iterable[Mapping[str, Tensor]], *, steps: int = 300, lr: float = 0.05,
            loss: nn.Module | None = None, seed: int = 0) -> list[float]:
        """Fit the fixed spectra and the loudness map on ``batches`` (dicts with ``audio`` (B, n),
        ``f0_hz`` / ``loudness_db`` (B, F), as DDSPDataset collates), cycling through them for ``steps`` Adam
        steps. Noise draws are seeded (``seed + step``). Returns the loss per step."""
        data = list(batches)
        if not data:
            raise ValueError("AverageSpectrumBaseline.fit: no batches")
        loss_fn = loss if loss is not None else MultiScaleSpectralLoss()
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        history: list[float] = []
        with torch.enable_grad():
            for step in range(steps):
                batch = data[step % len(data)]
                audio = batch["audio"]
                gen = torch.Generator(device=audio.device).manual_seed(seed + step)
                pred = self(batch["f0_hz"], batch["loudness_db"], audio.shape[-1], generator=gen)
                value = loss_fn(pred, audio)
                opt.zero_grad()
                value.backward()
                opt.step()
                history.append(float(value.detach()))
        return history


def build(model_config: Mapping[str, Any], stats: Mapping[str, Any] | None) -> DDSP:
    """The registry's builder: a DDSP from a checkpoint's ``model_config`` and training ``stats``."""
    return DDSP(DDSPModelConfig(**model_config), stats)
