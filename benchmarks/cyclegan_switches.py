"""What each of TimbreTron's CycleGAN choices does, measured: the TimbreTron setting against one switch flipped at a
time, several seeds each, on this repository's demo features (run `dvc repro features transfer_set
train_classifier` first), at a named step budget.

Settings (everything else as in params.yaml's train_cyclegan, demo preset):

* ``timbretron``: full-range discriminator, WGAN-GP, identity weight decaying to 0 over the budget;
* ``patch_d``: a PatchGAN discriminator instead of the full-range one;
* ``lsgan``: LSGAN instead of WGAN-GP;
* ``identity_const``: the identity weight kept constant instead of decaying.

Per run: the test-split profile Fréchet distance of A->B to real B (training's own criterion; lower is better), the
share of frames whose lowest strong CQT partial A->B keeps (``pitch_kept``) and,
with ``--evaluate``, the evaluation's acceptance and Fréchet distance on the transfer set (CycleGAN + Griffin-Lim,
the report's metrics from the transfers, no reconstructions; about 30 s per run). Printed: each run, then mean and standard deviation per setting.
Each run trains from scratch into a temporary folder (nothing in the repository changes).

Usage: .venv/bin/python benchmarks/cyclegan_switches.py [--steps 300] [--seeds 0 1 2] [--evaluate]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from timbrelab.config import load_stage_config
from timbrelab.paths import repo_root
from timbrelab.training.cyclegan import train
from timbrelab.training.cyclegan_config import CycleGANTrainConfig

SETTINGS = {
    "timbretron": {},
    "patch_d": {"model": {"discriminator": "patch"}},
    "lsgan": {"loss": {"adversarial": "lsgan"}},
    "identity_const": {"loss": {"identity_schedule": "constant"}},
}


def merged(base: dict, change: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in change.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def evaluate(model_path: Path, root: Path) -> dict[str, float]:
    from timbrelab.config import FeaturesConfig, validate
    from timbrelab.evaluation.classifier import load_classifier
    from timbrelab.evaluation.evaluate import evaluate_system
    from timbrelab.evaluation.systems.cyclegan import CycleGANParams, CycleGANSystem
    from timbrelab.evaluation.transfer_set import TransferSet
    from timbrelab.inference.loading import load_model
    from timbrelab.stages.evaluate import EvaluateConfig

    ts = TransferSet(root / "data/transfer_set")
    features = validate(dict(ts.features_config), FeaturesConfig, "transfer set features_config")
    classifier, _ = load_classifier(root / "models/classifier/model.pt")
    metrics_cfg = load_stage_config("evaluate", EvaluateConfig).metrics
    class TransfersOnly(CycleGANSystem):
        def reconstruct(self, audio, seed):
            return None   # the metrics compared here come from the transfers; reconstructions would double the time

    model, payload, _ = load_model("cyclegan", checkpoint=model_path)
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate_system("cyclegan", TransfersOnly(model, payload, CycleGANParams(), features), ts,
                                 features, classifier, metrics_cfg, Path(tmp), progress=False)
    return {key: result["metrics"][key]["value"] for key in ("acceptance", "frechet", "raw_pitch")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="step budget of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--evaluate", action="store_true", help="also the evaluation's metrics (about 30 s a run)")
    args = parser.parse_args()
    root = repo_root()
    base = load_stage_config("train_cyclegan", CycleGANTrainConfig)
    base_dict = asdict(base)
    print(f"# CycleGAN switches: {base.domain_a} -> {base.domain_b}, demo features, {args.steps} steps per run, "
          f"seeds {args.seeds}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    rows: dict[str, list[dict[str, float]]] = {}
    for name in args.settings:
        for seed in args.seeds:
            change = merged(SETTINGS[name], {"seed": seed, "max_steps": args.steps,
                                             "val_every_steps": max(1, args.steps // 4),
                                             "loss": {"identity_decay_steps": args.steps,
                                                      **SETTINGS[name].get("loss", {})}})
            with tempfile.TemporaryDirectory() as tmp:
                cfg = CycleGANTrainConfig(**merged(base_dict, {**change, "checkpoint_root": f"{tmp}/cache"}))
                started = time.perf_counter()
                metrics = train(cfg, Path(tmp) / "out", features_root=root / "data/features", progress=False)
                row = {"profile_frechet": metrics["test/frechet_profile"], "pitch_kept": metrics["test/pitch_kept"],
                       "seconds": time.perf_counter() - started}
                if args.evaluate:
                    row.update(evaluate(Path(tmp) / "out/model.pt", root))
            rows.setdefault(name, []).append(row)
            print(f"{name:15s} seed {seed}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    print("\n## mean (sd) over seeds")
    for name, runs in rows.items():
        cells = []
        for key in runs[0]:
            values = [r[key] for r in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{key} {statistics.mean(values):.3f} ({sd:.3f})")
        print(f"{name:15s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
