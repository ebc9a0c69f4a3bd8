"""train_ddsp: data/features/<domain>/ -> models/ddsp/ (model.pt, metrics.json, curves.csv).

Trains the DDSP decoder on the target domain's train split, validates on valid, keeps the best
checkpoint, compares it with the non-learned average-spectrum baseline, and resumes from the last
checkpoint of the same config (``train_ddsp.checkpoint_root/<config hash>/``) after an interruption.
"""

from __future__ import annotations

import sys
from pathlib import Path

from timbrelab import tracking
from timbrelab.stages.common import StageResult, run_stage
from timbrelab.training.ddsp import DDSPTrainConfig, train

STAGE = "train_ddsp"
SCHEMAS = DDSPTrainConfig
FEATURES = Path("data/features")
OUT = Path("models/ddsp")


def run(cfg: DDSPTrainConfig, root: Path) -> StageResult:
    active = tracking.active_run()
    result = train(cfg, root / OUT, features_root=root / FEATURES,
                   mlflow_run_id=active.run_id if active else None)
    metrics = {key: value for key, value in result.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return StageResult(
        metrics=metrics,
        artifacts=[root / OUT / "curves.csv", root / OUT / "model.pt"],
        summary=f"trained DDSP ({cfg.preset}) on {cfg.domain} for {metrics.get('steps', '?')} steps: "
        f"best val loss {metrics.get('val/loss_best', float('nan')):.3f}, baseline "
        f"{metrics.get('baseline/val_loss', float('nan')):.3f}, written to {OUT}",
    )


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
