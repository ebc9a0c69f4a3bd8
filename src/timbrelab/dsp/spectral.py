"""Differentiable spectral representations and DDSP's multi-scale spectral loss (pure torch, batched).

STFT frames follow the project's framing convention (:mod:`timbrelab.dsp.framing`): centred, zero padded,
frame ``i`` at sample ``i * hop``, ``1 + n // hop`` frames. Windows are periodic Hann.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

DEFAULT_FFT_SIZES = (2048, 1024, 512, 256, 128, 64)
LOG_EPS = 1e-7


def stft_hop(n_fft: int, overlap: float = 0.75) -> int:
    """Hop in samples for an ``n_fft`` window at fractional ``overlap`` (DDSP: ``int(n_fft * (1 - overlap))``)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"stft_hop: overlap ({overlap!r}) must be in [0, 1)")
    return max(1, int(n_fft * (1.0 - overlap)))


def stft_magnitude(x: Tensor, n_fft: int, overlap: float = 0.75) -> Tensor:
    """Audio (B, n) or (n,) -> |STFT| (B, 1 + n // hop, 1 + n_fft // 2) (frames first, like model controls).

    Periodic Hann window of ``n_fft``, ``hop = stft_hop(n_fft, overlap)``, centred frames with zero padding.
    Unnormalised magnitudes (a full-scale sine of amplitude ``a`` peaks near ``a * n_fft / 4``). The gradient
    is finite everywhere (``|z|`` has gradient 0 at ``z = 0`` in torch).
    """
    if isinstance(n_fft, bool) or not isinstance(n_fft, int) or n_fft < 2:
        raise ValueError(f"stft_magnitude: n_fft ({n_fft!r}) must be an integer >= 2")
    if x.ndim not in (1, 2):
        raise ValueError(f"stft_magnitude expects audio (B, n) or (n,), got {tuple(x.shape)}")
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=stft_hop(n_fft, overlap), win_length=n_fft, window=window,
                      center=True, pad_mode="constant", return_complex=True)
    return spec.abs().transpose(-1, -2)


class MultiScaleSpectralLoss(nn.Module):
    """DDSP's multi-scale spectral loss: ``mean over scales of (mag_weight * L1(|S|) + logmag_weight * L1(log|S|))``.

    For each FFT size, L1 is the mean absolute difference over batch, frames and bins between the
    :func:`stft_magnitude` of prediction and target, and between their ``log(mag + 1e-7)``. Scales are
    averaged (not summed, unlike DDSP), so the value is comparable across choices of ``fft_sizes``.

    ``loss(pred (B, n), target (B, n)) -> scalar``; :meth:`terms` gives the per-scale parts under metric-
    friendly names (``"<prefix>/mag_2048"``, ``"<prefix>/logmag_2048"``, ..., ``"<prefix>/total"``) for
    logging.
    """

    def __init__(self, fft_sizes: Sequence[int] = DEFAULT_FFT_SIZES, overlap: float = 0.75,
                 mag_weight: float = 1.0, logmag_weight: float = 1.0, *, eps: float = LOG_EPS,
                 prefix: str = "spectral"):
        super().__init__()
        sizes = tuple(int(n) for n in fft_sizes)
        if not sizes or any(n < 2 for n in sizes):
            raise ValueError(f"MultiScaleSpectralLoss: fft_sizes ({fft_sizes!r}) must be integers >= 2")
        if mag_weight < 0 or logmag_weight < 0 or mag_weight + logmag_weight == 0:
            raise ValueError("MultiScaleSpectralLoss: weights must be >= 0 and not both 0")
        stft_hop(sizes[0], overlap)  # validates overlap
        self.fft_sizes = sizes
        self.overlap = float(overlap)
        self.mag_weight = float(mag_weight)
        self.logmag_weight = float(logmag_weight)
        self.eps = float(eps)
        self.prefix = prefix

    def terms(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Unweighted per-scale L1 terms and the weighted ``total`` (what :meth:`forward` returns)."""
        if pred.shape != target.shape:
            raise ValueError(f"MultiScaleSpectralLoss: pred {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        out: dict[str, Tensor] = {}
        total = pred.new_zeros(())
        for n_fft in self.fft_sizes:
            mag_p = stft_magnitude(pred, n_fft, self.overlap)
            mag_t = stft_magnitude(target, n_fft, self.overlap)
            scale = pred.new_zeros(())
            if self.mag_weight:
                out[f"{self.prefix}/mag_{n_fft}"] = term = torch.mean(torch.abs(mag_p - mag_t))
                scale = scale + self.mag_weight * term
            if self.logmag_weight:
                out[f"{self.prefix}/logmag_{n_fft}"] = term = torch.mean(
                    torch.abs(torch.log(mag_p + self.eps) - torch.log(mag_t + self.eps)))
                scale = scale + self.logmag_weight * term
            total = total + scale
        out[f"{self.prefix}/total"] = total / len(self.fft_sizes)
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.terms(pred, target)[f"{self.prefix}/total"]
