"""Where a Lightning training runs: the ``trainer`` section (conf/trainer/*.yaml, placed at the top level and
interpolated into every train stage's section, so ``-S trainer=gpu`` moves every training) -> ``Trainer``
arguments. Messages name the key relative to the section (``trainer.devices``); the stage's config loader
prefixes the stage (``train_ddsp.trainer.devices``).

* ``cpu`` (the default): one CPU process, 32-bit (the committed dvc.lock is a CPU result).
* ``gpu``: one GPU, bf16 mixed precision.
* ``ddp``: several GPUs and nodes with Lightning DDP (``devices`` per node x ``num_nodes`` processes).
* ``ddp_cpu``: DDP over CPU processes (gloo), to check a distributed setup on a machine without GPUs.

Under DDP ``batch_size`` is per process (the effective batch is ``batch_size x world size``), and the
training split is sharded by :class:`timbrelab.data.datasets.EpochSampler` (disjoint items per rank in each
epoch; the remainder of an epoch that does not divide evenly is left out, never repeated), so Lightning's
own distributed sampler is turned off. Validation runs on the whole valid split in every rank (the same
value everywhere, so every rank agrees on the best checkpoint). :class:`timbrelab.training.shards.ShardCheck`
reports what each rank was handed. No Lightning import here: stage configs validate without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
                raise ConfigError(f"trainer.{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        for name in ("devices", "num_nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"trainer.{name} must be a positive integer, found {value!r}")
        if self.world_size > 1 and self.strategy != "ddp":
            raise ConfigError(f"trainer: {self.world_size} processes need strategy=ddp "
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
