"""Train the DDSP solo-instrument model (:mod:`timbrelab.models.ddsp`) with Lightning.

* :class:`DDSPTrainConfig`: what to train; :func:`config_hash` keys a checkpoint cache on the *operative*
  part of it (resolved model config, optimiser, data shape, seed, and a fingerprint of the features domain),
  so ``max_steps`` / ``val_every_steps`` / ``num_workers`` / ``baseline_steps`` can change and a run still
  resumes from the same cache directory.
* :func:`train`: fits (resuming from ``<checkpoint_root>/<hash>/last.ckpt`` when present) and writes
  ``model.pt`` (plain tensors, ``torch.load(weights_only=True)``), ``metrics.json`` and ``curves.csv`` to
  ``out_dir``. The cache is *not* a DVC output, so DVC never deletes it before the stage runs. The best
  model and the non-learned baseline are judged on the valid split (crops) and on the **test** split (whole
  clips: spectral loss, and whether the resynthesis keeps the input's f0; see
  :mod:`timbrelab.training.ddsp_eval`).
* MLflow (``mlflow_run_id``, the stage's run; Lightning's logger is attached to it, no second run): per-step
  ``train/loss`` / ``val/loss``, the final metrics, ``model/model.pt``, ``resynthesis/`` WAVs and PNGs of a few
  test clips, and a new version of the registered model ``timbrelab-ddsp-<domain>`` (source
  ``runs:/<run>/model``). Fetch it with ``timbrelab.training.ddsp_eval.fetch_model("models:/timbrelab-ddsp-cello/latest")``.
* Where it runs: ``cfg.trainer`` (:mod:`timbrelab.training.trainer`: one process, a GPU in bf16, DDP over GPUs,
  nodes or CPU processes). Under DDP every rank trains on its own shard of the train split; only rank 0
  writes checkpoints, outputs and MLflow records, the others return ``{"rank": r, ...}`` after the fit.
  The metrics say how many processes trained and whether any item was handed to two (``trainer/*``).
* :func:`load_checkpoint` / :func:`load_model`: ``model.pt`` -> :class:`~timbrelab.models.ddsp.DDSP` (+ payload).

Determinism: ``seed_everything(seed, workers=True)``, ``Trainer(deterministic=True)``, seeded DataModule, and
the synth noise of each training step drawn from a generator seeded by ``(seed, global_step)`` (validation by
``(seed, batch_idx)``), so a resumed run draws the same noise as an uninterrupted one and validation never
touches the global RNG.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from timbrelab import tracking
from timbrelab.data.datasets import DDSPDataModule
from timbrelab.dsp.spectral import MultiScaleSpectralLoss
from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.fsutil import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    dumps_json,
    read_json,
    sha256_file,
)
from timbrelab.models.ddsp import (
    DDSP,
    PRESETS,
    AverageSpectrumBaseline,
    DDSPModelConfig,
)
from timbrelab.training.trainer import ShardCheck, TrainerConfig
from timbrelab.training.ddsp_eval import (
    MODEL_ARTIFACT_DIR,
    load_test_batches,
    log_resynthesis,
    mean_loss,
    pitch_agreement,
    register_model,
    render,
    resynthesis_tracks,
    split_ids,
)

MODEL_OVERRIDES = ("hidden", "n_harmonics", "n_noise_bands", "gru_layers", "mlp_layers", "reverb_seconds", "z_dim")
# Fields that do not change the trajectory of the weights: left out of the hash so a run can be extended.
NOT_HASHED = ("max_steps", "val_every_steps", "num_workers", "checkpoint_root", "baseline_steps")
HASH_VERSION = 1
_NOISE_STRIDE = 1_000_003
_TEST_NOISE = _NOISE_STRIDE // 2   # test-split noise keys: seed * stride - this - batch (apart from val's -1 - batch)
MODEL_TYPE = "ddsp"        # checkpoint payload["model_type"]: loaders refuse other models' files
CHECKPOINT_FORMAT = 1


@dataclass
class DDSPModelParams:
    """``train_ddsp.model``: what is learned, the preset with its overrides (None: the preset's value) and
    the optimiser's learning rate."""

    preset: str = "demo"
    hidden: int | None = None
    n_harmonics: int | None = None
    n_noise_bands: int | None = None
    gru_layers: int | None = None
    mlp_layers: int | None = None
    reverb_seconds: float | None = None
    z_dim: int | None = None
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"train_ddsp.model.preset={self.preset!r} is not one of {sorted(PRESETS)}")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr)
                                             and self.lr > 0):
            raise ConfigError(f"train_ddsp.model.lr must be a finite number > 0, found {self.lr!r}")


