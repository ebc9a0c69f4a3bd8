"""train_classifier: data/features/<domain>/ -> models/classifier/ (model.pt, metrics.json).

The timbre classifier the evaluation's target-timbre metrics are built on, in its own stage so that adding
a system to the evaluation never retrains it. Trained on every domain's train split, judged on the test
splits: its held-out accuracy and confusion matrix say whether a metric built on it can mean anything.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from timbrelab.models.classifier import ClassifierConfig
from timbrelab.fsutil import atomic_dir, atomic_write_json, round_floats
from timbrelab.stages.common import StageResult, run_stage

STAGE = "train_classifier"
FEATURES = Path("data/features")
OUT = Path("models/classifier")


@dataclass
class TrainClassifierConfig:
    domains: list[str] = field(default_factory=lambda: ["cello", "source", "nsynth"])
    seed: int = 0
    model: ClassifierConfig = field(default_factory=ClassifierConfig)


SCHEMAS = TrainClassifierConfig


def run(cfg: TrainClassifierConfig, root: Path) -> StageResult:
    from timbrelab.evaluation.classifier import save_classifier, train_classifier

    model, metrics = train_classifier(root / FEATURES, cfg.domains, cfg.model, cfg.seed)
    with atomic_dir(root / OUT) as tmp:
        save_classifier(model, tmp / "model.pt", train_config=cfg.model, seed=cfg.seed, metrics=metrics)
        atomic_write_json(tmp / "metrics.json", round_floats(metrics))
    flat = {"test/accuracy": metrics["test/accuracy"], "test/balanced_accuracy": metrics["test/balanced_accuracy"],
            "train/loss_final": metrics["train/loss_final"],
            **{f"test/accuracy.{d}": v for d, v in metrics["test/per_domain_accuracy"].items()}}
    return StageResult(
        metrics=round_floats(flat),
        artifacts=[root / OUT / "metrics.json"],
        summary=f"trained the timbre classifier on {', '.join(cfg.domains)}: held-out accuracy "
        f"{metrics['test/accuracy']:.3f} (balanced {metrics['test/balanced_accuracy']:.3f}), written to {OUT}",
    )


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
