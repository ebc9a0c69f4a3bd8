"""Block-streaming DDSP: a TorchScript-able copy of a trained :class:`~timbrelab.models.ddsp.DDSP` that renders
audio block by block with its state carried across calls.

``StreamingDDSP(model)`` copies the decoder's weights and the reverb's impulse response (a snapshot for inference)
and exposes, all exported to TorchScript:

* ``forward(f0_hz (B, F), loudness_db (B, F)) -> audio (B, F * hop)`` for any ``F >= 1`` frames per call;
  draws the noise (uniform on ``[-1, 1)``) itself.
* ``forward_with_noise(f0_hz, loudness_db, noise (B, noise_length(F)))`` -- the same with the noise given, so a
  test can compare it with the offline path sample by sample. ``noise_length(F)`` is ``F * hop``, plus
  ``noise_lead`` (the noise FIR's memory, 256 samples at hop 64) on the first call after :meth:`reset`: the
  pre-roll :func:`~timbrelab.dsp.synth.filtered_noise` draws before sample 0.
* ``reset()`` -- start a new stream (forget every piece of state).

State carried across calls (constant size, so the work per block is ``O(F)``): the GRU hidden state, the
fundamental's phase (float64, wrapped to ``[0, 2 pi)``, multiplied by ``k`` per sample as
:func:`~timbrelab.dsp.synth.harmonic_oscillator` does), the previous frame's controls, the last hop of noise and
the overlap-add tail of the time-varying noise filter (``2 * hop + 256 - hop`` samples), and the reverb's
frequency-domain delay line (uniformly partitioned overlap-save, partitions of one hop, so any ``F`` works).

Latency: **one hop**. Samples between frames ``i`` and ``i + 1`` interpolate both, so a call that brings frames
``[a, a + F)`` renders the samples from frame ``a - 1`` to frame ``a + F - 1``. The concatenated output of a
stream is the offline rendering delayed by ``hop`` samples, its first hop silent::

    stream[hop + t] == DDSP(f0, loudness, n)[t]     for t < (N - 1) * hop (N frames streamed)

to float32 rounding (stated tolerance 1e-5 max abs error, measured below 1e-6: ``tests/test_streaming.py``).
The last hop of the offline crop (the last frame held) is what the next call would render. Inference only, on
the CPU (the state and the noise live there), float32 with the phase in float64.
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn

from timbrelab.dsp.synth import DEFAULT_NOISE_WINDOW, DEFAULT_NYQUIST_RAMP_FRACTION, fast_len, frequency_sampled_fir
from timbrelab.models.ddsp import DDSP, MIDI_MAX, MIN_F0_HZ

TWO_PI = 2.0 * math.pi
NORM_EPS = 1e-7   # normalize_harmonic_distribution's eps


def _noise_filter_bank(num_bands: int, window_size: int, n_fft: int) -> tuple[Tensor, Tensor]:
    """(M, n_fft // 2 + 1) real and imaginary parts of the per-band filter spectra.

    :func:`frequency_sampled_fir` is linear in the magnitudes (interpolation, inverse FFT, window), so a frame's
    filter spectrum is ``magnitudes @ bank``: one small matmul instead of an interpolation and an FFT per frame.
    """
    eye = torch.eye(num_bands, dtype=torch.float64)
    spectra = torch.fft.rfft(frequency_sampled_fir(eye, window_size), n=n_fft)
    return spectra.real.float().contiguous(), spectra.imag.float().contiguous()


def _reverb_partitions(wet_ir: Tensor, part: int) -> Tensor:
    """(n_ir,) IR -> (part + 1, P) complex spectra of its ``part``-tap partitions; column ``q`` holds partition
    ``P - 1 - q`` (the first taps last), lined up with a delay line of input spectra ordered oldest first."""
    num_parts = -(-wet_ir.shape[-1] // part)
    parts = nn.functional.pad(wet_ir.detach().double(), (0, num_parts * part - wet_ir.shape[-1]))
    spectra = torch.fft.rfft(parts.reshape(num_parts, part), n=2 * part)        # (P, part + 1)
    return spectra.flip(0).transpose(0, 1).to(torch.complex64).contiguous()     # (part + 1, P)


class StreamingDDSP(nn.Module):
    """A trained DDSP as a block-streaming, TorchScript-able module (see the module doc)."""

    sample_rate: int
    hop: int
    block_frames: int
    latency_samples: int
    noise_lead: int
    n_harmonics: int
    has_reverb: bool
    started: bool
    batch: int

    def __init__(self, model: DDSP, block_frames: int = 1):
        super().__init__()
        if isinstance(block_frames, bool) or not isinstance(block_frames, int) or block_frames <= 0:
            raise ValueError(f"StreamingDDSP: block_frames ({block_frames!r}) must be a positive integer")
        cfg = model.cfg
        dec = model.decoder
        self.sample_rate = int(cfg.sample_rate)
        self.hop = int(cfg.hop)
        self.block_frames = int(block_frames)          # the block the export was made for (metadata)
        self.latency_samples = int(cfg.hop)            # one hop: frame i + 1 is needed to render past frame i
        self.n_harmonics = int(cfg.n_harmonics)
        self.splits = [1, int(cfg.n_harmonics), int(cfg.n_noise_bands)]
        self.min_f0, self.midi_max, self.two_pi, self.eps = float(MIN_F0_HZ), float(MIDI_MAX), TWO_PI, NORM_EPS
        self.nyquist = 0.5 * float(cfg.sample_rate)
        self.ramp = DEFAULT_NYQUIST_RAMP_FRACTION * float(cfg.sample_rate)
        # Decoder: the same (scriptable) submodules, deep-copied so the stream never changes the model.
        copy = DDSP(cfg, (float(dec.loudness_mean), float(dec.loudness_std)))
        copy.load_state_dict(model.state_dict())
        copy.eval()
        d = copy.decoder
        self.f0_mlp, self.loudness_mlp, self.gru, self.out_mlp, self.head = (
            d.f0_mlp, d.loudness_mlp, d.gru, d.out_mlp, d.head)
        self.register_buffer("loudness_mean", d.loudness_mean.detach().clone())
        self.register_buffer("loudness_std", d.loudness_std.detach().clone())
        self.register_buffer("z", d.z.detach().clone() if d.z is not None else torch.zeros(0))
        self.register_buffer("k", torch.arange(1, cfg.n_harmonics + 1, dtype=torch.float32))
        self.register_buffer("u", torch.arange(cfg.hop, dtype=torch.float32) / cfg.hop)
        # Noise: per-frame FIRs of DEFAULT_NOISE_WINDOW taps under a periodic Hann window of 2 hops.
        window = DEFAULT_NOISE_WINDOW
        self.out_len = 2 * cfg.hop + window - 1
        self.n_fft = fast_len(self.out_len)
        self.noise_lead = -(-(window - 1) // cfg.hop) * cfg.hop     # filtered_noise's pre-roll, in samples
        bank_re, bank_im = _noise_filter_bank(cfg.n_noise_bands, window, self.n_fft)
        self.register_buffer("bank_re", bank_re)
        self.register_buffer("bank_im", bank_im)
        self.register_buffer("slice_window", torch.hann_window(2 * cfg.hop, periodic=True))
        # Reverb: the wet IR in hop-long partitions; the dry path is added exactly.
        self.has_reverb = model.reverb is not None
        wet = model.reverb.wet_ir() if model.reverb is not None else torch.zeros(cfg.hop)
        self.add_dry = bool(model.reverb.add_dry) if model.reverb is not None else True
        self.register_buffer("reverb_spectra", _reverb_partitions(wet, cfg.hop))
        self.num_partitions = int(self.reverb_spectra.shape[1])
        self._empty_state()
        self.eval()

    # ----------------------------------------------------------------------------------------- state

    def _empty_state(self) -> None:
        self.started = False
        self.batch = 0
        self.register_buffer("gru_state", torch.zeros(0), persistent=False)
        self.register_buffer("phase", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.register_buffer("prev_f0", torch.zeros(0), persistent=False)
        self.register_buffer("prev_amps", torch.zeros(0), persistent=False)
        self.register_buffer("noise_prev", torch.zeros(0), persistent=False)
        self.register_buffer("noise_tail", torch.zeros(0), persistent=False)
        self.register_buffer("reverb_prev", torch.zeros(0), persistent=False)
        self.register_buffer("delay_line", torch.zeros(0, dtype=torch.complex64), persistent=False)

    @torch.jit.export
    def reset(self) -> None:
        """Forget the stream: the next call starts at frame 0 (and takes ``noise_lead`` extra noise samples)."""
        self.started = False
        self.batch = 0

    def _start(self, batch: int) -> None:
        hidden = self.gru.hidden_size
        self.batch = batch
        self.gru_state = torch.zeros(self.gru.num_layers, batch, hidden)
        self.phase = torch.zeros(batch, 1, dtype=torch.float64)
        self.noise_prev = torch.zeros(batch, self.hop)
        self.noise_tail = torch.zeros(batch, self.out_len - self.hop)
        self.reverb_prev = torch.zeros(batch, 1, self.hop)
        self.delay_line = torch.zeros(batch, self.num_partitions - 1, self.hop + 1, dtype=torch.complex64)

    @torch.jit.export
    def state_sizes(self) -> list[list[int]]:
        """Shapes of every carried state tensor (constant over a stream; for tests)."""
        return [list(t.shape) for t in (self.gru_state, self.phase, self.prev_f0, self.prev_amps,
                                        self.noise_prev, self.noise_tail, self.reverb_prev, self.delay_line)]

    @torch.jit.export
    def noise_length(self, frames: int) -> int:
        """Noise samples the next call with ``frames`` frames takes in :meth:`forward_with_noise`."""
        return frames * self.hop + (0 if self.started else self.noise_lead)

    # --------------------------------------------------------------------------------------- decoder

    def _controls(self, f0_hz: Tensor, loudness_db: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, F) frames -> amplitude (B, F, 1), distribution (B, F, K) (masked at Nyquist), noise (B, F, M)."""
        midi = 12.0 * torch.log2(f0_hz.clamp(min=self.min_f0) / 440.0) + 69.0
        x_f0 = (midi.clamp(0.0, self.midi_max) / self.midi_max)[..., None]
        x_ld = ((loudness_db - self.loudness_mean) / self.loudness_std)[..., None]
        f0_feat = self.f0_mlp(x_f0)
        ld_feat = self.loudness_mlp(x_ld)
        z = self.z.expand(f0_feat.shape[0], f0_feat.shape[1], self.z.shape[0])
        rnn_out, self.gru_state = self.gru(torch.cat([f0_feat, ld_feat, z], dim=-1), self.gru_state)
        hidden = self.out_mlp(torch.cat([rnn_out, f0_feat, ld_feat], dim=-1))
        logits = torch.split(self.head(hidden), self.splits, dim=-1)
        harm = self._exp_sigmoid(logits[1]) * (f0_hz[..., None] * self.k < self.nyquist).to(f0_hz.dtype)
        distribution = harm / torch.clamp(harm.sum(dim=-1, keepdim=True), min=self.eps)
        return self._exp_sigmoid(logits[0]), distribution, self._exp_sigmoid(logits[2])

    def _exp_sigmoid(self, x: Tensor) -> Tensor:
        return 2.0 * torch.sigmoid(x) ** math.log(10.0) + 1e-7

    def _gain(self, f0_hz: Tensor) -> Tensor:
        """(..., 1) f0 -> (..., K) anti-aliasing gain with the default Nyquist ramp (harmonic_synth's)."""
        return torch.addcmul(torch.tensor(self.nyquist / self.ramp), f0_hz, -self.k / self.ramp).clamp(0.0, 1.0)

    # ------------------------------------------------------------------------------------ harmonics

    def _harmonics(self, f0_frames: Tensor, amp_frames: Tensor) -> Tensor:
        """f0 (B, S + 1), harmonic amplitudes (B, S + 1, K) at S + 1 consecutive frames -> (B, S * hop) samples
        of the S segments between them; advances the carried phase."""
        batch, segments = f0_frames.shape[0], f0_frames.shape[1] - 1
        n = segments * self.hop
        left = amp_frames[:, :segments]
        amps = torch.addcmul(left[:, :, None], self.u[:, None], (amp_frames[:, 1:] - left)[:, :, None])
        amps = amps.reshape(batch, n, self.n_harmonics)
        f0_left = f0_frames[:, :segments]
        f0 = torch.addcmul(f0_left[:, :, None], self.u, (f0_frames[:, 1:] - f0_left)[:, :, None]).reshape(batch, n)
        omega = f0.to(torch.float64) * (self.two_pi / float(self.sample_rate))
        cumulative = torch.cumsum(omega, dim=1)
        phase_1 = torch.remainder(self.phase + (cumulative - omega), self.two_pi).to(torch.float32)
        self.phase = torch.remainder(self.phase + cumulative[:, -1:], self.two_pi)
        waves = torch.sin(phase_1[..., None] * self.k)                              # (B, n, K)
        return (amps * self._gain(f0[..., None]) * waves).sum(dim=-1)

    # ---------------------------------------------------------------------------------------- noise

    def _noise(self, magnitudes: Tensor, noise: Tensor) -> Tensor:
        """Band magnitudes (B, P, M) of P frames and the noise under their windows (B, P * hop) -> (B, P * hop)
        filtered noise from the previous frame to the last one (overlap-add tail carried)."""
        frames = magnitudes.shape[1]
        signal = torch.cat([self.noise_prev, noise], dim=1)                         # (B, (P + 1) hop)
        slices = signal.unfold(1, 2 * self.hop, self.hop) * self.slice_window       # (B, P, 2 hop)
        response = torch.complex(magnitudes @ self.bank_re, magnitudes @ self.bank_im)
        spectrum = torch.fft.rfft(slices, n=self.n_fft) * response
        pieces = torch.fft.irfft(spectrum, n=self.n_fft)[..., :self.out_len]        # (B, P, out_len)
        total = (frames - 1) * self.hop + self.out_len
        summed = nn.functional.fold(pieces.transpose(1, 2), output_size=(1, total), kernel_size=(1, self.out_len),
                                    stride=(1, self.hop))[:, 0, 0]                  # (B, P hop + tail)
        tail = self.noise_tail.shape[1]
        summed = torch.cat([summed[:, :tail] + self.noise_tail, summed[:, tail:]], dim=1)
        self.noise_tail = summed[:, frames * self.hop:]
        self.noise_prev = noise[:, -self.hop:]
        return summed[:, :frames * self.hop]

    # --------------------------------------------------------------------------------------- reverb

    def _reverb(self, dry: Tensor) -> Tensor:
        """(B, S * hop) -> (B, S * hop): dry + dry * wet IR, one hop-long partition per sub-block (overlap-save)."""
        batch, segments = dry.shape[0], dry.shape[1] // self.hop
        blocks = torch.cat([self.reverb_prev, dry.reshape(batch, segments, self.hop)], dim=1)   # (B, S + 1, hop)
        spectra = torch.fft.rfft(torch.cat([blocks[:, :-1], blocks[:, 1:]], dim=-1))            # (B, S, hop + 1)
        line = torch.cat([self.delay_line, spectra], dim=1)                                     # (B, P - 1 + S, .)
        windows = line.unfold(1, self.num_partitions, 1)                                        # (B, S, hop+1, P)
        wet = torch.fft.irfft((windows * self.reverb_spectra).sum(dim=-1), n=2 * self.hop)[..., self.hop:]
        self.delay_line = line[:, segments:]
        self.reverb_prev = blocks[:, -1:]
        wet = wet.reshape(batch, segments * self.hop)
        return dry + wet if self.add_dry else wet

    # -------------------------------------------------------------------------------------- the block

    def _check(self, f0_hz: Tensor, loudness_db: Tensor) -> None:
        if f0_hz.dim() != 2 or f0_hz.shape != loudness_db.shape:
            raise ValueError(f"StreamingDDSP expects f0_hz and loudness_db of one shape (B, F), got "
                             f"{list(f0_hz.shape)} and {list(loudness_db.shape)}")
        if f0_hz.shape[1] < 1:
            raise ValueError(f"StreamingDDSP: a block needs at least one frame ({self.hop} samples), got 0")
        if self.started and f0_hz.shape[0] != self.batch:
            raise ValueError(f"StreamingDDSP: batch size changed from {self.batch} to {f0_hz.shape[0]} within a "
                             "stream; call reset() first")

    @torch.jit.export
    def forward_with_noise(self, f0_hz: Tensor, loudness_db: Tensor, noise: Tensor) -> Tensor:
        """One block: f0 (B, F) Hz, loudness (B, F) dB, noise (B, noise_length(F)) -> audio (B, F * hop)."""
        self._check(f0_hz, loudness_db)
        batch, frames = f0_hz.shape[0], f0_hz.shape[1]
        expected = self.noise_length(frames)
        if noise.dim() != 2 or noise.shape[0] != batch or noise.shape[1] != expected:
            raise ValueError(f"StreamingDDSP: noise must be (B, {expected}) for a block of {frames} frames, got "
                             f"{list(noise.shape)}")
        first = not self.started
        if first:
            self._start(batch)
        with torch.no_grad():
            audio = self._block(f0_hz.float(), loudness_db.float(), noise.float(), first)
        self.started = True
        return audio

    def _block(self, f0_hz: Tensor, loudness_db: Tensor, noise: Tensor, first: bool) -> Tensor:
        amplitude, distribution, magnitudes = self._controls(f0_hz, loudness_db)
        gain = self._gain(f0_hz[..., None])                           # harmonic_synth renormalises with the ramp
        masked = distribution * gain
        amps = amplitude * (masked / torch.clamp(masked.sum(dim=-1, keepdim=True), min=self.eps))
        if first:
            f0_frames, amp_frames = f0_hz, amps
            lead = self.noise_lead // self.hop                         # pre-roll under frame 0's filter
            magnitudes = torch.cat([magnitudes[:, :1].expand(-1, lead, -1), magnitudes], dim=1)
        else:
            f0_frames = torch.cat([self.prev_f0, f0_hz], dim=1)
            amp_frames = torch.cat([self.prev_amps, amps], dim=1)
        self.prev_f0 = f0_hz[:, -1:]
        self.prev_amps = amps[:, -1:]
        noise_out = self._noise(magnitudes, noise)[:, noise.shape[1] - f0_hz.shape[1] * self.hop:]
        if f0_frames.shape[1] > 1:
            harmonic = self._harmonics(f0_frames, amp_frames)
        else:
            harmonic = torch.zeros(f0_hz.shape[0], 0)
        if first:       # nothing precedes frame 0: the stream's first hop is silence
            harmonic = torch.cat([torch.zeros(f0_hz.shape[0], self.hop), harmonic], dim=1)
            noise_out = torch.cat([torch.zeros(f0_hz.shape[0], self.hop), noise_out[:, self.hop:]], dim=1)
        dry = harmonic + noise_out
        return self._reverb(dry) if self.has_reverb else dry

    def forward(self, f0_hz: Tensor, loudness_db: Tensor,
                generator: Optional[torch.Generator] = None) -> Tensor:  # noqa: UP045 - TorchScript's spelling
        """One block: f0 (B, F) Hz, loudness (B, F) dB -> audio (B, F * hop); uniform noise drawn here."""
        self._check(f0_hz, loudness_db)
        n = self.noise_length(f0_hz.shape[1])
        noise = 2.0 * torch.rand(f0_hz.shape[0], n, generator=generator) - 1.0
        return self.forward_with_noise(f0_hz, loudness_db, noise)
