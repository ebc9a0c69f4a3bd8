"""A small timbre (domain) classifier over log-CQT patches, for the evaluation's timbre metrics.

What it is for (issue #5): the acceptance rate of transfer outputs as the target domain, and a Fréchet
distance between its patch embeddings of outputs and of real target clips. Both mean something only if
the classifier tells the domains apart, so :func:`train_classifier` reports held-out accuracy and a
confusion matrix on the test splits.

Input: raw log-CQT as the features stage stores it (``cqt.npy``: ``log(|C| + floor)``), in patches of
``T = patch_frames`` CQT columns (32 columns = 0.5 s at hop 256, 16 kHz): ``(B, n_bins, T)`` or
``(B, 1, n_bins, T)``. The model normalises inside (:meth:`TimbreClassifier.normalise`), so a checkpoint
is self-contained and every input, whatever system produced it, sees the same scale:

* **level-invariant**: each patch's mean log-magnitude is subtracted. A gain is an additive constant in
  log-CQT, so loudness (which the transfer is meant to keep from the source) cannot decide the class;
* a fixed scale, the pooled std of the training domains' ``stats.json`` (one number for all domains:
  per-domain normalisers would need the domain, which is what is being predicted).

**Pitch-robust by design**: a pitch shift translates a harmonic spectrum along the log-frequency axis of the
CQT. The network is convolutional in frequency and pools over frequency (and time) at the end, so the
embedding depends on the *pattern* (harmonic spacing and relative levels, noise, onsets), far less on where
it sits; a transfer keeps the source's pitch, and a classifier that used register would reject good
transfers. The invariance is approximate: strided pooling, the band edges and an instrument's fixed
formants all tie the features to absolute frequency a little.

Architecture: ``len(channels)`` blocks of [3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool] (receptive field
about 46 bins = two octaves at 24 bins/octave with four blocks: enough to see the lowest harmonics together),
then mean- and max-pooling over frequency and time, a linear map to the ``embed_dim`` embedding, and a linear
head over the domains.

Training (:func:`train_classifier`): a plain torch loop (no Lightning: a fixed number of steps over random
patches, no validation schedule, resume or multi-device to manage, and the Trainer's startup would cost more
than the fit). Batches are domain-balanced (round-robin over domains, so a large domain does not swamp a
small one), with clip and start drawn from ``(seed, step)`` alone; the weights' init and every random draw
happen inside a forked torch RNG seeded by ``seed``, so training is deterministic and leaves the global RNG
alone. Evaluation covers every test clip with the patches of :func:`patch_starts`.

Checkpoints (:func:`save_classifier` / :func:`load_classifier`): the one contract of
:mod:`timbrelab.models.checkpoint`, model_type ``"timbre_classifier"``, the CQT grid as its stats.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from timbrelab.data.datasets import FeatureSplit, cqt_normaliser
from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.models import registry
from timbrelab.models.checkpoint import make_payload, plain, save_checkpoint
from timbrelab.models.classifier import GRID_KEYS, MODEL_TYPE, ClassifierConfig, TimbreClassifier
from timbrelab.models.registry import Example

REPRO = "rerun `dvc repro features`"


# ----------------------------------------------------------------------------------------------- model

# ----------------------------------------------------------------------------------------------- config

# ----------------------------------------------------------------------------------------------- data

def patch_starts(n_frames: int, patch_frames: int, hop: int | None = None) -> list[int]:
    """Starts of the patches that cover ``n_frames`` columns: every ``hop`` columns (default ``patch_frames``:
    patches side by side), plus one patch ending on the last column when they do not reach it (it overlaps
    its neighbour). 251 columns, T=32: ``[0, 32, ..., 192, 219]``."""
    if n_frames < patch_frames:
        raise ValueError(f"a clip of {n_frames} CQT columns is shorter than one patch ({patch_frames} columns)")
    step = patch_frames if hop is None else int(hop)
    if step < 1:
        raise ValueError(f"patch hop ({hop}) must be at least 1 column")
    starts = list(range(0, n_frames - patch_frames + 1, step))
    if starts[-1] + patch_frames < n_frames:
        starts.append(n_frames - patch_frames)
    return starts


def clip_patches(cqt: np.ndarray | Tensor, patch_frames: int, hop: int | None = None) -> Tensor:
    """One clip's log-CQT ``(n_bins, n_frames)`` -> ``(P, n_bins, patch_frames)`` covering patches."""
    cqt = torch.as_tensor(np.asarray(cqt, dtype=np.float32)) if isinstance(cqt, np.ndarray) else cqt.float()
    if cqt.ndim != 2:
        raise ValueError(f"expected one clip's log-CQT (n_bins, n_frames), got {tuple(cqt.shape)}")
    return torch.stack([cqt[:, s:s + patch_frames] for s in patch_starts(cqt.shape[1], patch_frames, hop)])


