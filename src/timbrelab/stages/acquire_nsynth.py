"""acquire_nsynth: NSynth notes in NSynth's layout -> data/raw/nsynth/<split>/ + manifest.json."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from timbrelab.config import ACQUIRE_NSYNTH, NSynthDownloadConfig, NSynthLocalConfig, OfflineNSynthConfig
from timbrelab.errors import ConfigError
from timbrelab.fsutil import atomic_dir
from timbrelab.stages.common import StageResult, require_items, run_stage, write_manifest

STAGE = "acquire_nsynth"
SCHEMAS = ACQUIRE_NSYNTH
OUT = Path("data/raw/nsynth")


def run(cfg, root: Path) -> StageResult:
    out = root / OUT
    with atomic_dir(out) as tmp:
        if isinstance(cfg, OfflineNSynthConfig):
            from timbrelab.data.nsynth_offline import render_offline_nsynth

            if not cfg.families:
                raise ConfigError(f"{STAGE}.families is empty: give family -> GM programs, e.g. string: [40, 42]")
            result = render_offline_nsynth(cfg, tmp)
        elif isinstance(cfg, (NSynthDownloadConfig, NSynthLocalConfig)):
            from timbrelab.data import nsynth

            if isinstance(cfg, NSynthDownloadConfig):
                cfg_abs = _with_root(cfg, root, "cache_dir")
                result = nsynth.acquire_download(cfg_abs, tmp)
            else:
                result = nsynth.acquire_local(_with_root(cfg, root, "path"), tmp)
        else:
            raise ConfigError(f"{STAGE}: unsupported source {cfg.source!r}")
        items, failed = result.get("items", []), result.get("failed", [])
        require_items(STAGE, items, failed)
        write_manifest(tmp / "manifest.json", stage=STAGE, cfg=cfg, items=items, failed=failed, domain="nsynth")
    per_split = Counter(item["split"] for item in items)
    metrics = {"notes": len(items), "failed": len(failed), **{f"notes_{s}": n for s, n in sorted(per_split.items())}}
    return StageResult(
        metrics=metrics,
        artifacts=[out / "manifest.json"],
        summary=f"wrote {len(items)} NSynth notes ({dict(sorted(per_split.items()))}) to {OUT}, {len(failed)} failed",
    )


def _with_root(cfg, root: Path, key: str):
    import dataclasses

    return dataclasses.replace(cfg, **{key: str(root / getattr(cfg, key))})


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
