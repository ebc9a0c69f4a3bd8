"""evaluate@<system>: data/transfer_set/ + models/classifier/ (+ the system's model) -> reports/eval/<system>/.

One DVC stage per system (``foreach`` over ``evaluate.systems`` in dvc.yaml): adding or retraining a system
re-evaluates that system only. ``python -m timbrelab.stages.evaluate <system>``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timbrelab.config import FeaturesConfig, load_stage_config, validate
from timbrelab.errors import ConfigError, run_main
from timbrelab.evaluation.classifier import load_classifier
from timbrelab.evaluation.evaluate import RESULTS, check_classifier_grid, evaluate_system
from timbrelab.evaluation.scoring import MetricsConfig
from timbrelab.evaluation.systems import load_system
from timbrelab.evaluation.transfer_set import TransferSet
from timbrelab.fsutil import atomic_dir, atomic_write_json, round_floats
from timbrelab.stages.common import StageResult, execute_stage

STAGE = "evaluate"
TRANSFER_SET = Path("data/transfer_set")
CLASSIFIER = Path("models/classifier/model.pt")
OUT = Path("reports/eval")


@dataclass
class EvaluateConfig:
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    systems: dict[str, Any] = field(default_factory=dict)


SCHEMAS = EvaluateConfig


def check_system(cfg: EvaluateConfig, name: str) -> None:
    if name not in cfg.systems:
        raise ConfigError(f"params.yaml: evaluate.systems has no {name!r} (it has {', '.join(sorted(cfg.systems))})")


def run(cfg: EvaluateConfig, root: Path, name: str) -> StageResult:
    check_system(cfg, name)
    ts = TransferSet(root / TRANSFER_SET)
    features = validate(dict(ts.features_config), FeaturesConfig, f"{TRANSFER_SET}/manifest.json features_config")
    classifier, _ = load_classifier(root / CLASSIFIER)
    check_classifier_grid(classifier, features, str(CLASSIFIER))
    system = load_system(name, cfg.systems[name], root, features)
    with atomic_dir(root / OUT / name) as tmp:
        results = evaluate_system(name, system, ts, features, classifier, cfg.metrics, tmp)
        atomic_write_json(tmp / RESULTS, round_floats(results))
    flat = {key: value["value"] for key, value in results["metrics"].items() if value is not None}
    flat.update({f"{key}_low": value["low"] for key, value in results["metrics"].items() if value is not None})
    flat.update({f"{key}_high": value["high"] for key, value in results["metrics"].items() if value is not None})
    flat["clips"] = len(results["clips"])
    flat["skipped"] = len(results["failed"])
    shown = ", ".join(f"{key} {value['value']:.3f}" for key, value in results["metrics"].items()
                      if value is not None and key in ("transfer_score", "raw_pitch", "acceptance", "frechet"))
    return StageResult(metrics=round_floats(flat), artifacts=[root / OUT / name / RESULTS],
                       summary=f"{name}: {len(results['clips'])} clips ({len(results['failed'])} skipped), "
                               f"{shown}; written to {OUT / name}")


def main(argv: list[str] | None = None) -> int:
    names = [a for a in argv or [] if not a.startswith("--")]
    if len(names) != 1:
        print("usage: python -m timbrelab.stages.evaluate SYSTEM  (or `timbrelab stage evaluate SYSTEM`; SYSTEM is "
              "a key of evaluate.systems in params.yaml)", file=sys.stderr)
        return 2
    name = names[0]

    def evaluate() -> None:
        check_system(load_stage_config(STAGE, SCHEMAS), name)   # before an MLflow run is opened
        execute_stage(f"{STAGE}_{name}", SCHEMAS, lambda cfg, root: run(cfg, root, name), params_section=STAGE)

    return run_main(evaluate)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
