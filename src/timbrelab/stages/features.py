"""features: data/prepared/<domain>/<split>/ -> data/features/<domain>/<split>/ (log-CQT, f0 with
confidence, A-weighted loudness, audio; memory-mapped), <domain>/stats.json of the train split, and a
data report per domain (reports/data/<domain>.png)."""

from __future__ import annotations

import sys
from pathlib import Path

from timbrelab.config import FeaturesConfig
from timbrelab.data import features as lib
from timbrelab.errors import TimbrelabError
from timbrelab.fsutil import atomic_dir, atomic_write_json, round_floats
from timbrelab.stages.common import StageResult, run_stage, write_manifest

STAGE = "features"
SCHEMAS = FeaturesConfig
PREPARED = Path("data/prepared")
OUT = Path("data/features")
REPORT = Path("reports/data")


def run(cfg: FeaturesConfig, root: Path) -> StageResult:
    ratio = lib.check_config(cfg)
    metrics: dict[str, float] = {}
    skipped: list[dict] = []
    per_domain: dict[str, dict] = {}
    with atomic_dir(root / OUT) as tmp, atomic_dir(root / REPORT) as report_tmp, lib.clip_mapper(cfg) as mapper:
        for domain in cfg.domains:
            source = root / PREPARED / domain
            if not source.is_dir():
                raise TimbrelabError(f"{STAGE}: {PREPARED / domain} does not exist; is '{domain}' in "
                                     "features.domains a prepared domain? (rerun `dvc repro prepare`)")
            per_split = {}
            for split in lib.SPLITS:
                summary = lib.extract_split(source / split, tmp / domain / split, cfg, label=f"{domain}/{split}",
                                            mapper=mapper)
                summary["voiced_seconds"] = lib.voiced_seconds(tmp / domain / split, cfg)
                skipped += [{"domain": domain, "split": split, **entry} for entry in summary.pop("skipped")]
                per_split[split] = summary
                metrics[f"{domain}.{split}.clips"] = summary["clips"]
                metrics[f"{domain}.{split}.voiced_seconds"] = round(summary["voiced_seconds"], 3)
            if not per_split["train"]["clips"]:
                raise TimbrelabError(f"{STAGE}: no usable train clips in {PREPARED / domain} (see the skipped "
                                     f"reasons in the MLflow run / rerun prepare)")
            stats = lib.domain_stats(tmp / domain, cfg, ratio)
            atomic_write_json(tmp / domain / "stats.json", round_floats(stats))
            lib.write_report(domain, stats, per_split, report_tmp / f"{domain}.png")
            metrics[f"{domain}.voiced_fraction"] = round(stats["f0"]["voiced_fraction"], 4)
            metrics[f"{domain}.mean_midi"] = round(stats["f0"]["mean_midi"], 3)
            per_domain[domain] = per_split
        metrics["skipped"] = len(skipped)
        write_manifest(tmp / "manifest.json", stage=STAGE, cfg=cfg, items=[], failed=skipped,
                       domains=round_floats(per_domain))
    clips = sum(int(v) for k, v in metrics.items() if k.endswith(".clips"))
    artifacts = [root / OUT / "manifest.json", *[root / OUT / d / "stats.json" for d in cfg.domains],
                 *[root / REPORT / f"{d}.png" for d in cfg.domains]]
    return StageResult(metrics=metrics, artifacts=artifacts,
                       summary=f"wrote features of {clips} clips for {', '.join(cfg.domains)} to {OUT} and the "
                       f"data report to {REPORT}, {len(skipped)} skipped")


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
