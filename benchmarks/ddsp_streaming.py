"""Benchmark of the streaming DDSP (:mod:`timbrelab.models.ddsp_stream`): compute per block at one thread.

For each configuration, eager and TorchScript, with and without reverb, and a few block sizes: the wall time of
each ``forward`` call (the model draws its own noise, as live) over a stream of note-like controls, after a
warm-up; printed as p50 / p99 in ms and in % of the block's duration, and the mean compute per second of audio.

* Gate (issue #4): p99 under 25 % of the block's duration on one core (``torch.set_num_threads(1)``).
* Goal: compute per second of audio at least 3x below acids-ircam/ddsp_pytorch's TorchScript streaming path
  at its reference configuration, about 1.5 ms per 10 ms block on this machine (DESIGN.md) = 0.15 s per s.

Configurations (random weights: speed only):

* ``demo``: the project's default model (hidden 256, 60 harmonics, 65 bands, 0.5 s reverb), hop 64;
* ``reference``: ddsp_pytorch's sizes (16 kHz, hidden 512, GRU 512, 3-layer MLPs, 100 harmonics, 65 noise
  bands, 1 s reverb) at the project's hop 64 (250 frames/s);
* ``reference@160``: the same at ddsp_pytorch's own frame rate (hop 160, 100 frames/s), block 160 = its 10 ms.

Each frame costs a GRU step whose 512 x 1536 hidden matrix (3 MB) does not fit a core's 2 MB L2: that matvec,
~0.16 ms here, is the floor per frame; larger blocks amortise every other weight read (MLPs, GRU input side).
The machine may be shared: read single runs as noisy, and compare runs made back to back.

Usage: .venv/bin/python benchmarks/ddsp_streaming.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch

from timbrelab.models.ddsp import DDSP, PRESETS, DDSPModelConfig
from timbrelab.models.ddsp_stream import StreamingDDSP

PEER_SECONDS_PER_SECOND = 0.15     # ddsp_pytorch TorchScript streaming: ~1.5 ms per 10 ms block (DESIGN.md)
GATE_FRACTION = 0.25
REFERENCE = PRESETS["full"]        # hidden 512, 100 harmonics, 65 bands, mlp_layers 3, 1 s reverb

CONFIGS: dict[str, tuple[DDSPModelConfig, list[int]]] = {
    "demo": (PRESETS["demo"], [64, 256, 512, 2048]),
    "reference": (REFERENCE, [64, 256, 512, 2048]),
    "reference@160": (REFERENCE.replace(hop=160), [160, 640, 1280, 2560]),
}


def note_controls(frames: int, hop: int, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, frames) f0 and loudness: 220 Hz with 5 Hz vibrato, a slow loudness swell (seeded, deterministic)."""
    t = torch.arange(frames, dtype=torch.float64) * hop / sample_rate
    f0 = 220.0 * 2.0 ** (0.5 / 12 * torch.sin(2 * math.pi * 5.0 * t))
    loudness = -35.0 + 10.0 * torch.sin(2 * math.pi * 0.5 * t)
    return f0.float()[None], loudness.float()[None]


def time_blocks(stream: torch.nn.Module, block: int, hop: int, sample_rate: int, seconds: float) -> np.ndarray:
    """Seconds per forward call over ``seconds`` of audio (after 20 warm-up blocks)."""
    frames = block // hop
    count = max(50, round(seconds * sample_rate / block))
    f0, loudness = note_controls((count + 20) * frames, hop, sample_rate)
    stream.reset()
    times = np.empty(count)
    with torch.inference_mode():
        for i in range(count + 20):
            sl = slice(i * frames, (i + 1) * frames)
            start = time.perf_counter()
            stream(f0[:, sl], loudness[:, sl])
            if i >= 20:
                times[i - 20] = time.perf_counter() - start
    return times


def run(name: str, cfg: DDSPModelConfig, blocks: list[int], seconds: float) -> list[str]:
    rows = []
    for reverb in (True, False):
        torch.manual_seed(0)
        model = DDSP(cfg if reverb else cfg.replace(reverb_seconds=0.0)).eval()
        for mode in ("eager", "script"):
            stream = StreamingDDSP(model)
            if mode == "script":
                stream = torch.jit.script(stream)
            for block in blocks:
                times = time_blocks(stream, block, cfg.hop, cfg.sample_rate, seconds)
                duration = block / cfg.sample_rate
                p50, p99 = np.percentile(times, 50), np.percentile(times, 99)
                per_second = float(times.mean()) / duration
                gate = "ok" if p99 < GATE_FRACTION * duration else "MISS"
                rows.append(f"| {name} | {'yes' if reverb else 'no'} | {mode} | {block} ({1000 * duration:.0f} ms) "
                            f"| {1000 * p50:.3f} ({100 * p50 / duration:.1f} %) | {1000 * p99:.3f} "
                            f"({100 * p99 / duration:.1f} %) {gate} | {per_second:.3f} "
                            f"| {PEER_SECONDS_PER_SECOND / per_second:.1f}x |")
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a sanity run: 2 s of audio per case, fewer cases")
    parser.add_argument("--seconds", type=float, default=None, help="audio streamed per case (default 20 s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seconds = args.seconds or (2.0 if args.quick else 20.0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, {seconds:g} s of "
          f"audio per case; gate p99 < {100 * GATE_FRACTION:.0f} % of the block; peer {PEER_SECONDS_PER_SECOND} s/s\n")
    print("| config | reverb | mode | block (samples) | p50 ms (% block) | p99 ms (% block) | compute s per s "
          "| vs ddsp_pytorch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (cfg, blocks) in CONFIGS.items():
        if args.quick:
            blocks = [blocks[0], blocks[-1]]
        run(name, cfg, blocks, seconds)


if __name__ == "__main__":
    main()
