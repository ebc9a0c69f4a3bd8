"""Benchmark of the DDSP model (:mod:`timbrelab.models.ddsp`): offline rendering and training-step speed.

Prints plain text, median of several timed repetitions after warm-up (other jobs may share the cores, so
read the figures as noisy and compare runs made back to back).

1. Offline render (decoder + synth [+ reverb], ``eval()``, ``torch.no_grad()``) in x real time, at batch 1 x 4 s
   and batch 16 x 4 s, for the reference configuration, the ``demo`` and the ``full`` preset, each with and
   without its reverb.
2. Training step (forward, multi-scale spectral loss, backward, Adam step) in seconds:

   * like for like with acids-ircam/ddsp_pytorch: reference configuration, batch 16 x 4 s, its loss FFT sizes
     (4096 .. 128, 75 % overlap);
   * the project's training shape: ``demo`` and ``full`` presets, batch 8 x 2 s, the default loss (2048 .. 64),
     as steps/s.

The reference configuration is ddsp_pytorch's own (16 kHz, hidden 512, 100 harmonics, 65 noise bands, 1 s
learned reverb, 3-layer MLPs and one GRU) -- the same sizes as the ``full`` preset. Its figures measured on
this machine (2 threads, DESIGN.md): offline render of 4 s about 36x real time at batch 1, a training step at
batch 16 x 4 s about 4.6 s. Frame rates differ: ddsp_pytorch's decoder runs at 100 Hz (block 160), ours at
250 Hz (hop 64), so our decoder does 2.5x the frames per second of audio; the comparison is per second of
audio (same audio length, same batch).

Inputs are seeded and note-like: per item a held pitch with 5 Hz vibrato drawn between 65 and 520 Hz, item 0
always at 65 Hz (the synth skips harmonics that are above Nyquist everywhere in a chunk, so a low note is its
worst case: all 100 harmonics are rendered), loudness a slow swell; frames follow the dataset's crop convention
``F = n // hop``. Weights are random (speed only).

Usage: .venv/bin/python benchmarks/ddsp.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from timbrelab.dsp.spectral import DEFAULT_FFT_SIZES, MultiScaleSpectralLoss
from timbrelab.models.ddsp import DDSP, PRESETS, DDSPModelConfig

SR = 16000
DDSP_PYTORCH_FFT_SIZES = (4096, 2048, 1024, 512, 256, 128)   # its config.yaml `train.scales`, overlap 0.75
DDSP_PYTORCH_RENDER_X_RT = 36.0                               # DESIGN.md, measured here at batch 1 x 4 s
DDSP_PYTORCH_STEP_S = 4.6                                     # DESIGN.md, batch 16 x 4 s
REFERENCE = DDSPModelConfig(sample_rate=SR, hop=64, hidden=512, n_harmonics=100, n_noise_bands=65,
                            mlp_layers=3, gru_layers=1, reverb_seconds=1.0)
STATS = {"loudness_db": {"mean": -33.0, "std": 12.0}}


# ---------------------------------------------------------------------------------------------- helpers

def machine_info(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch threads {threads} (interop {torch.get_num_interop_threads()}), "
            f"1-min load average {os.getloadavg()[0]:.2f}")


def median_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> tuple[float, float, float]:
    """(median, min, max) wall seconds of ``fn()`` over ``reps`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), max(times)


def note_inputs(batch: int, seconds: float, hop: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(f0 (B, F) Hz, loudness (B, F) dB, n_samples): a vibrato note and a loudness swell per item."""
    n = round(seconds * SR)
    frames = n // hop
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float32)[None] * hop / SR
    base = 65.0 * 2.0 ** (3.0 * torch.rand(batch, 1, generator=g))               # 65 .. 520 Hz
    base[0] = 65.0             # the worst case: every one of 100 harmonics of item 0 lies below Nyquist
    f0 = base * (1.0 + 0.01 * torch.sin(2 * math.pi * 5.0 * t))
    loudness = -50.0 + 30.0 * torch.sin(math.pi * t / seconds) + 2.0 * torch.randn(batch, frames, generator=g)
    return f0, loudness, n


def build(cfg: DDSPModelConfig, reverb: bool = True) -> DDSP:
    torch.manual_seed(0)
    return DDSP(cfg if reverb else cfg.replace(reverb_seconds=0.0), STATS)


# ---------------------------------------------------------------------------------------------- render

def render_x_rt(cfg: DDSPModelConfig, reverb: bool, batch: int, seconds: float, reps: int) -> tuple[float, float]:
    """(x real time of the median, median seconds) for one offline render of ``batch`` x ``seconds``."""
    model = build(cfg, reverb).eval()
    f0, loudness, n = note_inputs(batch, seconds, cfg.hop)

    def run():
        with torch.no_grad():
            model(f0, loudness, n, generator=torch.Generator().manual_seed(1))

    med, _, _ = median_time(run, reps)
    return batch * seconds / med, med


def render_section(configs: Sequence[tuple[str, DDSPModelConfig]], batches: Sequence[int], reps: int) -> None:
    print("\n## 1. Offline render (decoder + synth [+ reverb], eval, no_grad), 4 s per item")
    print("x real time = audio seconds rendered per wall second (batch x 4 s / median wall time)")
    print(f"{'config':<34} {'reverb':<7} {'batch':>5} {'median s':>9} {'x real time':>12} {'vs ddsp_pytorch':>16}")
    for name, cfg in configs:
        for reverb in (True, False):
            for batch in batches:
                x_rt, med = render_x_rt(cfg, reverb, batch, 4.0, reps)
                versus = f"{x_rt / DDSP_PYTORCH_RENDER_X_RT:.2f}x" if name.startswith("reference") and batch == 1 \
                    and reverb else ""
                print(f"{name:<34} {'yes' if reverb else 'no':<7} {batch:>5} {med:>9.4f} {x_rt:>12.1f} {versus:>16}",
                      flush=True)
    print(f"ddsp_pytorch at its config, batch 1 x 4 s (DESIGN.md): {DDSP_PYTORCH_RENDER_X_RT:.0f}x real time; "
          f"goal >= 3x that (>= {3 * DDSP_PYTORCH_RENDER_X_RT:.0f}x, over 100x)")


# ---------------------------------------------------------------------------------------------- training

def train_step_time(cfg: DDSPModelConfig, batch: int, seconds: float, fft_sizes: Sequence[int],
                    reps: int) -> tuple[float, float, float]:
    """(median, min, max) seconds of one step: forward, multi-scale spectral loss, backward, Adam."""
    model = build(cfg).train()
    loss_fn = MultiScaleSpectralLoss(fft_sizes=fft_sizes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    f0, loudness, n = note_inputs(batch, seconds, cfg.hop)
    target = torch.randn(batch, n, generator=torch.Generator().manual_seed(2)) * 0.1
    step = [0]

    def run():
        step[0] += 1
        pred = model(f0, loudness, n, generator=torch.Generator().manual_seed(step[0]))
        loss = loss_fn(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_time(run, reps)


def training_section(reps: int, quick: bool) -> None:
    print("\n## 2. Training step (forward, multi-scale spectral loss, backward, Adam)")
    for label, cfg in (("reference config", REFERENCE), ("reference config at hop 160", REFERENCE.replace(hop=160))):
        med, lo, hi = train_step_time(cfg, 16, 4.0, DDSP_PYTORCH_FFT_SIZES, reps)
        print(f"{label}, batch 16 x 4 s, FFT sizes {list(DDSP_PYTORCH_FFT_SIZES)} (75% overlap): "
              f"median {med:.3f} s (min {lo:.3f}, max {hi:.3f}) -> {DDSP_PYTORCH_STEP_S / med:.2f}x ddsp_pytorch's "
              f"{DDSP_PYTORCH_STEP_S} s (goal <= {DDSP_PYTORCH_STEP_S / 1.5:.2f} s, 1.5x faster)", flush=True)
    print(f"project training shape: batch 8 x 2 s, default loss FFT sizes {list(DEFAULT_FFT_SIZES)}")
    for name in ("demo", "full") if not quick else ("demo",):
        med, lo, hi = train_step_time(PRESETS[name], 8, 2.0, DEFAULT_FFT_SIZES, reps)
        print(f"  {name:<5} preset: median {med:.3f} s/step (min {lo:.3f}, max {hi:.3f}) -> {1 / med:.2f} steps/s",
              flush=True)


# ---------------------------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and configurations")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--only", choices=("render", "train"), help="run one section")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("# DDSP benchmark (noisy if the machine is shared: compare runs made back to back)")
    print(machine_info(torch.get_num_threads()))
    print(f"reference config = ddsp_pytorch's: {REFERENCE} (same sizes as the full preset); "
          f"our frames 250 Hz (hop 64) vs its 100 Hz (block 160): compared per second of audio")
    reps = 3 if args.quick else 7
    if args.only in (None, "render"):
        # Also at ddsp_pytorch's own frame rate (100 Hz): the same model sizes with 2.5x fewer GRU steps per second.
        configs = [("reference", REFERENCE), ("reference, hop 160", REFERENCE.replace(hop=160)),
                   ("demo", PRESETS["demo"])]
        if PRESETS["full"] == REFERENCE:
            print("full preset == reference config: its render figures are the reference rows")
        else:
            configs.append(("full", PRESETS["full"]))
        render_section(configs, (1,) if args.quick else (1, 16), reps)
    if args.only in (None, "train"):
        training_section(3 if args.quick else 5, args.quick)
    print(f"\n(1-minute load average at the end: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
