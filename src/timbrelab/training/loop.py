"""One training loop for every model that trains as a LightningModule, automatic or manual optimisation.

What a model brings: its LightningModule, which declares

* ``monitor`` — the validation metric the best checkpoint is chosen by (lower is better), e.g. ``"val/loss"``;
* ``curve_keys`` — metrics for ``curves.csv``: ``train/*`` keys are averaged over the steps between two
  validations, the others read at each validation (all from ``trainer.callback_metrics``, so a manually
  optimised GAN step that returns nothing still has curves);
* ``export_model()`` — the ``nn.Module`` that goes into ``model.pt``.

What the loop does (:class:`TrainingRun`): a checkpoint cache keyed by a hash of the operative config (resume
from ``<checkpoint_root>/<hash>/last.ckpt``, refuse a directory made by another config), the Trainer from the
stage's trainer config (:mod:`timbrelab.training.trainer`), rank-0-only writes under DDP, the best checkpoint
reloaded after the fit, atomic ``model.pt`` (:mod:`timbrelab.models.checkpoint`), ``metrics.json`` and
``curves.csv``, Lightning's MLflow logger attached to the stage's run, and a version of the registered model
``timbrelab-<model>-<domain>``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from timbrelab import tracking
from timbrelab.errors import Terminated, TimbrelabError, first_line
from timbrelab.fsutil import atomic_path, atomic_write_json, atomic_write_text, dumps_json, read_json
from timbrelab.models.checkpoint import CheckpointError, save_checkpoint, torch_load
from timbrelab.training.shards import ShardCheck
from timbrelab.training.trainer import TrainerConfig

MODEL_ARTIFACT_DIR = "model"   # run artifact folder holding model.pt: the registered version's source
VERSION_TAGS = ("steps", "val/loss_best", "test/loss", "baseline/test_loss", "test/margin", "test/f0_within_50c")


def config_digest(operative: Mapping[str, Any]) -> str:
    """12 hex of sha256 of the canonical JSON of an operative config."""
    return hashlib.sha256(dumps_json(operative).encode()).hexdigest()[:12]


def finite_or_none(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """NaN and infinities become None (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


class CurveRecorder(Callback):
    """Rows ``[step, *train means, *validation values]`` at every validation, from ``trainer.callback_metrics``.

    Lightning updates ``callback_metrics`` with a step's logged values only after ``on_train_batch_end``, so a
    step's train values are read at the next hook that follows it (the next batch, the validation, the end).
    Its state rides in the checkpoint, so a resumed run keeps the whole curve."""

    def __init__(self, keys: Sequence[str], steps_per_batch: int = 1) -> None:
        self.steps_per_batch = steps_per_batch   # optimiser steps Lightning counts per batch (rows say batches)
        self.train_keys = [k for k in keys if k.startswith("train/")]
        self.val_keys = [k for k in keys if not k.startswith("train/")]
        self.rows: list[list[float]] = []
        self.window: dict[str, list[float]] = {k: [] for k in self.train_keys}
        self._pending = False

    @property
    def header(self) -> list[str]:
        return ["step", *(k.replace("/", "_") for k in (*self.train_keys, *self.val_keys))]

    def _collect(self, trainer) -> None:
        if not self._pending:
            return
        self._pending = False
        for key in self.train_keys:
            if key in trainer.callback_metrics:
                self.window[key].append(float(trainer.callback_metrics[key]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._pending = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._collect(trainer)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._collect(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._collect(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._collect(trainer)   # before SaveOnTerminate writes the state: the last step's value is in it

    def on_validation_end(self, trainer, pl_module) -> None:
        # After the module's own on_validation_epoch_end and Lightning's epoch-end logging: a value the module
        # logs there (a distance over the whole split, say) is in callback_metrics by now.
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or any(k not in metrics for k in self.val_keys):
            return
        self.rows.append([int(trainer.global_step) // self.steps_per_batch, *self.train_means(),
                          *(float(metrics[k]) for k in self.val_keys)])
        self.window = {k: [] for k in self.train_keys}

    def train_means(self) -> list[float]:
        return [sum(v) / len(v) if v else float("nan") for v in self.window.values()]

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows([[int(row[0]), *(f"{v:.6f}" for v in row[1:])] for row in self.rows])
        return buf.getvalue()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows], "window": {k: list(v) for k, v in self.window.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [list(r) for r in state_dict.get("rows", [])]
        window = state_dict.get("window", {})
        if isinstance(window, list):   # a cache written before the loop existed: one train key
            window = {self.train_keys[0]: window} if self.train_keys else {}
        self.window = {k: list(window.get(k, [])) for k in self.train_keys}


class SaveOnTerminate(Callback):
    """On SIGTERM Lightning stops at the next loop boundary (a consistent state) and raises; before its teardown,
    save ``last.ckpt`` there (atomically on rank 0), so a rerun resumes from the step reached."""

    def __init__(self, last: Path) -> None:
        self.last, self.saved = last, False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.is_global_zero:
            with atomic_path(self.last) as tmp:
                trainer.save_checkpoint(tmp, weights_only=False)
        else:
            trainer.save_checkpoint(self.last, weights_only=False)
        self.saved = True


class AttachedMLFlowLogger(MLFlowLogger):
    """MLFlowLogger on an existing (stage) run: no hyperparameters (the stage logs its params) and no
    ``set_terminated`` at the end (the stage ends its own run)."""

    def log_hyperparams(self, params) -> None:
        return None

    def finalize(self, status: str = "success") -> None:
        return None


@dataclass
class FitResult:
    """What a finished fit leaves on rank 0."""

    steps: int
    curves: CurveRecorder
    world_size: int
    shards: dict[str, int] = field(default_factory=dict)
    backend: str | None = None
    client: Any = None
    rank: int = 0                     # > 0: another DDP rank (it wrote nothing; only rank 0's result counts)

    monitor: str = "val/loss"

    @property
    def best_step(self) -> int:
        """Step of the lowest monitored value among the curve rows."""
        if not self.curves.rows or self.monitor not in self.curves.val_keys:
            return self.steps
        column = 1 + len(self.curves.train_keys) + self.curves.val_keys.index(self.monitor)
        return int(min(self.curves.rows, key=lambda r: r[column])[0])

    @property
    def final_train(self) -> float:
        """The first train curve's value at the last validation (or its mean since, without one)."""
        if self.curves.rows:
            return self.curves.rows[-1][1]
        means = self.curves.train_means()
        return means[0] if means else float("nan")


class TrainingRun:
    """One stage's training: ``stage`` names it in messages, ``operative`` is the config that decides the weights
    (its hash keys the checkpoint cache), ``trainer`` the stage's trainer config. The cache directory is checked
    at construction, so a foreign cache fails before any work."""

    def __init__(self, stage: str, operative: Mapping[str, Any], checkpoint_root: str | Path, *,
                 trainer: TrainerConfig, max_steps: int, val_every_steps: int, progress: bool = True):
        self.stage, self.operative, self.trainer_cfg = stage, dict(operative), trainer
        self.max_steps, self.val_every_steps, self.progress = int(max_steps), int(val_every_steps), progress
        self.digest = config_digest(self.operative)
        self.ckpt_dir = Path(checkpoint_root) / self.digest
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self._check_cache()

    def _check_cache(self) -> None:
        stored_path = self.ckpt_dir / "config.json"
        if stored_path.exists():
            try:
                stored = read_json(stored_path)
            except ValueError as exc:
                raise TimbrelabError(f"{stored_path}: not valid JSON ({exc}); delete {self.ckpt_dir} to retrain") \
                    from exc
            if stored != self.operative:
                raise TimbrelabError(
                    f"{stored_path} does not match this {self.stage} config (the cache directory's hash names a "
                    f"different config); refusing to resume from {self.ckpt_dir}. Delete that directory to retrain.")
        elif any(self.ckpt_dir.glob("*.ckpt")):
            raise TimbrelabError(f"{self.ckpt_dir} holds checkpoints but no config.json; delete it to retrain")
        else:
            atomic_write_json(stored_path, self.operative)

    def resume_point(self) -> Path | None:
        """The checkpoint to resume from: ``last.ckpt``, else ``best.ckpt``, each checked before Lightning sees it.
        A damaged or unsafe one is moved aside (``<name>.damaged``) with a warning that says so, and the next is
        tried; with none left the training starts over."""
        for name in ("last.ckpt", "best.ckpt"):
            path = self.ckpt_dir / name
            if not path.is_file():
                continue
            try:
                torch_load(path)
            except CheckpointError as exc:
                aside = path.with_name(f"{name}.damaged")
                path.replace(aside)
                warnings.warn(f"{self.stage}: {first_line(exc)}; moved it aside to {aside.name} and "
                              "resuming from the checkpoint before it, if any (else training starts over)",
                              RuntimeWarning, stacklevel=2)
                continue
            return path
        return None

    def fit(self, module: LightningModule, datamodule: Any, mlflow_run_id: str | None = None) -> FitResult:
        """Fit (resuming from :meth:`resume_point`), leave ``last.ckpt`` at the final step, reload the best
        checkpoint into ``module``. On ranks other than 0 the result only carries ``rank`` (they write nothing).
        SIGTERM (a kill, a scheduler's pre-emption): ``last.ckpt`` is saved at the step reached and
        :class:`~timbrelab.errors.Terminated` raised, so the stage exits 143 and a rerun resumes."""
        last = self.ckpt_dir / "last.ckpt"
        resume = self.resume_point()
        best_cb = ModelCheckpoint(dirpath=self.ckpt_dir, filename="best", monitor=module.monitor, mode="min",
                                  save_top_k=1, save_last=True, enable_version_counter=False)
        curves, shards = CurveRecorder(module.curve_keys, int(getattr(module, "steps_per_batch", 1))), ShardCheck()
        on_term = SaveOnTerminate(last)
        logger: Any = False
        if mlflow_run_id is not None:
            logger = AttachedMLFlowLogger(experiment_name=tracking.EXPERIMENT_NAME,
                                          tracking_uri=tracking.tracking_uri(), run_id=mlflow_run_id)
        # Lightning counts optimiser steps: a GAN that steps two optimisers per batch declares it.
        per_batch = int(getattr(module, "steps_per_batch", 1))
        trainer = Trainer(
            **self.trainer_cfg.kwargs(), max_steps=self.max_steps * per_batch, max_epochs=-1,
            val_check_interval=self.val_every_steps, check_val_every_n_epoch=None, num_sanity_val_steps=0,
            callbacks=[best_cb, curves, shards, on_term], logger=logger, enable_checkpointing=True,
            log_every_n_steps=min(10, self.val_every_steps), enable_progress_bar=self.progress,
            enable_model_summary=self.progress, deterministic=True, default_root_dir=str(self.ckpt_dir),
        )
        if resume is not None and hasattr(datamodule, "resume_batches"):
            # Lightning restarts a non-resumable loader at its epoch's start: the sampler skips what was trained.
            datamodule.resume_batches = int(torch_load(resume)["global_step"]) // per_batch
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        except SIGTERMException:
            raise Terminated(f"{self.stage} was stopped by SIGTERM at step {trainer.global_step // per_batch}; "
                             + (f"its checkpoint {last} is kept: rerun the stage to resume from it"
                                if on_term.saved else "no checkpoint was saved: a rerun starts over")) from None
        # The last step need not be a validation step: always leave last.ckpt at the final step (atomically).
        # Every rank calls save_checkpoint (it ends in a barrier); only rank 0 writes.
        if not trainer.is_global_zero:
            trainer.save_checkpoint(last, weights_only=False)
            return FitResult(steps=int(trainer.global_step) // per_batch, curves=curves,
                             world_size=int(trainer.world_size), rank=int(trainer.global_rank))
        with atomic_path(last) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
        best = self.ckpt_dir / "best.ckpt"
        if best.is_file():   # else the fit ran no validation: the weights as they are
            module.load_state_dict(torch_load(best)["state_dict"])
        return FitResult(steps=int(trainer.global_step) // per_batch, curves=curves,
                         world_size=int(trainer.world_size), shards=shards.report, backend=shards.backend,
                         client=logger.experiment if logger else None, monitor=module.monitor)

    def write_outputs(self, out_dir: Path, payload: Mapping[str, Any], metrics: Mapping[str, Any],
                      result: FitResult) -> None:
        """``model.pt``, ``metrics.json`` and ``curves.csv`` in ``out_dir``, each written atomically."""
        out_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out_dir / "model.pt", payload)
        atomic_write_json(out_dir / "metrics.json", metrics)
        atomic_write_text(out_dir / "curves.csv", result.curves.csv_text())


# ------------------------------------------------------------------------------------------ MLflow registry

def registered_model_name(model: str, domain: str) -> str:
    return f"timbrelab-{model}-{domain}"


def _version_tags(digest: str, metrics: Mapping[str, Any]) -> dict[str, str]:
    tags = {"config_hash": digest}
    for key in VERSION_TAGS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
            tags[key] = f"{value:.6g}" if isinstance(value, float) else str(value)
    return tags


def register_model(client, run_id: str, model: str, domain: str, digest: str, metrics: Mapping[str, Any],
                   stage: str) -> str | None:
    """Register ``runs:/<run_id>/model`` (the run's folder holding model.pt) as a new version of
    ``timbrelab-<model>-<domain>``, tagged with the config hash and the headline metrics. Returns
    ``"<name>/<version>"``; on any registry failure warns and returns None (the trained model and its
    metrics are already written, and a registry outage must not throw the training away)."""
    from mlflow.exceptions import MlflowException

    name = registered_model_name(model, domain)
    try:
        try:
            client.create_registered_model(name, description=f"{model} trained on the {domain} domain by "
                                           f"timbrelab's {stage} stage; each version's model.pt loads with "
                                           f"timbrelab.models.registry.load(path, {model!r})")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(
            name, f"runs:/{run_id}/{MODEL_ARTIFACT_DIR}", run_id, tags=_version_tags(digest, metrics),
            description=f"config hash {digest}")
    except Exception as exc:  # noqa: BLE001 - any registry failure: keep the training, say why
        warnings.warn(f"{stage}: could not register the model in the MLflow model registry as {name!r} "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); model.pt is "
                      f"still in run {run_id} under {MODEL_ARTIFACT_DIR}/", RuntimeWarning, stacklevel=2)
        return None
    client.set_tag(run_id, "registered_model", f"{name}/{version.version}")
    return f"{name}/{version.version}"


def log_to_run(run: tracking.StageRun, model: str, domain: str, stage: str, model_path: Path,
               metrics: Mapping[str, Any], digest: str, extras: Callable[[tracking.StageRun], Any] | None = None
               ) -> str | None:
    """After the DVC outputs are written: final metrics, ``model/model.pt`` and the model's own ``extras``
    (listening examples, say), then the registry version (last, so a registry failure loses nothing).
    Returns ``"<name>/<version>"``."""
    run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=metrics["steps"])
    run.log_artifact(model_path, MODEL_ARTIFACT_DIR)
    if extras is not None:
        extras(run)
    return register_model(run.client, run.run_id, model, domain, digest, metrics, stage)
