"""acquire_source: the transfer source domain -> data/raw/source/ (+ true f0 tracks) + manifest.json."""

from __future__ import annotations

import sys
from pathlib import Path

from timbrelab.config import ACQUIRE_SOURCE, GlidesSourceConfig, LocalFolderConfig
from timbrelab.errors import ConfigError
from timbrelab.stages.common import StageResult, acquire_into, run_stage

STAGE = "acquire_source"
SCHEMAS = ACQUIRE_SOURCE
OUT = Path("data/raw/source")


def run(cfg, root: Path) -> StageResult:
    out = root / OUT
    items, failed = acquire_into(STAGE, out, cfg, "source", lambda tmp: _acquire(cfg, root, tmp))
    seconds = sum(item["duration_s"] for item in items)
    with_f0 = sum(1 for item in items if item.get("f0_file"))
    return StageResult(
        metrics={"recordings": len(items), "failed": len(failed), "seconds": round(seconds, 3),
                 "with_true_f0": with_f0},
        artifacts=[out / "manifest.json"],
        summary=f"wrote {len(items)} source clips ({seconds:.1f} s, {with_f0} with true f0) to {OUT}, "
        f"{len(failed)} failed",
    )


def _acquire(cfg, root: Path, out: Path) -> tuple[list[dict], list[dict]]:
    if isinstance(cfg, GlidesSourceConfig):
        from timbrelab.data.glides import render_source_glides

        return render_source_glides(cfg, out), []
    if isinstance(cfg, LocalFolderConfig):
        from timbrelab.data.local import acquire_local_in_repo

        return acquire_local_in_repo(cfg, root, out)
    raise ConfigError(f"{STAGE}: unsupported source {cfg.source!r}")


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