@dataclass
class DDSPTrainConfig:
    domain: str = "cello"
    model: DDSPModelParams = field(default_factory=DDSPModelParams)
    batch_size: int = 8          # per process (under DDP the effective batch is batch_size x world size)
    crop_seconds: float | None = 2.0
    max_steps: int = 2000
    val_every_steps: int = 200
    seed: int = 0
    num_workers: int = 0
    baseline_steps: int = 300
    checkpoint_root: str = "models/cache/ddsp"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = DDSPModelParams(**self.model)
        if isinstance(self.trainer, dict):
            self.trainer = TrainerConfig(**self.trainer)
        for name in ("max_steps", "val_every_steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train_ddsp.{name} must be a positive integer, found {value!r}")
        if isinstance(self.baseline_steps, bool) or not isinstance(self.baseline_steps, int) or self.baseline_steps < 0:
            raise ConfigError(f"train_ddsp.baseline_steps must be an integer >= 0, found {self.baseline_steps!r}")

    def model_config(self, stats: dict[str, Any] | None = None) -> DDSPModelConfig:
        """The preset with the overrides, on the features' grid (sample_rate, frame_hop) when stats are given."""
        changes = {name: getattr(self.model, name) for name in MODEL_OVERRIDES if getattr(self.model, name) is not None}
        if stats is not None:
            changes.update(sample_rate=int(stats["sample_rate"]), hop=int(stats["frame_hop"]))
        try:
            return PRESETS[self.model.preset].replace(**changes)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"train_ddsp.model overrides {changes}: {exc}") from exc


def data_fingerprint(features_root: Path, domain: str) -> str:
    """sha256 over the domain's stats.json and split indexes: a cached checkpoint is not reused on new data."""
    digest = hashlib.sha256()
    for rel in ("stats.json", "train/index.json", "valid/index.json"):
        path = Path(features_root) / domain / rel
        digest.update(rel.encode() + b"\0" + (sha256_file(path) if path.is_file() else "missing").encode() + b"\0")
    return digest.hexdigest()


def operative_config(cfg: DDSPTrainConfig, stats: dict[str, Any] | None = None,
                     data: str | None = None) -> dict[str, Any]:
    """What the hash covers: the resolved model config and every field that changes the weights."""
    # The layout of the first config (flat train fields, preset and lr among them), so that caches made
    # before the model/trainer sections existed keep their key.
    flat = {**{k: v for k, v in asdict(cfg).items() if k not in ("model", "trainer")},
            "preset": cfg.model.preset, "lr": cfg.model.lr}
    train = {k: v for k, v in flat.items() if k not in NOT_HASHED}
    operative = {"version": HASH_VERSION, "train": train, "model": asdict(cfg.model_config(stats)), "data": data}
    if cfg.trainer.operative():
        operative["trainer"] = cfg.trainer.operative()
    return operative


