"""Which process of a distributed launch this is, read from the environment before any training starts.

A stage runs once per process under DDP: Lightning's own launcher starts the other ranks by re-running
the command line (``LOCAL_RANK``/``NODE_RANK`` set), torchrun sets ``RANK``, SLURM sets ``SLURM_PROCID``.
Only the primary process (global rank 0) opens the stage's MLflow run and writes its outputs; the others
only train. No torch import here: the stage wrapper asks before anything heavy is loaded.
"""

from __future__ import annotations

import os


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def is_primary() -> bool:
    """True unless the launcher says this process is not global rank 0 (True outside a distributed launch).
    Without a global rank (Lightning's own launcher) any child (``LOCAL_RANK`` > 0) or process on another
    node (``NODE_RANK`` > 0) is not primary."""
    rank = _int_env("RANK")
    if rank is None and (_int_env("SLURM_NTASKS") or 1) > 1:
        rank = _int_env("SLURM_PROCID")
    if rank is not None:
        return rank == 0
    return (_int_env("LOCAL_RANK") or 0) == 0 and (_int_env("NODE_RANK") or 0) == 0


def launched_externally() -> bool:
    """True when something outside Lightning started every rank (torchrun, or SLURM with several tasks):
    then Lightning does not re-run the command line to start them."""
    if _int_env("RANK") is not None and _int_env("WORLD_SIZE") is not None:
        return True
    return (_int_env("SLURM_NTASKS") or 1) > 1 and _int_env("SLURM_PROCID") is not None
