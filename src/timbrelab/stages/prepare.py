"""prepare: raw domains -> data/prepared/<domain>/<split>/ with a policy per kind of domain.

Recordings (cello, source) are resampled, trimmed, loudness-normalised, segmented and split by
recording; NSynth notes stay whole with their velocity and official split.
"""

from __future__ import annotations

import sys
from pathlib import Path

from timbrelab.config import PrepareConfig
from timbrelab.errors import ConfigError
from timbrelab.fsutil import atomic_dir, atomic_write_json, round_floats
from timbrelab.stages.common import StageResult, run_stage, write_manifest

STAGE = "prepare"
RAW = Path("data/raw")
OUT = Path("data/prepared")
PLOT = Path("reports/plots/prepare_splits.json")
RECORDING_DOMAINS = ("cello", "source")
NOTE_DOMAINS = ("nsynth",)


def prepare(cfg: PrepareConfig, root: Path) -> StageResult:
    from timbrelab.data.prepare import prepare_notes, prepare_recordings

    split_sum = cfg.split.train + cfg.split.valid + cfg.split.test
    if abs(split_sum - 1.0) > 1e-6:
        raise ConfigError(f"{STAGE}.split: train + valid + test must be 1, got {split_sum:g}")
    summaries = []
    with atomic_dir(root / OUT) as tmp:
        for domain in RECORDING_DOMAINS:
            summaries.append(prepare_recordings(root / RAW / domain, tmp / domain, cfg, domain=domain))
        for domain in NOTE_DOMAINS:
            summaries.append(prepare_notes(root / RAW / domain, tmp / domain, cfg, domain=domain))
        skipped = [{"domain": s["domain"], **entry} for s in summaries for entry in s.get("skipped", [])]
        write_manifest(tmp / "manifest.json", stage=STAGE, cfg=cfg, items=[], failed=skipped,
                       domains={s["domain"]: {k: v for k, v in s.items() if k != "skipped"} for s in summaries})

    rows, metrics = [], {"skipped": len(skipped)}
    for summary in summaries:
        domain = summary["domain"]
        for split, stats in sorted(summary["splits"].items()):
            count = stats.get("segments", stats.get("notes", 0))
            rows.append({"domain": domain, "split": split, "items": count, "seconds": stats.get("seconds", 0.0)})
            metrics[f"{domain}.{split}.items"] = count
            metrics[f"{domain}.{split}.seconds"] = stats.get("seconds", 0.0)
        metrics[f"{domain}.dropped_silent"] = summary.get("segments_dropped_silent", 0)
    atomic_write_json(root / PLOT, round_floats(rows))
    total = sum(row["items"] for row in rows)
    counts = ", ".join(f"{row['domain']}/{row['split']}={row['items']}" for row in rows)
    return StageResult(
        metrics=metrics,
        artifacts=[root / OUT / "manifest.json", root / PLOT],
        summary=f"wrote {total} clips to {OUT} ({counts}), {len(skipped)} skipped",
    )


def main() -> int:
    return run_stage(STAGE, PrepareConfig, prepare)


if __name__ == "__main__":
    sys.exit(main())
