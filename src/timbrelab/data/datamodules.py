"""Lightning DataModules over the feature datasets (:mod:`timbrelab.data.datasets`): seeded loaders, the train
split sharded per DDP rank. Apart from the datasets so that reading features never imports Lightning."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from timbrelab.data.datasets import (
    REPRO,
    DDSPDataset,
    EpochSampler,
    UnpairedCQTDataset,
    WaveNetDataset,
    check_seed,
    load_stats,
    seed_worker,
)
from timbrelab.errors import ConfigError, TimbrelabError




class _FeatureDataModule(LightningDataModule):
    """Train loader on ``train`` (shuffled by :class:`EpochSampler`, random crops), val on ``valid`` and
    test on ``test`` (in order, crops at 0). Every loader has a seeded generator and
    :func:`seed_worker`, so batches are identical across runs and for any ``num_workers``."""

    def __init__(self, features_root: str | os.PathLike, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, found {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers must be a non-negative integer, found {num_workers!r}")
        self.features_root = Path(features_root)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, check_seed(seed)
        self.datasets: dict[str, Dataset] = {}
        self.resume_batches = 0   # train batches a resumed run has already taken (training.loop sets it)

    def stats_path(self, domain: str) -> Path:
        if not (self.features_root / domain).is_dir():
            raise TimbrelabError(f"{self.features_root / domain}: no such feature domain (the features stage "
                                 f"writes the domains in features.domains); {REPRO}")
        return self.features_root / domain / "stats.json"

    def stats(self, domain: str) -> dict[str, Any]:
        """The checked ``<features_root>/<domain>/stats.json`` (for models: loudness and pitch ranges)."""
        return load_stats(self.stats_path(domain))

    def _make(self, split: str, train: bool) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        wanted = {"validate": ("valid",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "valid")):
            self._dataset(split)

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = self._make(split, train=split == "train")
        return self.datasets[split]

    def _loader(self, split: str) -> DataLoader:
        # Evaluation loaders keep plain int keys: their datasets stay at epoch 0 (fixed crops, pairings)
        # even though Lightning also calls set_epoch on evaluation samplers.
        dataset = self._dataset(split)
        sampler = None
        if split == "train":
            sampler = EpochSampler(len(dataset), self.seed, **self._shard())
            per_epoch = math.ceil(len(sampler) / self.batch_size)
            if self.resume_batches % per_epoch:   # resumed mid-epoch: that epoch's remaining batches only
                sampler.resume_at(self.resume_batches // per_epoch, self.resume_batches % per_epoch * self.batch_size)
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler,
            num_workers=self.num_workers, worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0, drop_last=False,
        )

    def _shard(self) -> dict[str, int]:
        """This process's share of the train split: its rank and the world size of the trainer the module is
        attached to (Lightning sets ``self.trainer`` before it asks for loaders); the whole split otherwise."""
        trainer = self.trainer
        if trainer is None:
            return {"rank": 0, "world_size": 1}
        return {"rank": int(trainer.global_rank), "world_size": int(trainer.world_size)}

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class DDSPDataModule(_FeatureDataModule):
    """:class:`DDSPDataset` batches of one domain: ``audio (B, F * frame_hop)``, the rest ``(B, F)``."""

    def __init__(self, features_root: str | os.PathLike, domain: str, batch_size: int,
                 crop_seconds: float | None, num_workers: int = 0, seed: int = 0):
        super().__init__(features_root, batch_size, num_workers, seed)
        self.domain, self.crop_seconds = domain, crop_seconds

    def _make(self, split: str, train: bool) -> Dataset:
        root = self.features_root / self.domain
        return DDSPDataset(root / split, self.stats_path(self.domain), self.crop_seconds, self.seed, random_crop=train)


class CycleGANDataModule(_FeatureDataModule):
    """:class:`UnpairedCQTDataset` batches: ``a``, ``b`` each ``(B, 1, n_bins, crop_frames)`` in training; valid
    and test items are whole clips (a fully convolutional generator takes any length)."""

    def __init__(self, features_root: str | os.PathLike, domain_a: str, domain_b: str, batch_size: int,
                 crop_frames: int, num_workers: int = 0, seed: int = 0):
        super().__init__(features_root, batch_size, num_workers, seed)
        self.domain_a, self.domain_b, self.crop_frames = domain_a, domain_b, crop_frames

    def _make(self, split: str, train: bool) -> Dataset:
        root = self.features_root
        return UnpairedCQTDataset(root / self.domain_a / split, root / self.domain_b / split,
                                  self.stats_path(self.domain_a), self.stats_path(self.domain_b),
                                  self.crop_frames if train else None, self.seed, random_crop=train)


class WaveNetDataModule(_FeatureDataModule):
    """:class:`WaveNetDataset` batches: ``cqt (B, n_bins, crop_frames)``, ``audio (B, crop_frames * cqt_hop)``."""

    def __init__(self, features_root: str | os.PathLike, domain: str, batch_size: int, crop_frames: int,
                 num_workers: int = 0, seed: int = 0):
        super().__init__(features_root, batch_size, num_workers, seed)
        self.domain, self.crop_frames = domain, crop_frames

    def _make(self, split: str, train: bool) -> Dataset:
        root = self.features_root / self.domain
        return WaveNetDataset(root / split, self.stats_path(self.domain), self.crop_frames, self.seed,
                              random_crop=train)
