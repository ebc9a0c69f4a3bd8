"""train_ddsp: data/features/<domain>/ -> models/ddsp/ (model.pt, metrics.json, curves.csv).

Trains the DDSP decoder on the target domain's train split, validates on valid, keeps the best
checkpoint, compares it with the non-learned average-spectrum baseline on valid and on the test split
(``test/margin`` = baseline minus model loss; ``test/f0_within_50c``: pitch fidelity of the resynthesis), and
resumes from the last checkpoint of the same config (``train_ddsp.checkpoint_root/<config hash>/``) after an
interruption. A missing or empty test split is an error before training starts.

Its MLflow run holds ``model/model.pt``, ``curves.csv``, ``resynthesis/`` (input and resynthesis WAVs and
spectrogram PNGs of a few test clips) and registers a version of ``timbrelab-ddsp-<domain>``; fetch it with
``timbrelab.training.ddsp_eval.fetch_model("models:/timbrelab-ddsp-cello/latest")`` (or ``/<version>``).
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
        # model.pt is logged by train() under model/, the registered version's source.
        artifacts=[root / OUT / "curves.csv"],
        summary=_summary(cfg, metrics, result.get("registered_model"), result.get("backend")),
    )


def _summary(cfg: DDSPTrainConfig, metrics: dict[str, float], registered: str | None, backend: str | None) -> str:
    def num(key: str) -> str:
        value = metrics.get(key)
        return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"

    world = int(metrics.get("trainer/world_size", 1))
    where = f" on {world} processes ({cfg.trainer.strategy}, {backend})" if world > 1 else ""
    return (f"trained DDSP ({cfg.model.preset}) on {cfg.domain} for {metrics.get('steps', '?')} steps{where}: best val loss "
            f"{num('val/loss_best')} (baseline {num('baseline/val_loss')}); test loss {num('test/loss')} "
            f"(baseline {num('baseline/test_loss')}, margin {num('test/margin')}), resynthesis f0 within 50 cents "
            f"on {num('test/f0_within_50c')} of voiced frames; written to {OUT}"
            + (f"; registered as {registered}" if registered else ""))


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
