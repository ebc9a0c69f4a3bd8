"""The transfer set: the held-out clips every system is judged on, fixed by a seed.

Three groups of prepared 4 s clips, copied (with their true f0 tracks) into one folder so that the
evaluation and the report never reach back into ``data/prepared``:

* ``source/``: up to ``n_clips`` clips of the source domain's test split. Every system transfers these;
  each needs the ``.f0.csv`` truth the source generator saved (the pitch metrics score against it).
* ``target/``: up to ``n_clips`` real target clips from the target's ``target_split`` (valid by default):
  the "real target" row, the ceiling for the timbre metrics, and the real instrument beside each source
  clip in the listening report.
* ``reference/``: the target's ``reference_split`` (test by default, at most ``max_reference_clips``): the
  real clips the Fréchet distance compares outputs with, and the set each model reconstructs. It is disjoint
  from ``target/`` by recording (prepare splits by recording), so the real-target row's Fréchet distance is
  a genuine real-vs-real distance, not a set compared with itself.

Selection: the split's clip ids sorted, then ``numpy.random.default_rng(seed).choice`` without replacement,
kept in sorted order: the same prepared data and seed give the same set on every machine.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.fsutil import read_json, sha256_file

GROUPS = ("source", "target", "reference")
MANIFEST = "manifest.json"


@dataclass
class TransferSetConfig:
    source_domain: str = "source"
    target_domain: str = "cello"
    source_split: str = "test"
    target_split: str = "valid"
    reference_split: str = "test"
    n_clips: int = 12
    max_reference_clips: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source_domain == self.target_domain:
            raise ConfigError(f"transfer_set: source_domain and target_domain are both {self.source_domain!r}")
        if self.target_split == self.reference_split:
            raise ConfigError(f"transfer_set: target_split and reference_split are both {self.target_split!r}; "
                              "the real-target row must not be scored against its own clips")
        for key in ("n_clips", "max_reference_clips"):
            if getattr(self, key) < 1:
                raise ConfigError(f"transfer_set.{key} ({getattr(self, key)}) must be at least 1")


def _split_index(prepared: Path, domain: str, split: str) -> list[dict[str, Any]]:
    index = prepared / domain / split / "index.json"
    if not index.is_file():
        raise TimbrelabError(f"{index}: missing; the transfer set takes {domain!r} clips from its {split!r} split "
                             "(a recording domain prepared by `dvc repro prepare`)")
    return sorted(read_json(index), key=lambda entry: entry["id"])


def choose(ids: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``ids`` (all if fewer), drawn by ``seed`` from the sorted list, returned sorted."""
    ordered = sorted(ids)
    if len(ordered) <= n:
        return ordered
    picked = np.random.default_rng(seed).choice(len(ordered), size=n, replace=False)
    return [ordered[i] for i in sorted(picked)]


def _copy_clip(entry: Mapping[str, Any], src_dir: Path, dst_dir: Path, *, with_f0: bool) -> dict[str, Any]:
    dst_dir.mkdir(parents=True, exist_ok=True)
    item = {"id": entry["id"], "recording": entry.get("recording", entry["id"]), "file": entry["file"],
            "duration_s": entry.get("duration_s")}
    shutil.copyfile(src_dir / entry["file"], dst_dir / entry["file"])
    item["sha256"] = sha256_file(dst_dir / entry["file"])
    if with_f0:
        shutil.copyfile(src_dir / entry["f0_file"], dst_dir / entry["f0_file"])
        item["f0_file"] = entry["f0_file"]
    return item


def build_transfer_set(prepared: Path, out: Path, cfg: TransferSetConfig) -> dict[str, Any]:
    """Copy the chosen clips into ``out/<group>/`` -> ``{"groups": {group: [item, ...]}, "failed": [...]}``.

    Source clips without a true f0 track are skipped (listed in ``failed`` with the reason); a group left
    empty is an error naming the split.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    failed: list[dict[str, Any]] = []
    plan = {
        "source": (cfg.source_domain, cfg.source_split, cfg.n_clips, cfg.seed),
        "target": (cfg.target_domain, cfg.target_split, cfg.n_clips, cfg.seed + 1),
        "reference": (cfg.target_domain, cfg.reference_split, cfg.max_reference_clips, cfg.seed + 2),
    }
    for group, (domain, split, n, seed) in plan.items():
        entries = _split_index(prepared, domain, split)
        if group == "source":
            for entry in entries:
                if not entry.get("f0_file"):
                    failed.append({"id": entry["id"], "group": group,
                                   "reason": "no true f0 track (.f0.csv): the pitch metrics need one"})
            entries = [entry for entry in entries if entry.get("f0_file")]
        by_id = {entry["id"]: entry for entry in entries}
        src_dir = prepared / domain / split
        groups[group] = [_copy_clip(by_id[i], src_dir, out / group, with_f0=group == "source")
                         for i in choose(list(by_id), n, seed)]
        if not groups[group]:
            raise TimbrelabError(f"{src_dir}: no usable {domain!r} clips in the {split!r} split for the transfer set's "
                                 f"{group!r} group; check the prepare stage's output")
    return {"groups": groups, "failed": failed}


@dataclass(frozen=True)
class Clip:
    """One clip of the transfer set, as the evaluation reads it."""

    id: str
    group: str
    path: Path
    f0_path: Path | None = None


class TransferSet:
    """``data/transfer_set/`` read back: its clips per group and the features config of the target."""

    def __init__(self, root: Path):
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise TimbrelabError(f"{manifest_path}: missing; build the transfer set with `dvc repro transfer_set`")
        self.manifest = read_json(manifest_path)
        self.features_config: dict[str, Any] = self.manifest["features_config"]
        self.target_domain: str = self.manifest["config"]["target_domain"]
        self.source_domain: str = self.manifest["config"]["source_domain"]

    def clips(self, group: str) -> list[Clip]:
        if group not in GROUPS:
            raise ValueError(f"unknown transfer-set group {group!r}; expected one of {GROUPS}")
        folder = self.root / group
        return [Clip(item["id"], group, folder / item["file"],
                     folder / item["f0_file"] if item.get("f0_file") else None)
                for item in self.manifest["groups"][group]]

    @property
    def sample_rate(self) -> int:
        return int(self.features_config["sample_rate"])


def seconds(items: list[Mapping[str, Any]]) -> float:
    return float(math.fsum(float(item.get("duration_s") or 0.0) for item in items))
