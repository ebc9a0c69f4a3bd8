"""train_<model>: data/features/<domain>/ -> the model's output folder (model.pt, metrics.json, curves.csv), for
every model the registry trains through :mod:`timbrelab.training.loop`. Run as
``python -m timbrelab.stages.train <model>`` (dvc.yaml's ``train_ddsp`` runs ``... train ddsp``).

The model's own ``train`` function fits it on the train split, validates on valid, keeps the best checkpoint,
judges it on the test split, resumes after an interruption from ``<checkpoint_root>/<config hash>/``, and logs
``model/model.pt`` to the stage's MLflow run with a version of ``timbrelab-<model>-<domain>`` in the registry.
"""

from __future__ import annotations

import sys
from pathlib import Path

from timbrelab import tracking
from timbrelab.errors import ConfigError, run_main
from timbrelab.models import registry
from timbrelab.stages.common import StageResult, execute_stage

FEATURES = Path("data/features")


class TrainStage:
    """The stage table's entry for one model: its section's schema and the stage body."""

    def __init__(self, model: str):
        self.spec = registry.get(model)
        if self.spec.train is None:
            raise ConfigError(f"model {model!r} is not trained by the generic train stage (see its own stage, "
                              f"{self.spec.stage})")
        self.STAGE = self.spec.stage
        self.SCHEMAS = self.spec.resolve("schema")

    def run(self, cfg, root: Path) -> StageResult:
        out = Path(self.spec.output)
        active = tracking.active_run()
        result = self.spec.resolve("train")(cfg, root / out, features_root=root / FEATURES,
                                            mlflow_run_id=active.run_id if active else None)
        metrics = {key: value for key, value in result.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        summary = self.spec.resolve("summary")(cfg, result) if self.spec.summary else f"trained {self.spec.label}"
        # model.pt is logged by train() under model/, the registered version's source.
        return StageResult(metrics=metrics, artifacts=[root / out / "curves.csv"],
                           summary=f"{summary}; written to {out}")


def main(argv: list[str] | None = None) -> int:
    names = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--")]
    if len(names) != 1:
        print(f"usage: python -m timbrelab.stages.train MODEL  (MODEL: one of "
              f"{', '.join(s.name for s in registry.trained_by_loop())})", file=sys.stderr)
        return 2

    def train() -> None:
        stage = TrainStage(names[0])
        execute_stage(stage.STAGE, stage.SCHEMAS, stage.run)

    return run_main(train)


if __name__ == "__main__":
    sys.exit(main())
