"""acquire_cello: the target domain's raw recordings -> data/raw/cello/ + manifest.json."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from timbrelab.config import ACQUIRE_CELLO, LocalFolderConfig, OfflineCelloConfig, YoutubeConfig
from timbrelab.errors import ConfigError
from timbrelab.stages.common import StageResult, acquire_into, run_stage

STAGE = "acquire_cello"
SCHEMAS = ACQUIRE_CELLO
OUT = Path("data/raw/cello")


def run(cfg, root: Path) -> StageResult:
    out = root / OUT
    items, failed = acquire_into(STAGE, out, cfg, "cello", lambda tmp: _acquire(cfg, root, tmp))
    seconds = sum(item["duration_s"] for item in items)
    return StageResult(
        metrics={"recordings": len(items), "failed": len(failed), "seconds": round(seconds, 3)},
        artifacts=[out / "manifest.json"],
        summary=f"wrote {len(items)} recordings ({seconds:.1f} s) to {OUT}, {len(failed)} failed",
    )


def _acquire(cfg, root: Path, out: Path) -> tuple[list[dict], list[dict]]:
    if isinstance(cfg, OfflineCelloConfig):
        from timbrelab.data.bach import render_offline_cello

        return render_offline_cello(cfg, out), []
    if isinstance(cfg, YoutubeConfig):
        from timbrelab.data import youtube

        if not cfg.videos:
            raise ConfigError(
                f"{STAGE}.videos is empty: resolve your queries into a committed id list first with "
                "`timbrelab youtube-resolve 'ytsearch20:bach cello suite' --out conf/cello/youtube.yaml`"
            )
        return youtube.acquire(
            [dataclasses.asdict(video) for video in cfg.videos], out, cache_dir=root / cfg.cache_dir,
            sample_rate=cfg.sample_rate, min_duration_s=cfg.min_duration_s, max_duration_s=cfg.max_duration_s,
            max_items=cfg.max_items, retries=cfg.retries, socket_timeout_s=cfg.socket_timeout_s,
            cookies_file=str(root / cfg.cookies_file) if cfg.cookies_file else None, js_runtimes=cfg.js_runtimes,
        )
    if isinstance(cfg, LocalFolderConfig):
        from timbrelab.data.local import acquire_local_in_repo

        return acquire_local_in_repo(cfg, root, out)
    raise ConfigError(f"{STAGE}: unsupported source {cfg.source!r}")


def main() -> int:
    return run_stage(STAGE, SCHEMAS, run)


if __name__ == "__main__":
    sys.exit(main())
