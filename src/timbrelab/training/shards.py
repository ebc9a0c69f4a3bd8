"""Under DDP: which training items each rank was handed, gathered at the end of the fit (no item in two shards)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch.distributed as dist
from lightning.pytorch import Callback


def _gather(trainer: Any, value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` in a single process)."""
    if trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def shard_report(handed: list[list[tuple[int, int]]]) -> dict[str, int]:
    """From each rank's ``(epoch, index)`` keys: items handed out in all, items handed to more than one rank."""
    owners = Counter(key for keys in handed for key in set(keys))
    return {"trainer/items_handed": sum(len(keys) for keys in handed),
            "trainer/items_shared": sum(1 for count in owners.values() if count > 1)}


class ShardCheck(Callback):
    """Under DDP, at the end of fit: gathers the training keys each rank's sampler handed out in the last
    epoch and keeps :func:`shard_report` of them in ``report`` (on every rank), and the process group's
    backend. Nothing in a single process, and nothing when the fit had no step left to train (a resumed,
    finished run), so that outputs do not depend on whether a run was resumed."""

    def __init__(self) -> None:
        self.report: dict[str, int] = {}
        self.backend: str | None = None

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.world_size == 1:
            return
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        self.report = shard_report(_gather(trainer, list(getattr(sampler, "handed", []))))
        self.backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
