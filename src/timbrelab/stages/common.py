"""What every stage does around its own work: config, MLflow run, manifest, metrics, summary."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timbrelab import config as config_mod
from timbrelab import distributed, dvcfiles, paths, tracking
from timbrelab.errors import TimbrelabError, run_main
from timbrelab.fsutil import atomic_dir, atomic_write_json, round_floats

METRICS_DIR = Path("reports/metrics")


@dataclass
class StageResult:
    """What a stage body hands back: DVC metrics, files to log as MLflow artifacts, a summary."""

    metrics: dict[str, float]
    artifacts: list[Path] = field(default_factory=list)
    summary: str = ""
    # Set when the body wrote its own DVC metrics file (e.g. the report's nested reports/metrics.json);
    # ``metrics`` then only goes to MLflow.
    metrics_file: Path | None = None


def require_items(stage: str, items: list[dict], failed: list[dict]) -> None:
    """A batch job skips bad items, but a stage that produced nothing at all has failed."""
    if items:
        return
    reasons = "; ".join(f"{f.get('id') or f.get('split') or '?'}: {f.get('reason', '?')}" for f in failed[:3])
    more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
    raise TimbrelabError(f"{stage} produced no items" + (f"; failures: {reasons}{more}" if failed else
                                                         "; check its section of params.yaml"))


def write_manifest(path: Path, *, stage: str, cfg: Any, items: list[dict], failed: list[dict], **extra: Any) -> None:
    """manifest.json: every item with its provenance, every failed/skipped item with the reason.

    Path-free and timestamp-free (DVC hashes it); floats rounded so float noise cannot change it.
    """
    manifest = {"stage": stage, "config": dataclasses.asdict(cfg), "items": items, "failed": failed, **extra}
    atomic_write_json(path, round_floats(manifest))


def acquire_into(stage: str, out: Path, cfg: Any, domain: str,
                 fill: Callable[[Path], tuple[list[dict], list[dict]]]) -> tuple[list[dict], list[dict]]:
    """Build an acquisition's output directory atomically: ``fill(tmp_dir) -> (items, failed)``, then
    the manifest; a stage that produced nothing fails and leaves the old output untouched."""
    with atomic_dir(out) as tmp:
        items, failed = fill(tmp)
        require_items(stage, items, failed)
        write_manifest(tmp / "manifest.json", stage=stage, cfg=cfg, items=items, failed=failed, domain=domain)
    return items, failed


def execute_stage(stage: str, schemas: Any, body: Callable[[Any, Path], StageResult], *,
                  params: dict[str, Any] | None = None, extra_tags: dict[str, str] | None = None,
                  params_section: str | None = None, link_paths: Iterable[str] = ()) -> StageResult:
    """Validate the stage's section (of params.yaml, or of ``params``), run ``body`` inside one MLflow
    run, write the DVC metrics file, tag the md5 of each output, print a one-line summary.

    ``stage`` may be a foreach group's ``name@key``: its section is then ``name`` (or
    ``params_section``), its metrics file ``reports/metrics/name_key.json``. ``link_paths``: outputs
    of other stages, besides the deps, whose producing runs the run links to (``run.<stage>`` tags).
    """
    started = time.perf_counter()
    root = paths.repo_root()
    cfg = config_mod.load_stage_config(params_section or stage.partition("@")[0], schemas, params)
    if not distributed.is_primary():
        # Another rank of a distributed training: it trains, rank 0 keeps the run, the outputs and the summary.
        return body(cfg, root)
    with tracking.stage_run(stage, dataclasses.asdict(cfg), extra_tags=extra_tags, link_paths=link_paths) as run:
        result = body(cfg, root)
        elapsed = time.perf_counter() - started
        # The DVC metrics file leaves out wall time: it must hash the same on every run.
        if result.metrics_file is None:
            atomic_write_json(root / METRICS_DIR / f"{dvcfiles.stage_slug(stage)}.json", round_floats(result.metrics))
        run.log_metrics({**result.metrics, "stage_seconds": round(elapsed, 3)})
        for artifact in result.artifacts:
            if artifact.exists():
                run.log_artifact(artifact)
        run.set_tags({f"dvc.out.{out}": md5 for out, md5 in dvcfiles.out_md5s(root, stage).items()})
    print(f"[{stage}] {result.summary} ({elapsed:.1f} s; MLflow run {run.run_id})", file=sys.stderr)
    return result


def run_stage(stage: str, schemas: Any, body: Callable[[Any, Path], StageResult], *,
              link_paths: Iterable[str] = ()) -> int:
    """Entry point of ``python -m timbrelab.stages.<stage>``: one-line errors, exit code 2. ``stage``
    may be ``name@key`` (a foreach stage; e.g. ``f"evaluate@{sys.argv[1]}"``)."""
    return run_main(lambda: execute_stage(stage, schemas, body, link_paths=link_paths))


def relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
