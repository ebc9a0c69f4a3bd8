"""transfer_set: data/prepared/ -> data/transfer_set/ (source, target and reference clips, manifest.json).

The held-out clips every system of the evaluation transfers and is scored on, fixed by a seed
(:mod:`timbrelab.evaluation.transfer_set`). The target's features config (data/features/<target>/stats.json)
goes into the manifest: every evaluation computes f0, loudness and CQT of its outputs with those settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

from timbrelab.errors import TimbrelabError
from timbrelab.evaluation.transfer_set import MANIFEST, TransferSetConfig, build_transfer_set, seconds
from timbrelab.fsutil import atomic_dir, read_json
from timbrelab.stages.common import StageResult, run_stage, write_manifest

STAGE = "transfer_set"
SCHEMAS = TransferSetConfig
PREPARED = Path("data/prepared")
FEATURES = Path("data/features")
OUT = Path("data/transfer_set")


def _features_config(root: Path, domain: str) -> dict:
    stats = root / FEATURES / domain / "stats.json"
    if not stats.is_file():
        raise TimbrelabError(f"{stats}: missing; the evaluation computes its features like the features stage "
                             "did for the target domain; run `dvc repro features`")
    return read_json(stats)["features_config"]


def run(cfg: TransferSetConfig, root: Path) -> StageResult:
    features_config = _features_config(root, cfg.target_domain)
    with atomic_dir(root / OUT) as tmp:
        built = build_transfer_set(root / PREPARED, tmp, cfg)
        items = [{"group": group, **item} for group, entries in built["groups"].items() for item in entries]
        write_manifest(tmp / MANIFEST, stage=STAGE, cfg=cfg, items=items, failed=built["failed"],
                       groups=built["groups"], features_config=features_config)
    groups = built["groups"]
    metrics = {f"{group}.clips": len(entries) for group, entries in groups.items()}
    metrics.update({f"{group}.seconds": seconds(entries) for group, entries in groups.items()})
    metrics["skipped"] = len(built["failed"])
    counts = ", ".join(f"{len(entries)} {group}" for group, entries in groups.items())
    return StageResult(metrics=metrics, artifacts=[root / OUT / MANIFEST],
                       summary=f"chose {counts} clips into {OUT} (seed {cfg.seed}), {len(built['failed'])} skipped")


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