def config_hash(cfg: DDSPTrainConfig, stats: dict[str, Any] | None = None, data: str | None = None) -> str:
    """12 hex of sha256 of the canonical JSON of :func:`operative_config`."""
    return hashlib.sha256(dumps_json(operative_config(cfg, stats, data)).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------- lightning

class DDSPLightningModule(LightningModule):
    """DDSP trained on the multi-scale spectral loss against the clip's own audio (autoencoding)."""

    def __init__(self, model_cfg: DDSPModelConfig, stats: dict[str, Any], lr: float = 1e-3, seed: int = 0):
        super().__init__()
        self.model = DDSP(model_cfg, stats)
        self.loss = MultiScaleSpectralLoss(prefix="val")
        self.lr, self.seed = float(lr), int(seed)

    def _gen(self, device: torch.device, key: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed * _NOISE_STRIDE + key)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        audio = batch["audio"]
        return self.model(batch["f0_hz"], batch["loudness_db"], audio.shape[-1], generator=generator)

    def training_step(self, batch, batch_idx):
        pred = self(batch, self._gen(batch["audio"].device, self.global_step))
        loss = self.loss(pred, batch["audio"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(pred))
        return loss

    def validation_step(self, batch, batch_idx):
        pred = self(batch, self._gen(batch["audio"].device, -1 - batch_idx))
        terms = self.loss.terms(pred, batch["audio"])
        total = terms.pop("val/total")
        # sync_dist: under DDP every rank validates the whole split, so the mean is the same value.
        self.log("val/loss", total, prog_bar=True, on_epoch=True, batch_size=len(pred), sync_dist=True)
        self.log_dict(terms, on_epoch=True, batch_size=len(pred), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


class CurveRecorder(Callback):
    """Rows ``(step, train_loss, val_loss)`` at every validation (train loss: mean since the previous one).
    Its state rides in the checkpoint, so a resumed run keeps the whole curve."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []
        self.window: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.window.append(float(loss.detach()))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        train = sum(self.window) / len(self.window) if self.window else float("nan")
        self.rows.append([int(trainer.global_step), train, float(trainer.callback_metrics["val/loss"])])
        self.window = []

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows], "window": list(self.window)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [list(r) for r in state_dict.get("rows", [])]
        self.window = list(state_dict.get("window", []))


class AttachedMLFlowLogger(MLFlowLogger):
    """MLFlowLogger on an existing (stage) run: no hyperparameters (the stage logs its params) and no
    ``set_terminated`` at the end (the stage ends its own run)."""

    def log_hyperparams(self, params) -> None:
        return None

    def finalize(self, status: str = "success") -> None:
        return None


# ------------------------------------------------------------------------------------------- train

def _check_cache(ckpt_dir: Path, expected: dict[str, Any]) -> None:
    stored_path = ckpt_dir / "config.json"
    if stored_path.exists():
        try:
            stored = read_json(stored_path)
        except ValueError as exc:
            raise TimbrelabError(f"{stored_path}: not valid JSON ({exc}); delete {ckpt_dir} to retrain") from exc
        if stored != expected:
            raise TimbrelabError(
                f"{stored_path} does not match this training config (the cache directory's hash names a different "
                f"config); refusing to resume from {ckpt_dir}. Delete that directory to retrain.")
    elif any(ckpt_dir.glob("*.ckpt")):
        raise TimbrelabError(f"{ckpt_dir} holds checkpoints but no config.json; delete it to retrain")
    else:
        atomic_write_json(stored_path, expected)


def _evaluate(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], seed: int) -> float:
    """Mean multi-scale spectral loss over the valid ``batches`` (per clip), seeded noise per batch."""
    return mean_loss(render(model, batches, seed * _NOISE_STRIDE - 1), batches)


def _judge_on_test(model: torch.nn.Module, baseline: torch.nn.Module, batches: list[dict[str, torch.Tensor]],
                   stats: dict[str, Any], seed: int) -> tuple[dict[str, Any], list[torch.Tensor], list]:
    """Model and baseline on the whole test clips, with the same noise: spectral loss, margin (baseline minus
    model, > 0 = the model is better) and pitch fidelity of the resynthesis. Returns the metrics, the model's
    resynthesis and its f0 tracks (for the listening examples)."""
    seed_base = seed * _NOISE_STRIDE - _TEST_NOISE
    preds = render(model, batches, seed_base)
    base_preds = render(baseline, batches, seed_base)
    tracks = resynthesis_tracks(preds, batches, stats)
    pitch = pitch_agreement(tracks)
    base_pitch = pitch_agreement(resynthesis_tracks(base_preds, batches, stats))
    test_loss = mean_loss(preds, batches)
    baseline_loss = mean_loss(base_preds, batches)
    metrics = {
        "test/clips": sum(len(b["audio"]) for b in batches),
        "test/loss": test_loss,
        "baseline/test_loss": baseline_loss,
        "test/margin": baseline_loss - test_loss,
        **{f"test/{key}": value for key, value in pitch.items()},
        "baseline/test_f0_within_50c": base_pitch["f0_within_50c"],
    }
    return metrics, preds, tracks


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def train(cfg: DDSPTrainConfig, out_dir: str | os.PathLike, *, features_root: str | os.PathLike = Path("data/features"),
          mlflow_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or resume / extend) and write ``model.pt``, ``metrics.json``, ``curves.csv`` to ``out_dir``.
    Returns the metrics (also with ``hash``, ``checkpoint_dir`` and ``registered_model``: ``"<name>/<version>"``
    in the MLflow registry, None without a run or when registering failed, which only warns)."""
    out_dir, features_root = Path(out_dir), Path(features_root)
    lightning.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = DDSPDataModule(features_root, cfg.domain, cfg.batch_size, cfg.crop_seconds, cfg.num_workers, cfg.seed)
    stats = dm.stats(cfg.domain)
    # Before anything is trained or cached: a missing or empty test split fails now, not after the fit.
    test_batches = load_test_batches(features_root, cfg.domain, cfg.batch_size, cfg.seed)
    model_cfg = cfg.model_config(stats)
    expected = operative_config(cfg, stats, data_fingerprint(features_root, cfg.domain))
    digest = hashlib.sha256(dumps_json(expected).encode()).hexdigest()[:12]
    ckpt_dir = Path(cfg.checkpoint_root) / digest
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _check_cache(ckpt_dir, expected)

    module = DDSPLightningModule(model_cfg, stats, cfg.model.lr, cfg.seed)
    dm.setup("fit")
    val_batches = list(dm.val_dataloader())
    # Before fit, while the data module is not attached to a (possibly distributed) trainer: the whole split.
    baseline_batches = list(itertools.islice(iter(dm.train_dataloader()), 8)) if cfg.baseline_steps else []
    initial_val = _evaluate(module.model, val_batches, cfg.seed)
    module.model.train()

    last = ckpt_dir / "last.ckpt"
    resume = last if last.is_file() else None
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                              save_last=True, enable_version_counter=False)
    curves, shards = CurveRecorder(), ShardCheck()
    logger: Any = False
    if mlflow_run_id is not None:
        logger = AttachedMLFlowLogger(experiment_name=tracking.EXPERIMENT_NAME, tracking_uri=tracking.tracking_uri(),
                                      run_id=mlflow_run_id)
    trainer = Trainer(
        **cfg.trainer.kwargs(), max_steps=cfg.max_steps, max_epochs=-1,
        val_check_interval=cfg.val_every_steps, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        callbacks=[best_cb, curves, shards], logger=logger, enable_checkpointing=True,
        log_every_n_steps=min(10, cfg.val_every_steps), enable_progress_bar=progress, enable_model_summary=progress,
        deterministic=True, default_root_dir=str(ckpt_dir),
    )
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    # The last step need not be a validation step: always leave last.ckpt at the final step (atomically).
    # Every rank calls save_checkpoint (it ends in a barrier); only rank 0 writes.
    if trainer.is_global_zero:
        with atomic_path(last) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
    else:
        trainer.save_checkpoint(last, weights_only=False)
        return {"rank": trainer.global_rank}
    steps = int(trainer.global_step)

    best_path = ckpt_dir / "best.ckpt"
    export = module.model
    if best_path.is_file():
        ckpt = torch.load(best_path, map_location="cpu", weights_only=True)
        export = DDSP(model_cfg, stats)
        export.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
                                if k.startswith("model.")})
    export = export.cpu()
    val_batches = [{k: v.cpu() for k, v in b.items()} for b in val_batches]
    val_loss = _evaluate(export, val_batches, cfg.seed)

    baseline = AverageSpectrumBaseline(model_cfg, stats)
    if cfg.baseline_steps:
        baseline.fit(baseline_batches, steps=cfg.baseline_steps, seed=cfg.seed)
    baseline_val = _evaluate(baseline, val_batches, cfg.seed)
    test_metrics, test_preds, test_tracks = _judge_on_test(export, baseline, test_batches, stats, cfg.seed)

    rows = curves.rows
    final_train = rows[-1][1] if rows else (sum(curves.window) / len(curves.window) if curves.window else float("nan"))
    metrics = {
        "steps": steps,
        "val/loss_best": val_loss,
        "val/loss_initial": initial_val,
        "train/loss_final": final_train,
        "gap": val_loss - final_train,
        "baseline/val_loss": baseline_val,
        "margin": baseline_val - val_loss,
        "best_step": int(min(rows, key=lambda r: r[2])[0]) if rows else steps,
        **test_metrics,
        "trainer/world_size": int(trainer.world_size),
        **shards.report,
    }
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"model_type": MODEL_TYPE, "format": CHECKPOINT_FORMAT,
               "state_dict": _plain_state_dict(export), "model_config": asdict(model_cfg),
               "train_config": asdict(cfg), "stats": json.loads(json.dumps(stats)), "hash": digest}
    # Through memory: torch.save names the zip's records after the target file, and the temp file's
    # random name would make identical weights hash differently.
    blob = io.BytesIO()
    torch.save(payload, blob)
    atomic_write_bytes(out_dir / "model.pt", blob.getvalue())
    atomic_write_json(out_dir / "metrics.json", metrics)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "train_loss", "val_loss"])
    writer.writerows([[int(s), f"{t:.6f}", f"{v:.6f}"] for s, t, v in rows])
    atomic_write_text(out_dir / "curves.csv", buf.getvalue())
    registered = None
    if mlflow_run_id is not None:
        run = tracking.StageRun(logger.experiment, mlflow_run_id)
        examples = (split_ids(features_root, cfg.domain), test_batches, test_preds, test_tracks)
        registered = _log_to_run(run, cfg, model_cfg, out_dir / "model.pt", metrics, digest, examples)
    return {**metrics, "hash": digest, "checkpoint_dir": str(ckpt_dir), "registered_model": registered,
            "backend": shards.backend}


