"""Benchmark of the data half of the pipeline (prints figures; record them in BENCHMARKS.md).

1. The default (demo) pipeline from nothing in a temporary copy of the repository: wall time of
   `dvc repro` and of each stage (from its MLflow run), then of a no-op `dvc repro`.
2. prepare throughput, in seconds of audio per second, on the rendered cello domain and, when
   ../shared/eval-audio exists, on real recordings (44.1 kHz stereo OGG: decode + resample).

Usage: .venv/bin/python benchmarks/data_stages.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import copy_repository, run  # noqa: E402  (the tests' own fresh-copy helper)


ORDER = ("acquire_cello", "acquire_nsynth", "acquire_source", "prepare")


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    run(cmd, cwd)
    return time.perf_counter() - started


def stage_seconds(repo: Path) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("timbrelab")
    return {r.data.tags["stage"]: r.data.metrics["stage_seconds"] for r in client.search_runs([experiment.experiment_id])}


def prepare_throughput(raw_dir: Path) -> tuple[float, float]:
    from timbrelab.config import PrepareConfig
    from timbrelab.data.prepare import prepare_recordings

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        prepare_recordings(raw_dir, Path(tmp) / "out", PrepareConfig(), domain="bench", progress=False)
        elapsed = time.perf_counter() - started
    return summary_seconds(raw_dir), elapsed


def render_throughput() -> list[tuple[str, float, float]]:
    """Seconds of audio rendered per wall second by each offline generator at demo size."""
    from timbrelab import config
    from timbrelab.data.bach import render_offline_cello
    from timbrelab.data.glides import render_source_glides
    from timbrelab.data.nsynth_offline import render_offline_nsynth

    demo = config.compose([], conf_dir=REPO / "conf")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, stage, schema, render in (
            ("cello (bach + soundfont)", "acquire_cello", config.OfflineCelloConfig, render_offline_cello),
            ("NSynth-format notes", "acquire_nsynth", config.OfflineNSynthConfig, render_offline_nsynth),
            ("sine glides + f0 truth", "acquire_source", config.GlidesSourceConfig, render_source_glides),
        ):
            cfg = config.validate(demo[stage], schema, stage)
            started = time.perf_counter()
            result = render(cfg, Path(tmp) / stage, progress=False)
            elapsed = time.perf_counter() - started
            items = result["items"] if isinstance(result, dict) else result
            seconds = sum(item.get("duration_s", 4.0) for item in items)
            rows.append((name, seconds, elapsed))
    return rows


def summary_seconds(raw_dir: Path) -> float:
    manifest = json.loads((raw_dir / "manifest.json").read_text())
    return sum(item["duration_s"] for item in manifest["items"])


def real_recordings_domain(dst: Path) -> Path | None:
    shared = REPO.parent / "shared" / "eval-audio"
    files = sorted(shared.glob("*.ogg")) if shared.is_dir() else []
    if not files:
        return None
    from timbrelab.config import LocalFolderConfig
    from timbrelab.data.local import acquire_local
    from timbrelab.stages.common import write_manifest

    items, failed = acquire_local(LocalFolderConfig(path=str(shared)), dst, progress=False)
    write_manifest(dst / "manifest.json", stage="bench", cfg=LocalFolderConfig(path="eval-audio"), items=items,
                   failed=failed)
    return dst


def main() -> None:
    print(f"# data stages benchmark — {time.strftime('%Y-%m-%d')} — {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        repo = copy_repository(Path(tmp) / "timbrelab")
        total = timed([str(BIN / "dvc"), "repro"], repo)
        per_stage = stage_seconds(repo)
        noop = min(timed([str(BIN / "dvc"), "repro"], repo) for _ in range(3))
        print("\n| step | wall time (s) |\n| --- | --- |")
        for stage, seconds in sorted(per_stage.items(), key=lambda kv: ORDER.index(kv[0])):
            print(f"| {stage} (inside its MLflow run) | {seconds:.1f} |")
        print(f"| `dvc repro`, demo profile, from nothing | {total:.1f} |")
        print(f"| no-op `dvc repro` (best of 3) | {noop:.2f} |")

        print("\n| prepare input | audio (s) | wall (s) | audio s / s |\n| --- | --- | --- | --- |")
        audio, wall = prepare_throughput(repo / "data/raw/cello")
        print(f"| rendered cello, 16 kHz mono WAV | {audio:.0f} | {wall:.2f} | {audio / wall:.0f} |")
        real = real_recordings_domain(Path(tmp) / "real")
        if real is not None:
            audio, wall = prepare_throughput(real)
            print(f"| ../shared/eval-audio, 44.1 kHz stereo OGG | {audio:.0f} | {wall:.2f} | {audio / wall:.0f} |")
        print("\n| offline render (demo size) | audio (s) | wall (s) | audio s / s |\n| --- | --- | --- | --- |")
        for name, audio, wall in render_throughput():
            print(f"| {name} | {audio:.0f} | {wall:.2f} | {audio / wall:.0f} |")
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