def _open_split(features_root: Path, domain: str, split: str) -> FeatureSplit:
    """A checked, non-empty split; the errors name the missing directory or file."""
    data = FeatureSplit(features_root / domain / split, features_root / domain / "stats.json")
    if not len(data):
        raise TimbrelabError(f"{data.path / 'index.json'}: the split is empty; the classifier needs clips of every "
                             f"domain in it; {REPRO}")
    return data


def _check_grids(splits: Sequence[FeatureSplit], patch_frames: int) -> dict[str, Any]:
    """The CQT grid the splits share (ConfigError naming the first split that differs or is too short)."""
    first = splits[0]
    grid = {key: first.stats.get(key) for key in GRID_KEYS}
    for data in splits:
        other = {key: data.stats.get(key) for key in GRID_KEYS}
        if other != grid:
            diff = sorted(k for k in GRID_KEYS if other[k] != grid[k])
            raise ConfigError(f"{data.stats_where} and {first.stats_where} differ in {diff}: the classifier "
                              f"needs one features.cqt grid for every domain; {REPRO}")
        if data.n_cqt_frames < patch_frames:
            raise ConfigError(f"{data.path}: clips have {data.n_cqt_frames} CQT columns, fewer than "
                              f"classifier.patch_frames={patch_frames}")
    return grid


def pooled_cqt_std(splits: Mapping[str, FeatureSplit]) -> float:
    """Std of log-CQT over the union of the train splits, from each domain's mean/std (weighted by values)."""
    weights, means, variances = [], [], []
    for data in splits.values():
        mean, std = cqt_normaliser(data.stats, data.stats_where)
        weights.append(len(data) * data.n_bins * data.n_cqt_frames)
        means.append(mean)
        variances.append(std * std)
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    mu = float(np.dot(w, means))
    return float(math.sqrt(max(np.dot(w, np.asarray(variances) + np.square(means)) - mu * mu, 1e-12)))


