"""prepare: raw domains -> data/prepared/<domain>/<split>/ with a policy per kind of domain.

Recordings (cello, source) are resampled, trimmed, loudness-normalised, segmented and split by
recording; NSynth notes stay whole with their velocity and official split.
"""

from __future__ import annotations

import sys
from pathlib import Path

from timbrelab.config import PrepareConfig
from timbrelab.errors import TimbrelabError
from timbrelab.fsutil import atomic_dir, atomic_write_json, round_floats
from timbrelab.stages.common import StageResult, run_stage, write_manifest

STAGE = "prepare"
SCHEMAS = PrepareConfig
RAW = Path("data/raw")
OUT = Path("data/prepared")
PLOT = Path("reports/plots/prepare_splits.json")
RECORDING_DOMAINS = ("cello", "source")
NOTE_DOMAINS = ("nsynth",)


def run(cfg: PrepareConfig, root: Path) -> StageResult:
    from timbrelab.data.prepare import prepare_notes, prepare_recordings

    summaries = []
    with atomic_dir(root / OUT) as tmp:
        for domain in RECORDING_DOMAINS:
            summaries.append(prepare_recordings(root / RAW / domain, tmp / domain, cfg, domain=domain))
        for domain in NOTE_DOMAINS:
            summaries.append(prepare_notes(root / RAW / domain, tmp / domain, cfg, domain=domain))
        skipped = [{"domain": s["domain"], **entry} for s in summaries for entry in s.get("skipped", [])]
        for summary in summaries:
            clips = sum(stats.get("segments", 0) for stats in summary["splits"].values())
            if not clips:
                raise TimbrelabError(f"{STAGE}: domain '{summary['domain']}' produced no clips "
                                     f"({len(summary.get('skipped', []))} inputs skipped; see data/raw/"
                                     f"{summary['domain']}/manifest.json and the {STAGE} section)")
        # Per-note split maps would make the manifest grow with NSynth: each split's index.json has them.
        write_manifest(tmp / "manifest.json", stage=STAGE, cfg=cfg, items=[], failed=skipped,
                       domains={s["domain"]: {k: v for k, v in s.items()
                                              if k != "skipped" and not (k == "recordings" and s["kind"] == "notes")}
                                for s in summaries})

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
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
