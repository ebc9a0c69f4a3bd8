"""Benchmark of the CycleGAN on log-CQT (:mod:`timbrelab.models.cyclegan`): training steps/s and translation speed.

Prints plain text, median of timed repetitions after a warm-up (other jobs may share the cores: compare runs
made back to back).

1. Training step (both generators: A->B, B->A, the two cycles and the identity terms, WGAN-GP and LSGAN
   discriminator steps with the pool, Adam, clipping) of the real LightningModule's ``training_step`` logic, at
   the ``demo`` preset (batch 1 x 64 frames, the default pipeline's shape) and the ``full`` preset (batch 1 x 64
   frames), as steps/s.
2. Translation of a 10 s log-CQT (156 bins, 626 frames at hop 256 / 16 kHz) in x real time: one generator,
   ``eval()``, ``no_grad``, whole and in 512-frame chunks (:func:`translate_chunked`), ``tiny``, ``demo`` and
   ``full`` presets, 2-D and 2-1-2D generators. Weights are random (speed only).

Usage: .venv/bin/python benchmarks/cyclegan.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from timbrelab.models.cyclegan import PRESETS, Generator, translate_chunked
from timbrelab.training.cyclegan import CycleGANLightningModule
from timbrelab.training.cyclegan_config import CycleGANTrainConfig

SR, HOP, BINS = 16000, 256, 156


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(preset: str, adversarial: str, frames: int = 64):
    """A closure running one generator + one discriminator optimiser step, as training_step does them."""
    cfg = CycleGANTrainConfig(model={"preset": preset}, loss={"adversarial": adversarial}, crop_frames=frames)
    module = CycleGANLightningModule(PRESETS[preset], cfg, None)
    opt_g = torch.optim.Adam(module.model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([p for d in module.discriminators() for p in d.parameters()], lr=1e-4, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 1, BINS, frames, generator=gen), torch.randn(1, 1, BINS, frames, generator=gen)

    def step() -> None:
        for d in module.discriminators():
            d.requires_grad_(False)
        losses = module.generator_losses(a, b, 0)
        opt_g.zero_grad()
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), 10.0)
        opt_g.step()
        for d in module.discriminators():
            d.requires_grad_(True)
        d_loss = module.discriminator_loss(a, b, {k: v.detach() for k, v in losses.items()})
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()

    return step, sum(p.numel() for p in module.model.a_to_b.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no full-size training step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    print(f"# CycleGAN benchmark  torch {torch.__version__}  {platform.processor() or platform.machine()}  "
          f"threads {torch.get_num_threads()}  cpus {os.cpu_count()}")

    print("\n## training step (batch 1 x 64 frames, both directions, G + D optimiser steps)")
    for preset in (("demo",) if args.quick else ("demo", "full")):
        for adversarial in ("wgan_gp", "lsgan"):
            step, params = train_step(preset, adversarial)
            seconds = timed(step, repeats if preset == "demo" else 2)
            print(f"{preset:5s} {adversarial:8s} generator {params / 1e6:5.2f} M params: {seconds:6.3f} s/step  "
                  f"{1 / seconds:6.2f} steps/s")

    print("\n## translation of 10 s (one generator, eval, no_grad), x real time")
    seconds_audio = 10.0
    frames = 1 + int(seconds_audio * SR) // HOP
    x = torch.randn(1, 1, BINS, frames, generator=torch.Generator().manual_seed(1))
    for preset in ("tiny", "demo", "full"):
        for kind in ("2d", "212d"):
            gen = Generator(PRESETS[preset].replace(generator=kind)).eval()
            with torch.no_grad():
                whole = timed(lambda: gen(x), repeats)
            chunked = timed(lambda: translate_chunked(gen, x, chunk_frames=512), repeats)
            params = sum(p.numel() for p in gen.parameters())
            print(f"{preset:5s} {kind:4s} {params / 1e6:6.2f} M params: whole {seconds_audio / whole:7.1f}x  "
                  f"chunked {seconds_audio / chunked:7.1f}x real time")


if __name__ == "__main__":
    main()