def _train_batch(splits: Sequence[FeatureSplit], patch_frames: int, batch_size: int, seed: int,
                 step: int) -> tuple[Tensor, Tensor]:
    """Batch ``step``: ``(B, n_bins, T)`` raw log-CQT patches and ``(B,)`` domain labels. Domains go
    round-robin over the run (balanced within one patch), clip and start are drawn from ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    labels = (step * batch_size + np.arange(batch_size)) % len(splits)
    patches = []
    for label in labels:
        data = splits[label]
        row = int(rng.integers(len(data)))
        start = int(rng.integers(data.n_cqt_frames - patch_frames + 1))
        patches.append(data.cqt(row, start, start + patch_frames))
    return torch.from_numpy(np.stack(patches)), torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------- train

def train_classifier(features_root: str | os.PathLike, domains: Sequence[str], cfg: ClassifierConfig | None = None,
                     seed: int = 0, progress: bool = True) -> tuple[TimbreClassifier, dict[str, Any]]:
    """Train on ``<features_root>/<domain>/train`` of each domain, judge on its ``test`` split.

    Returns the model (eval mode, CPU) and metrics: ``domains``, ``steps``, ``train/loss_final`` (mean of
    the last 10% of steps), and on the test patches (:func:`evaluate`) ``test/accuracy``,
    ``test/balanced_accuracy``, ``test/per_domain_accuracy``, ``test/confusion`` (rows true, columns
    predicted, in ``domains`` order), ``test/patches`` and ``test/clips`` per domain. Every split is
    opened (and checked) before the fit, so a missing one fails at once with its path.
    """
    cfg = cfg or ClassifierConfig()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, found {seed!r}")
    root = Path(features_root)
    train = {d: _open_split(root, d, "train") for d in domains}
    test = {d: _open_split(root, d, "test") for d in domains}
    grid = _check_grids([*train.values(), *test.values()], cfg.patch_frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TimbreClassifier(list(domains), grid["n_bins"], cfg.patch_frames, cfg.channels, cfg.embed_dim,
                                 pooled_cqt_std(train))
        losses = _fit(model, list(train.values()), cfg, seed, progress)
    model.grid = grid
    tail = losses[-max(1, len(losses) // 10):]
    metrics = {"domains": list(model.domains), "steps": cfg.steps, "train/loss_final": float(np.mean(tail)),
               **evaluate(model, test, cfg.eval_batch_size)}
    return model, metrics


def _fit(model: TimbreClassifier, splits: list[FeatureSplit], cfg: ClassifierConfig, seed: int,
         progress: bool = True) -> list[float]:
    """Adam(W) with a cosine decay over ``cfg.steps`` balanced batches; returns the per-step losses."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.steps)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="train classifier", unit="step", disable=not progress)
    for step in bar:
        patches, labels = _train_batch(splits, cfg.patch_frames, cfg.batch_size, seed, step)
        loss = loss_fn(model(patches), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


# ----------------------------------------------------------------------------------------------- judge

@torch.no_grad()
def _predict_patches(model: TimbreClassifier, patches: Tensor, batch_size: int = 256) -> Tensor:
    """``(P, n_bins, T)`` -> ``(P,)`` predicted domain indices, in eval mode, in batches."""
    model.eval()
    return torch.cat([model(patches[i:i + batch_size]).argmax(dim=1) for i in range(0, len(patches), batch_size)])


def evaluate(model: TimbreClassifier, splits: Mapping[str, FeatureSplit], batch_size: int = 256) -> dict[str, Any]:
    """Patch-level accuracy and confusion on every covering patch of every clip of ``splits``
    (``{domain: split}``, domains of the model)."""
    k = len(model.domains)
    confusion = np.zeros((k, k), dtype=np.int64)
    clips = {}
    for domain, data in splits.items():
        truth = model.domains.index(domain)
        for row in range(len(data)):
            predicted = predict_clip(model, data.cqt(row, 0, data.n_cqt_frames), batch_size)
            confusion[truth] += np.bincount(predicted.numpy(), minlength=k)
        clips[domain] = len(data)
    per_row = confusion.sum(axis=1)
    recall = np.divide(np.diag(confusion), per_row, out=np.zeros(k), where=per_row > 0)
    present = per_row > 0
    return {
        "test/accuracy": float(np.trace(confusion) / max(per_row.sum(), 1)),
        "test/balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "test/per_domain_accuracy": {d: float(recall[i]) for i, d in enumerate(model.domains) if present[i]},
        "test/confusion": confusion.tolist(),
        "test/patches": {d: int(per_row[i]) for i, d in enumerate(model.domains)},
        "test/clips": clips,
    }


def predict_clip(model: TimbreClassifier, cqt: np.ndarray | Tensor, batch_size: int = 256) -> Tensor:
    """One clip's raw log-CQT ``(n_bins, n_frames)`` -> ``(P,)`` predicted domain index per covering patch."""
    return _predict_patches(model, clip_patches(cqt, model.patch_frames), batch_size)


def clip_acceptance(model: TimbreClassifier, cqt: np.ndarray | Tensor, target_domain: str) -> float:
    """Fraction of a clip's covering patches classified as ``target_domain`` (in [0, 1])."""
    if target_domain not in model.domains:
        raise ConfigError(f"target domain {target_domain!r} is not one of the classifier's {list(model.domains)}")
    return float((predict_clip(model, cqt) == model.domains.index(target_domain)).float().mean())


@torch.no_grad()
def clip_embeddings(model: TimbreClassifier, cqt: np.ndarray | Tensor, hop: int | None = None) -> Tensor:
    """One clip's raw log-CQT ``(n_bins, n_frames)`` -> ``(P, embed_dim)`` embeddings of its covering patches,
    one every ``hop`` columns (default: side by side; overlapping patches give the Fréchet distance's
    covariances more, if correlated, samples)."""
    model.eval()
    return model.embed(clip_patches(cqt, model.patch_frames, hop))


# ----------------------------------------------------------------------------------------------- checkpoints

def save_classifier(model: TimbreClassifier, path: str | os.PathLike, *, train_config: ClassifierConfig | None = None,
                    seed: int | None = None, metrics: Mapping[str, Any] | None = None) -> None:
    """Write ``path`` atomically in the one checkpoint contract (:mod:`timbrelab.models.checkpoint`): the CQT
    grid as its stats, the seed and held-out metrics besides."""
    save_checkpoint(path, make_payload(
        MODEL_TYPE, model, model.config(), train_config=plain(asdict(train_config)) if train_config else None,
        stats=getattr(model, "grid", {}) or {}, seed=seed, metrics=plain(metrics)))


def load_classifier(path: str | os.PathLike, map_location: str = "cpu") -> tuple[TimbreClassifier, dict[str, Any]]:
    """A checkpoint of :func:`save_classifier` -> ``(model in eval mode, payload)``; errors name the file."""
    return registry.load(path, MODEL_TYPE, hint="train one with `dvc repro train_classifier`",
                         map_location=map_location)


def example(size: str) -> Example:
    """The test matrix's classifier: ``tiny`` (two narrow blocks) or ``full`` (the pipeline's size), a
    balanced batch of random patches and one step of :func:`_fit`'s optimiser."""
    cfg = ClassifierConfig(channels=(4, 8), embed_dim=8) if size == "tiny" else ClassifierConfig()
    model = TimbreClassifier(["a", "b", "c"], 48, cfg.patch_frames, cfg.channels, cfg.embed_dim, 2.0)
    model.grid = {"n_bins": 48}
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(6, 48, cfg.patch_frames, generator=generator)
    labels = torch.arange(6) % 3
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step() -> None:
        model.train()
        loss = nn.functional.cross_entropy(model(patches), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return Example(model, batch=(patches, labels), step=step,
                   payload=make_payload(MODEL_TYPE, model, model.config(), stats=model.grid))
