"""The one checkpoint contract: what every trained model's ``model.pt`` holds, one atomic save, one safe load.

Payload (plain containers and tensors only, so ``torch.load(weights_only=True)`` reads it)::

    {"model_type": "ddsp",          # the registry name (timbrelab.models.registry); loaders refuse others
     "format": 1,                   # FORMAT when written; a newer one is refused with "upgrade timbrelab"
     "state_dict": {...},           # tensors, detached, contiguous, on the CPU
     "model_config": {...},         # what the model's builder needs besides stats
     "train_config": {...} | None,  # how it was trained, plain containers (for people; never needed to load)
     "stats": {...} | None,         # the training data's statistics / grid the model depends on
     "hash": "..." | None,          # the operative config hash of the run that made it
     **extra}                       # model-specific fields (the classifier's metrics, say)

The file is serialised in memory and written atomically: ``torch.save`` records the target's file name inside
the archive, and a temporary file's random name would make identical weights hash differently.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from timbrelab.errors import TimbrelabError, first_line
from timbrelab.fsutil import atomic_write_bytes

FORMAT = 1
REQUIRED = ("model_type", "format", "state_dict", "model_config")


class CheckpointError(TimbrelabError):
    """A file that cannot be used as the checkpoint asked for: missing, damaged, foreign, of another model."""


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors detached, contiguous and on the CPU (what a payload stores)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def plain(value: Any) -> Any:
    """JSON-shaped copy of ``value`` (tuples become lists): only containers ``weights_only`` loads."""
    return json.loads(json.dumps(value)) if value is not None else None


def make_payload(model_type: str, model: torch.nn.Module, model_config: Mapping[str, Any], *,
                 train_config: Mapping[str, Any] | None = None, stats: Mapping[str, Any] | None = None,
                 digest: str | None = None, **extra: Any) -> dict[str, Any]:
    """The payload of the contract (see the module doc), in its fixed key order."""
    return {"model_type": model_type, "format": FORMAT, "state_dict": plain_state_dict(model),
            "model_config": dict(model_config), "train_config": dict(train_config) if train_config is not None
            else None, "stats": plain(stats), "hash": digest, **extra}


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (from :func:`make_payload`) to ``path`` atomically."""
    missing = [key for key in REQUIRED if key not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    blob = io.BytesIO()
    torch.save(dict(payload), blob)
    atomic_write_bytes(path, blob.getvalue())


ZIP_MAGIC = b"PK\x03\x04"   # torch.save writes a zip archive


def torch_load(path: str | os.PathLike, *, hint: str = "", map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file: missing, empty, not a
    checkpoint at all (a text file, say), truncated or damaged, or holding objects a weights-only load refuses to
    run (never a pointer at the unsafe way to load it). Every timbrelab checkpoint is read through this."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint{tail}" if not path.is_dir() else
                              f"{path}: a directory, not a checkpoint file{tail}")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise CheckpointError(f"{path}: an empty file, not a checkpoint{tail}")
    if head != ZIP_MAGIC:
        raise CheckpointError(f"{path}: not a timbrelab checkpoint (a torch checkpoint is a zip archive; this file "
                              f"is not one){tail}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message goes on to suggest the unsafe load: it is not repeated here.
        raise CheckpointError(f"{path}: refused: it holds objects that a safe (weights-only) load will not run, so "
                              f"it is not a checkpoint timbrelab wrote; do not load it{tail}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a truncated or damaged archive
        raise CheckpointError(f"{path}: not a timbrelab checkpoint (truncated, or another kind of file: "
                              f"{type(exc).__name__}: {first_line(exc)}){tail}") from None


def load_payload(path: str | os.PathLike, model_type: str | None = None, *, hint: str = "",
                 map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``model.pt`` -> its payload (:func:`torch_load`); :class:`CheckpointError` naming the file also for a
    payload that is not the contract's, a newer format, or (with ``model_type``) another model's.
    ``hint`` says how to make the file (e.g. "train one with `dvc repro train_ddsp`")."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    payload = torch_load(path, hint=hint, map_location=map_location)
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED):
        raise CheckpointError(f"{path}: not a timbrelab model checkpoint (a Lightning .ckpt or another file?); "
                              f"use the model.pt a train stage writes{tail}")
    version = payload["format"]
    if not isinstance(version, int) or version > FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {version!r} is newer than this timbrelab reads "
                              f"({FORMAT}); upgrade timbrelab")
    if model_type is not None and payload["model_type"] != model_type:
        raise CheckpointError(f"{path}: a {payload['model_type']!r} checkpoint, but a {model_type!r} model was "
                              "asked for")
    return payload


def restore(path: str | os.PathLike, payload: Mapping[str, Any], model: torch.nn.Module) -> torch.nn.Module:
    """Load the payload's weights into ``model`` (eval mode); CheckpointError when they do not fit."""
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit the {payload['model_type']!r} model of this "
                              f"timbrelab version ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return model.eval()