def _log_to_run(run: tracking.StageRun, cfg: DDSPTrainConfig, model_cfg: DDSPModelConfig, model_path: Path,
                metrics: dict[str, Any], digest: str, examples: tuple) -> str | None:
    """After the DVC outputs are written: final metrics, ``model/model.pt``, the listening examples, and
    the registry version (last, so a registry failure loses nothing). Returns ``"<name>/<version>"``."""
    run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=metrics["steps"])
    run.log_artifact(model_path, MODEL_ARTIFACT_DIR)
    log_resynthesis(run, *examples, model_cfg.sample_rate, model_cfg.hop)
    return register_model(run.client, run.run_id, cfg.domain, digest, metrics)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[DDSP, dict[str, Any]]:
    """``model.pt`` (see :func:`train`) -> ``(DDSP in eval mode, payload)``; loaded with ``weights_only=True``.

    The payload holds ``model_config``, ``train_config``, ``stats`` (the training domain's stats.json, with
    ``features_config``: how its inputs were computed) and ``hash``. A missing file, a file that is not a
    checkpoint, or a checkpoint of another model type raises :class:`TimbrelabError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise TimbrelabError(f"{path}: no such checkpoint; train one with `dvc repro train_ddsp` or pass "
                             "--checkpoint PATH / --run-id ID")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or damaged file
        raise TimbrelabError(f"{path}: not a timbrelab checkpoint ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise TimbrelabError(f"{path}: not a timbrelab model checkpoint (a Lightning .ckpt or other file?); "
                             "use the model.pt that train_ddsp writes")
    kind = payload.get("model_type", MODEL_TYPE)
    if kind != MODEL_TYPE:
        raise TimbrelabError(f"{path}: a {kind!r} checkpoint, but a {MODEL_TYPE!r} model was asked for")
    try:
        model = DDSP(DDSPModelConfig(**payload["model_config"]), payload["stats"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TimbrelabError(f"{path}: checkpoint does not match the DDSP model of this timbrelab version "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    return model.eval(), payload


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DDSP:
    """``model.pt`` (see :func:`train`) -> DDSP in eval mode; see :func:`load_checkpoint`."""
    return load_checkpoint(path, map_location)[0]
