"""Where a Lightning training runs: ``train_ddsp.trainer`` (conf/trainer/*.yaml) -> ``Trainer`` arguments.

* ``cpu`` (the default): one CPU process, 32-bit (the committed dvc.lock is a CPU result).
* ``gpu``: one GPU, bf16 mixed precision.
* ``ddp``: several GPUs and nodes with Lightning DDP (``devices`` per node x ``num_nodes`` processes).
* ``ddp_cpu``: DDP over CPU processes (gloo), to check a distributed setup on a machine without GPUs.

Under DDP ``batch_size`` is per process (the effective batch is ``batch_size x world size``), and the
training split is sharded by :class:`timbrelab.data.datasets.EpochSampler` (disjoint items per rank in each
epoch; the remainder of an epoch that does not divide evenly is left out, never repeated), so Lightning's
own distributed sampler is turned off. Validation runs on the whole valid split in every rank (the same
value everywhere, so every rank agrees on the best checkpoint). :class:`ShardCheck` reports what each rank
was handed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from lightning.pytorch import Callback

from timbrelab.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp")   # ddp_spawn would lose the callbacks' state (curves) in the spawned processes
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
REFERENCE = {"precision": "32-true", "world_size": 1}   # the trainer every earlier checkpoint cache was made on


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1          # processes (GPUs, or CPU processes for ddp on cpu) per node
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"

    def __post_init__(self) -> None:
        for name, allowed in (("accelerator", ACCELERATORS), ("strategy", STRATEGIES), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train_ddsp.trainer.{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        for name in ("devices", "num_nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train_ddsp.trainer.{name} must be a positive integer, found {value!r}")
        if self.world_size > 1 and self.strategy != "ddp":
            raise ConfigError(f"train_ddsp.trainer: {self.world_size} processes need strategy=ddp "
                              f"(found {self.strategy!r}); use trainer=ddp or trainer=ddp_cpu")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def operative(self) -> dict[str, Any]:
        """What changes the weights' trajectory (precision, number of processes: the effective batch); empty
        for the reference trainer, so the checkpoint cache key of a default run never changed."""
        fields = {"precision": self.precision, "world_size": self.world_size}
        return {} if fields == REFERENCE else fields

    def kwargs(self) -> dict[str, Any]:
        """Arguments of ``lightning.pytorch.Trainer``."""
        return {"accelerator": self.accelerator, "devices": self.devices, "num_nodes": self.num_nodes,
                "strategy": self.strategy, "precision": self.precision, "use_distributed_sampler": False}


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
