"""What the CPU pin (:mod:`timbrelab.cpu`) costs in training speed.

Each measurement is a fresh subprocess (the pin acts at process start, before torch loads) that does a fixed
amount of real training work after a short untimed warm-up:

* DDSP: ``--ddsp-steps`` steps (default 20) of the ``demo`` preset (:class:`timbrelab.models.ddsp.DDSP`) at
  batch 8 x 2 s (the demo pipeline's training shape) on seeded random audio: forward, the default
  :class:`timbrelab.dsp.spectral.MultiScaleSpectralLoss`, backward, Adam;
* classifier: ``--classifier-steps`` steps (default 20) of :class:`timbrelab.evaluation.classifier.TimbreClassifier`
  at the demo's shape (batch 64 patches of 156 CQT bins x 32 frames): forward, cross-entropy, backward, AdamW.

Configurations (alternating, ``--repeats`` rounds, so drift in the machine's load hits each alike):

* ``off``: ``TIMBRELAB_CPU_PIN=0`` and none of the pinned variables in the environment;
* ``pin``: the default (what every stage runs with);
* ``pin+<VAR>=<value>`` for each ``--extra VAR=value`` (default: ``MKL_CBWR=COMPATIBLE`` and ``MKL_CBWR=AUTO``,
  the MKL settings the pin does not use on this CPU, to show what they would cost).

Prints per configuration the minimum and median seconds of each part and of the total, the relative cost
against ``off`` (median and min), the code paths the child reported, and a checksum of the final weights
(equal checksums: the setting did not change the arithmetic on this machine).

Usage: .venv/bin/python benchmarks/cpu_pinning.py [--repeats 5] [--ddsp-steps 20] [--classifier-steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PINNED_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "NPY_DISABLE_CPU_FEATURES")


def child(ddsp_steps: int, classifier_steps: int) -> None:
    # timbrelab first (its import pins the CPU code paths), then torch: not isort's order.
    import timbrelab  # noqa: F401, I001
    import torch

    from timbrelab.cpu import fingerprint
    from timbrelab.dsp.spectral import MultiScaleSpectralLoss
    from timbrelab.evaluation.classifier import TimbreClassifier
    from timbrelab.models.ddsp import DDSP, PRESETS

    sr, batch, seconds = 16000, 8, 2.0
    cfg = PRESETS["demo"]
    n = round(seconds * sr)
    frames = n // cfg.hop
    g = torch.Generator().manual_seed(0)
    t = torch.arange(frames, dtype=torch.float32)[None] * cfg.hop / sr
    f0 = 65.0 * 2.0 ** (3.0 * torch.rand(batch, 1, generator=g)) * (1.0 + 0.01 * torch.sin(2 * torch.pi * 5.0 * t))
    loudness = -50.0 + 30.0 * torch.sin(torch.pi * t / seconds) + 2.0 * torch.randn(batch, frames, generator=g)
    target = 0.1 * torch.randn(batch, n, generator=g)
    torch.manual_seed(0)
    model = DDSP(cfg, {"loudness_db": {"mean": -33.0, "std": 12.0}}).train()
    loss_fn = MultiScaleSpectralLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def ddsp_step(i: int) -> None:
        audio = model(f0, loudness, n, generator=torch.Generator().manual_seed(i))
        loss = loss_fn(audio, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    patches = torch.randn(64, 156, 32, generator=g)
    labels = torch.arange(64) % 3
    torch.manual_seed(1)
    clf = TimbreClassifier(["cello", "source", "nsynth"], 156, 32).train()
    clf_opt = torch.optim.AdamW(clf.parameters(), lr=3e-3, weight_decay=1e-4)
    ce = torch.nn.CrossEntropyLoss()

    def clf_step(_: int) -> None:
        loss = ce(clf(patches), labels)
        clf_opt.zero_grad(set_to_none=True)
        loss.backward()
        clf_opt.step()

    times = {}
    for name, step, steps in (("ddsp", ddsp_step, ddsp_steps), ("classifier", clf_step, classifier_steps)):
        for i in range(2):                                   # warm-up (allocator, oneDNN primitive cache)
            step(-1 - i)
        started = time.perf_counter()
        for i in range(steps):
            step(i)
        times[name] = time.perf_counter() - started
    checksum = float(sum(p.double().sum() for p in [*model.parameters(), *clf.parameters()]))
    fp = fingerprint()
    print(json.dumps({"times": times, "checksum": checksum.hex(),
                      "paths": {k: fp[k] for k in ("torch_capability", "onednn_max_cpu_isa", "mkl_cbwr", "num_threads")},
                      "pin": fp["pin"]["state"]}))


def environment(config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_VARS and k != "TIMBRELAB_CPU_PIN"}
    if config == "off":
        env["TIMBRELAB_CPU_PIN"] = "0"
    elif config.startswith("pin+"):
        var, _, value = config[4:].partition("=")
        env[var] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ddsp-steps", type=int, default=20)
    parser.add_argument("--classifier-steps", type=int, default=20)
    parser.add_argument("--extra", action="append", metavar="VAR=value",
                        help="another configuration: the pin plus this variable (repeatable); "
                             "default MKL_CBWR=COMPATIBLE and MKL_CBWR=AUTO")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.ddsp_steps, args.classifier_steps)
        return
    extras = args.extra if args.extra is not None else ["MKL_CBWR=COMPATIBLE", "MKL_CBWR=AUTO"]
    configs = ["off", "pin", *(f"pin+{e}" for e in extras)]
    from timbrelab.cpu import cpuinfo

    info = cpuinfo()
    print(f"machine: {info['model_name']} ({info['vendor']}, family {info['family']} model {info['model']}), "
          f"{os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.2f}")
    print(f"work per run: {args.ddsp_steps} DDSP demo steps at batch 8 x 2 s + {args.classifier_steps} classifier "
          f"steps at batch 64; {args.repeats} rounds, configurations alternating: {', '.join(configs)}", flush=True)
    results: dict[str, list[dict]] = {c: [] for c in configs}
    command = [sys.executable, os.path.abspath(__file__), "--child", "--ddsp-steps", str(args.ddsp_steps),
               "--classifier-steps", str(args.classifier_steps)]
    for round_ in range(args.repeats):
        order = configs if round_ % 2 == 0 else configs[::-1]
        for config in order:
            done = subprocess.run(command, env=environment(config), capture_output=True, text=True, check=True)
            results[config].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"round {round_ + 1}/{args.repeats}: " + ", ".join(
            f"{c} {sum(results[c][-1]['times'].values()):.2f} s" for c in configs), flush=True)

    def stats(config: str, part: str) -> tuple[float, float]:
        values = [sum(r["times"].values()) if part == "total" else r["times"][part] for r in results[config]]
        return min(values), statistics.median(values)

    print(f"\n{'configuration':<26} {'part':<11} {'min s':>7} {'median s':>9} {'cost (median)':>14} {'cost (min)':>11}")
    for config in configs:
        for part in ("ddsp", "classifier", "total"):
            lo, med = stats(config, part)
            base_lo, base_med = stats("off", part)
            print(f"{config:<26} {part:<11} {lo:>7.3f} {med:>9.3f} {100 * (med / base_med - 1):>+13.1f}% "
                  f"{100 * (lo / base_lo - 1):>+10.1f}%")
    print("\ncode paths and results per configuration (checksum of the final weights, as a float hex):")
    for config in configs:
        first = results[config][0]
        sums = {r["checksum"] for r in results[config]}
        print(f"{config:<26} pin={first['pin']:<9} {json.dumps(first['paths'])} checksum "
              f"{first['checksum'] if len(sums) == 1 else 'varies across runs!'}")


if __name__ == "__main__":
    main()
