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
  ``runs:/<run>/model``). Fetch it with ``timbrelab.inference.loading.fetch_checkpoint("models:/timbrelab-ddsp-cello/latest")``.
* Where it runs: ``cfg.trainer`` (:mod:`timbrelab.training.trainer`: one process, a GPU in bf16, DDP over GPUs,
  nodes or CPU processes). Under DDP every rank trains on its own shard of the train split; only rank 0
  writes checkpoints, outputs and MLflow records, the others return ``{"rank": r, ...}`` after the fit.
  The metrics say how many processes trained and whether any item was handed to two (``trainer/*``).
* The plumbing every model shares (cache, Trainer, rank 0, best checkpoint, outputs, MLflow) is
  :mod:`timbrelab.training.loop`'s; loading ``model.pt`` is :func:`timbrelab.models.registry.load`.

Determinism: ``seed_everything(seed, workers=True)``, ``Trainer(deterministic=True)``, seeded DataModule, and
the synth noise of each training step drawn from a generator seeded by ``(seed, global_step)`` (validation by
``(seed, batch_idx)``), so a resumed run draws the same noise as an uninterrupted one and validation never
touches the global RNG.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import LightningModule

from timbrelab import tracking
from timbrelab.data.datamodules import DDSPDataModule
from timbrelab.dsp.spectral import MultiScaleSpectralLoss
from timbrelab.fsutil import sha256_file
from timbrelab.models.checkpoint import make_payload
from timbrelab.models.ddsp import DDSP, PRESETS, AverageSpectrumBaseline, DDSPModelConfig
from timbrelab.models.registry import Example
from timbrelab.training.ddsp_eval import (
    load_test_batches,
    log_resynthesis,
    mean_loss,
    pitch_agreement,
    render,
    resynthesis_tracks,
    split_ids,
)
from timbrelab.training.ddsp_config import DDSPTrainConfig
from timbrelab.training.loop import TrainingRun, config_digest, finite_or_none, log_to_run

STAGE = "train_ddsp"
MODEL_TYPE = "ddsp"        # the registry name, and checkpoint payload["model_type"]
# Fields that do not change the trajectory of the weights: left out of the hash so a run can be extended.
NOT_HASHED = ("max_steps", "val_every_steps", "num_workers", "checkpoint_root", "baseline_steps")
HASH_VERSION = 1
_NOISE_STRIDE = 1_000_003
_TEST_NOISE = _NOISE_STRIDE // 2   # test-split noise keys: seed * stride - this - batch (apart from val's -1 - batch)


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
    return config_digest(operative_config(cfg, stats, data))


# ----------------------------------------------------------------------------------------- lightning

class DDSPLightningModule(LightningModule):
    """DDSP trained on the multi-scale spectral loss against the clip's own audio (autoencoding)."""

    monitor = "val/loss"                         # the best checkpoint's metric (training.loop)
    curve_keys = ("train/loss", "val/loss")      # curves.csv: step, train_loss, val_loss

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

    def export_model(self) -> DDSP:
        return self.model


# ------------------------------------------------------------------------------------------- train

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
    training = TrainingRun(STAGE, operative_config(cfg, stats, data_fingerprint(features_root, cfg.domain)),
                           cfg.checkpoint_root, trainer=cfg.trainer, max_steps=cfg.max_steps,
                           val_every_steps=cfg.val_every_steps, progress=progress)

    module = DDSPLightningModule(model_cfg, stats, cfg.model.lr, cfg.seed)
    dm.setup("fit")
    val_batches = list(dm.val_dataloader())
    # Before fit, while the data module is not attached to a (possibly distributed) trainer: the whole split.
    baseline_batches = list(itertools.islice(iter(dm.train_dataloader()), 8)) if cfg.baseline_steps else []
    initial_val = _evaluate(module.model, val_batches, cfg.seed)
    module.model.train()
    fitted = training.fit(module, dm, mlflow_run_id)
    if fitted.rank:
        return {"rank": fitted.rank}

    export = module.export_model().cpu()
    val_batches = [{k: v.cpu() for k, v in b.items()} for b in val_batches]
    val_loss = _evaluate(export, val_batches, cfg.seed)
    baseline = AverageSpectrumBaseline(model_cfg, stats)
    if cfg.baseline_steps:
        baseline.fit(baseline_batches, steps=cfg.baseline_steps, seed=cfg.seed)
    baseline_val = _evaluate(baseline, val_batches, cfg.seed)
    test_metrics, test_preds, test_tracks = _judge_on_test(export, baseline, test_batches, stats, cfg.seed)

    final_train = fitted.final_train
    metrics = finite_or_none({
        "steps": fitted.steps,
        "val/loss_best": val_loss,
        "val/loss_initial": initial_val,
        "train/loss_final": final_train,
        "gap": val_loss - final_train,
        "baseline/val_loss": baseline_val,
        "margin": baseline_val - val_loss,
        "best_step": fitted.best_step,
        **test_metrics,
        "trainer/world_size": fitted.world_size,
        **fitted.shards,
    })
    payload = make_payload(MODEL_TYPE, export, asdict(model_cfg), train_config=asdict(cfg), stats=stats,
                           digest=training.digest)
    training.write_outputs(out_dir, payload, metrics, fitted)
    registered = None
    if mlflow_run_id is not None:
        run = tracking.StageRun(fitted.client, mlflow_run_id)
        examples = (split_ids(features_root, cfg.domain), test_batches, test_preds, test_tracks)
        registered = log_to_run(run, MODEL_TYPE, cfg.domain, STAGE, out_dir / "model.pt", metrics, training.digest,
                                extras=lambda r: log_resynthesis(r, *examples, model_cfg.sample_rate, model_cfg.hop))
    return {**metrics, "hash": training.digest, "checkpoint_dir": str(training.ckpt_dir),
            "registered_model": registered, "backend": fitted.backend}


def summary(cfg: DDSPTrainConfig, metrics: dict[str, Any]) -> str:
    """The stage's last line: what was trained, how it compares with the baseline, where it went."""
    def num(key: str) -> str:
        value = metrics.get(key)
        return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"

    world = int(metrics.get("trainer/world_size") or 1)
    where = f" on {world} processes ({cfg.trainer.strategy}, {metrics.get('backend')})" if world > 1 else ""
    registered = metrics.get("registered_model")
    return (f"trained DDSP ({cfg.model.preset}) on {cfg.domain} for {metrics.get('steps', '?')} steps{where}: best val "
            f"loss {num('val/loss_best')} (baseline {num('baseline/val_loss')}); test loss {num('test/loss')} "
            f"(baseline {num('baseline/test_loss')}, margin {num('test/margin')}), resynthesis f0 within 50 cents "
            f"on {num('test/f0_within_50c')} of voiced frames" + (f"; registered as {registered}" if registered else ""))


def example(size: str) -> Example:
    """The test matrix's DDSP at preset ``size``: two clips of 0.5 s, its LightningModule's own step."""
    stats = {"loudness_db": {"mean": -40.0, "std": 15.0}}
    cfg = PRESETS[size]
    n = cfg.hop * 125
    generator = torch.Generator().manual_seed(0)
    batch = {"f0_hz": 110.0 + 330.0 * torch.rand(2, n // cfg.hop, generator=generator),
             "loudness_db": -60.0 + 40.0 * torch.rand(2, n // cfg.hop, generator=generator),
             "audio": 0.1 * torch.randn(2, n, generator=generator)}
    module = DDSPLightningModule(cfg, stats, lr=1e-3, seed=0)
    return Example(module.model, lightning_module=module, batch=batch, stream_block=cfg.hop * 4,
                   payload=make_payload(MODEL_TYPE, module.model, asdict(cfg), stats=stats))
