"""acquire_nsynth: NSynth notes in NSynth's layout -> data/raw/nsynth/<split>/ + manifest.json."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from timbrelab.config import ACQUIRE_NSYNTH, NSynthDownloadConfig, NSynthLocalConfig, OfflineNSynthConfig
from timbrelab.errors import ConfigError
from timbrelab.stages.common import StageResult, acquire_into, run_stage

STAGE = "acquire_nsynth"
SCHEMAS = ACQUIRE_NSYNTH
OUT = Path("data/raw/nsynth")


def run(cfg, root: Path) -> StageResult:
    out = root / OUT
    items, failed = acquire_into(STAGE, out, cfg, "nsynth", lambda tmp: _acquire(cfg, root, tmp))
    per_split = Counter(item["split"] for item in items)
    metrics = {"notes": len(items), "failed": len(failed), **{f"notes_{s}": n for s, n in sorted(per_split.items())}}
    return StageResult(
        metrics=metrics,
        artifacts=[out / "manifest.json"],
        summary=f"wrote {len(items)} NSynth notes ({dict(sorted(per_split.items()))}) to {OUT}, {len(failed)} failed",
    )


def _acquire(cfg, root: Path, out: Path) -> tuple[list[dict], list[dict]]:
    if isinstance(cfg, OfflineNSynthConfig):
        from timbrelab.data.nsynth_offline import render_offline_nsynth

        if not cfg.families:
            raise ConfigError(f"{STAGE}.families is empty: give family -> GM programs, e.g. string: [40, 42]")
        result = render_offline_nsynth(cfg, out)
    elif isinstance(cfg, NSynthDownloadConfig):
        from timbrelab.data import nsynth

        result = nsynth.acquire_download(_with_root(cfg, root, "cache_dir"), out)
    elif isinstance(cfg, NSynthLocalConfig):
        from timbrelab.data import nsynth

        result = nsynth.acquire_local(_with_root(cfg, root, "path"), out)
    else:
        raise ConfigError(f"{STAGE}: unsupported source {cfg.source!r}")
    return result.get("items", []), result.get("failed", [])


def _with_root(cfg, root: Path, key: str):
    import dataclasses

    return dataclasses.replace(cfg, **{key: str(root / getattr(cfg, key))})


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
