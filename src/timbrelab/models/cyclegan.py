"""CycleGAN on log-CQT "images" (TimbreTron's timbre translation), in pure torch.

Shapes: ``B`` batch, ``F`` CQT bins (``n_bins``), ``T`` frames. A generator maps a normalised log-CQT
``(B, 1, F, T)`` of one domain to ``(B, 1, F, T)`` of the other; a discriminator scores ``(B, 1, F, T)`` with a
map ``(B, 1, F', T')`` (PatchGAN) or ``(B, 1, 1, T')`` (``"full"``: every score sees all F bins).

Design, written from scratch after the papers (TimbreTron, CycleGAN-VC2, MaskCycleGAN-VC):

* Generator ``"2d"``: a ResNet — 7x7 conv, ``n_downsample`` stride-2 convs, ``n_residual`` residual blocks,
  as many upsamplings back, a 7x7 conv to one channel, added to the input (a global skip: the notes are
  kept and the network learns what to add and remove). Upsampling is nearest-neighbour + 3x3 conv (TimbreTron:
  fewer checkerboard artefacts on CQTs) or a transposed conv (``upsample="transposed"``).
  ``"212d"`` (CycleGAN-VC2): the residual blocks are 1-D convolutions over time with the frequency rows folded
  into channels (2-D down, 1-D middle, 2-D up).
* Normalisation is per frame (:class:`FrameNorm`: statistics over channels and bins of each time column), never
  over time, so the generator is fully convolutional over time: a long recording translated in overlapping
  chunks equals the whole translation (:func:`translate_chunked`). Any ``T`` in, the same ``T`` out (inputs are
  padded to a multiple of ``2 ** n_downsample`` frames and cropped back).
* ``mask_input`` (MaskCycleGAN-VC's filling in frames): the generator also takes a mask channel (1 = frame kept);
  training zeroes random runs of frames and asks the generator to fill them; inference passes all ones.
* Discriminator: ``disc_layers`` stride-2 4x4 convs with LeakyReLU and no normalisation (so WGAN-GP's
  per-sample gradient penalty is well defined), then a head that either sees the whole remaining frequency
  range (``"full"``, TimbreTron) or a 3x3 patch (``"patch"``).

Presets (:data:`PRESETS`): ``tiny`` for tests, ``demo`` for the default CPU pipeline, ``full`` the ResNet
CycleGAN size (64 channels, 9 residual blocks) for a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GENERATORS = ("2d", "212d")
UPSAMPLES = ("nearest", "transposed")
DISCRIMINATORS = ("full", "patch")


@dataclass(frozen=True)
class CycleGANConfig:
    """Sizes and TimbreTron's architecture switches (see the module doc)."""

    n_bins: int = 156
    channels: int = 32               # generator's first conv; doubled at every downsampling
    n_downsample: int = 2
    n_residual: int = 4
    generator: str = "2d"            # "2d" | "212d"
    upsample: str = "nearest"        # "nearest" (+ conv) | "transposed"
    mask_input: bool = False         # filling in frames: a mask channel beside the CQT
    disc_channels: int = 32
    disc_layers: int = 3
    discriminator: str = "full"      # "full" (every score sees all bins) | "patch"

    def __post_init__(self) -> None:
        for name in ("n_bins", "channels", "n_downsample", "n_residual", "disc_channels", "disc_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "n_downsample" else 1):
                raise ValueError(f"CycleGANConfig.{name} ({value!r}) must be a positive integer")
        for name, allowed in (("generator", GENERATORS), ("upsample", UPSAMPLES), ("discriminator", DISCRIMINATORS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"CycleGANConfig.{name} ({getattr(self, name)!r}) must be one of {list(allowed)}")
        if self.n_bins < 2 ** self.disc_layers:
            raise ValueError(f"CycleGANConfig: n_bins={self.n_bins} is too few for {self.disc_layers} "
                             f"discriminator layers (each halves the bins)")

    def replace(self, **changes: Any) -> CycleGANConfig:
        return replace(self, **changes)

    @property
    def frame_multiple(self) -> int:
        """Frames are padded to a multiple of this inside the generator."""
        return 2 ** self.n_downsample


PRESETS: dict[str, CycleGANConfig] = {
    "tiny": CycleGANConfig(channels=8, n_downsample=2, n_residual=1, disc_channels=8, disc_layers=2),
    "demo": CycleGANConfig(channels=16, n_downsample=2, n_residual=3, disc_channels=16, disc_layers=3),
    "full": CycleGANConfig(channels=64, n_downsample=2, n_residual=9, disc_channels=64, disc_layers=4),
}


class FrameNorm(nn.Module):
    """Normalise every time column over channels and bins: ``(B, C, F, T)`` or ``(B, C, T)``, with a learnt
    per-channel scale and shift. Nothing is pooled over time, so a frame's output never depends on how many
    frames came with it."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dims = (1, 2) if x.dim() == 4 else (1,)
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, unbiased=False)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def _conv_block(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - stride + 1) // 2),
                         FrameNorm(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """``x + conv-norm-relu-conv-norm(x)``, 2-D (3x3) or 1-D (3) over ``(B, C, [F,] T)``."""

    def __init__(self, channels: int, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.body = nn.Sequential(conv(channels, channels, 3, padding=1), FrameNorm(channels), nn.ReLU(inplace=True),
                                  conv(channels, channels, 3, padding=1), FrameNorm(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Double bins and frames: nearest-neighbour + 3x3 conv, or a 4x4 stride-2 transposed conv."""

    def __init__(self, c_in: int, c_out: int, mode: str):
        super().__init__()
        self.mode = mode
        self.conv = (nn.Conv2d(c_in, c_out, 3, padding=1) if mode == "nearest"
                     else nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
        self.post = nn.Sequential(FrameNorm(c_out), nn.ReLU(inplace=True))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if self.mode == "nearest":
            x = F.interpolate(x, size=size, mode="nearest")
            return self.post(self.conv(x))
        return self.post(self.conv(x)[..., : size[0], : size[1]])


class Generator(nn.Module):
    """Normalised log-CQT of one domain ``(B, 1, F, T)`` (+ mask ``(B, 1, 1, T)`` or ``(B, 1, F, T)`` when
    ``mask_input``) -> the other domain's ``(B, 1, F, T)``; any ``T >= 1``."""

    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.stem = _conv_block(2 if cfg.mask_input else 1, c, 7)
        self.down = nn.ModuleList()
        for i in range(cfg.n_downsample):
            self.down.append(_conv_block(c * 2 ** i, c * 2 ** (i + 1), 4, stride=2))
        mid = c * 2 ** cfg.n_downsample
        self.mid_bins = self._bins_after_down(cfg.n_bins)
        if cfg.generator == "2d":
            self.middle = nn.Sequential(*(ResidualBlock(mid, 2) for _ in range(cfg.n_residual)))
        else:   # 2-1-2D: fold the bins into channels, 1-D residual blocks over time, unfold
            folded = mid * self.mid_bins
            self.fold = nn.Sequential(nn.Conv1d(folded, mid, 1), FrameNorm(mid))
            self.middle = nn.Sequential(*(ResidualBlock(mid, 1) for _ in range(cfg.n_residual)))
            self.unfold = nn.Conv1d(mid, folded, 1)
        self.up = nn.ModuleList()
        for i in reversed(range(cfg.n_downsample)):
            self.up.append(Upsample(c * 2 ** (i + 1), c * 2 ** i, cfg.upsample))
        self.head = nn.Conv2d(c, 1, 7, padding=3)

    def _bins_after_down(self, bins: int) -> int:
        for _ in range(self.cfg.n_downsample):
            bins = (bins + 2 - 4) // 2 + 1
        return bins

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        _, _, n_bins, n_frames = x.shape
        if n_bins != self.cfg.n_bins:
            raise ValueError(f"generator expects {self.cfg.n_bins} CQT bins, got {n_bins}")
        multiple = self.cfg.frame_multiple
        padded = math.ceil(n_frames / multiple) * multiple
        inp = x
        if self.cfg.mask_input:
            mask = torch.ones_like(x) if mask is None else mask.expand_as(x)
            inp = torch.cat([x * mask, mask], dim=1)
        if padded != n_frames:
            inp = F.pad(inp, (0, padded - n_frames, 0, 0), mode="replicate")
        h = self.stem(inp)
        sizes = []
        for layer in self.down:
            sizes.append(h.shape[-2:])
            h = layer(h)
        if self.cfg.generator == "2d":
            h = self.middle(h)
        else:
            b, ch, fb, t = h.shape
            h = self.fold(h.reshape(b, ch * fb, t))
            h = self.unfold(self.middle(h)).reshape(b, ch, fb, t)
        for layer, size in zip(self.up, reversed(sizes)):
            h = layer(h, tuple(size))
        return x + self.head(h)[..., :n_frames]

    def context_frames(self) -> int:
        """Frames on each side that can reach one output frame (a safe upper bound), rounded up to a multiple
        of :attr:`CycleGANConfig.frame_multiple`: what a chunk needs around it to equal the whole translation."""
        jump, radius = 1, 3                              # the 7x7 stem
        for _ in range(self.cfg.n_downsample):           # 4x4 stride 2
            radius += 2 * jump
            jump *= 2
        radius += self.cfg.n_residual * 2 * jump         # two size-3 convs per residual block (2-D or 1-D)
        for _ in range(self.cfg.n_downsample):           # upsample: replicate (or transposed 4x4) + 3x3
            radius += 2 * jump
            jump //= 2
        radius += 3 + jump * 2                           # head 7x7; padding of the last partial group
        m = self.cfg.frame_multiple
        return math.ceil(radius / m) * m


class Discriminator(nn.Module):
    """Normalised log-CQT ``(B, 1, F, T)`` -> scores ``(B, 1, F', T')`` (patch) or ``(B, 1, 1, T')`` (full);
    needs ``T >= 2 ** disc_layers``."""

    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, bins = 1, cfg.n_bins
        for i in range(cfg.disc_layers):
            c_out = cfg.disc_channels * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in, bins = c_out, (bins + 2 - 4) // 2 + 1
        self.body = nn.Sequential(*layers)
        self.full = cfg.discriminator == "full"
        # "full": one kernel spans every remaining bin, so each score judges a whole spectral column range.
        # No bias: a WGAN critic's loss is blind to it (it cancels between real and fake), so it would never learn.
        self.head = (nn.Conv2d(c_in, 1, (bins, 3), padding=(0, 1), bias=False) if self.full
                     else nn.Conv2d(c_in, 1, 3, padding=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class CycleGAN(nn.Module):
    """The two generators that ``model.pt`` holds: ``a_to_b`` and ``b_to_a``, with the domains' names and CQT
    normalisers as buffers of the payload's stats (the discriminators are training-only)."""

    def __init__(self, cfg: CycleGANConfig, stats: Mapping[str, Any] | None = None):
        super().__init__()
        self.cfg = cfg
        self.a_to_b = Generator(cfg)
        self.b_to_a = Generator(cfg)
        self.stats = dict(stats or {})

    def generator(self, direction: str) -> Generator:
        if direction not in ("a_to_b", "b_to_a"):
            raise ValueError(f"direction must be 'a_to_b' or 'b_to_a', got {direction!r}")
        return self.a_to_b if direction == "a_to_b" else self.b_to_a

    def forward(self, x: Tensor) -> Tensor:
        return self.a_to_b(x)


def build(model_config: Mapping[str, Any], stats: Mapping[str, Any] | None) -> CycleGAN:
    return CycleGAN(CycleGANConfig(**model_config), stats)


@torch.no_grad()
def translate_chunked(generator: Generator, cqt: Tensor, *, chunk_frames: int = 512,
                      crossfade_frames: int = 16) -> Tensor:
    """Translate ``(1, 1, F, T)`` of any length in chunks of ``chunk_frames`` with the generator's
    :meth:`~Generator.context_frames` of context on each side and a linear cross-fade of ``crossfade_frames``
    between neighbours, so memory stays bounded; equal to ``generator(cqt)`` up to float rounding (the context
    covers the receptive field), with no seam at the chunk boundaries."""
    n_frames = cqt.shape[-1]
    multiple = generator.cfg.frame_multiple
    context = generator.context_frames()
    chunk = max(multiple, chunk_frames // multiple * multiple)
    if n_frames <= chunk + 2 * context:
        return generator(cqt)
    fade = min(crossfade_frames, chunk // 2)
    out = torch.zeros_like(cqt)
    weight = torch.zeros(n_frames, dtype=cqt.dtype)
    start = 0
    while start < n_frames:
        stop = min(n_frames, start + chunk)
        lo, hi = max(0, start - context - fade), min(n_frames, stop + context + fade)
        lo -= lo % multiple                               # strided layers see the same phase as the whole
        piece = generator(cqt[..., lo:hi])
        keep_lo, keep_hi = max(0, start - fade), min(n_frames, stop + fade)
        ramp = torch.ones(keep_hi - keep_lo, dtype=cqt.dtype)
        if keep_lo > 0:
            ramp[: 2 * fade] = torch.linspace(0.0, 1.0, 2 * fade + 2, dtype=cqt.dtype)[1:-1]
        if keep_hi < n_frames:
            ramp[-2 * fade:] = torch.minimum(ramp[-2 * fade:],
                                             torch.linspace(1.0, 0.0, 2 * fade + 2, dtype=cqt.dtype)[1:-1])
        out[..., keep_lo:keep_hi] += piece[..., keep_lo - lo: keep_hi - lo] * ramp
        weight[keep_lo:keep_hi] += ramp
        start = stop
    return out / weight
