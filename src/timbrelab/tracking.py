"""MLflow tracking in one place: where runs go, what every stage run carries.

One tracking store per repository: ``sqlite:///<repo root>/mlflow.db`` with artifacts under
``<repo root>/mlartifacts``, resolved from the repository root rather than the working directory, so
that DVC's queued experiments (which run in temporary copies under ``.dvc/tmp/exps/``) log to the
store of the repository they came from. ``MLFLOW_TRACKING_URI`` overrides it (an MLflow server).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from timbrelab.dvcfiles import dep_md5s, dvc_stages, lock_outs, stage_outs, stage_slug
from timbrelab.errors import Terminated
from timbrelab.paths import repo_root, store_root

EXPERIMENT_NAME = "timbrelab"
# Files DVC rewrites during `dvc repro` / `dvc exp run`: they must not make a run look dirty
# (nor must the outputs dvc.yaml declares; see dvc_written_paths).
DVC_REWRITTEN = ("dvc.lock", "params.yaml")
KEY_LIBRARIES = ("timbrelab", "torch", "lightning", "librosa", "numpy", "soundfile", "soxr",
                 "pretty_midi", "tinysoundfont", "yt-dlp", "dvc", "mlflow", "hydra-core", "omegaconf")


def tracking_uri(root: Path | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{store_root(root) / 'mlflow.db'}"


def artifact_location(root: Path | None = None) -> str:
    return (store_root(root) / "mlartifacts").as_uri()


@contextlib.contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """For a ``sqlite:///`` store, hold an exclusive lock on ``<db>.lock`` (beside the database) for the
    duration; nothing for other stores.

    MLflow creates and migrates a sqlite store's schema in every process that opens it, and processes
    doing that at once (parallel DVC queue workers on a fresh repository) break each other's migration;
    opening the store under this lock makes the first one build it and the others find it built.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def get_experiment_id(client, name: str = EXPERIMENT_NAME) -> str:
    """Experiment id, creating it with an explicit artifact location (never ./mlruns)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http") else artifact_location()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another stage / queue worker
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# ---------------------------------------------------------------------------------------------
# Tags


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout


def dvc_written_paths(root: Path) -> set[str]:
    """Paths DVC itself (re)writes during a run: dvc.lock, params.yaml, every declared output,
    metrics and plots file (of every stage, foreach groups expanded), and the .gitignore files it
    keeps beside outputs."""
    paths = set(DVC_REWRITTEN)
    for name in dvc_stages(root):
        for out in stage_outs(root, name):
            paths.add(out)
            parent = Path(out).parent
            while parent != Path("."):
                paths.add((parent / ".gitignore").as_posix())
                parent = parent.parent
    return paths


def _is_dvc_written(path: str, written: set[str]) -> bool:
    return path in written or any(path.startswith(f"{out}/") for out in written)


def git_tags(root: Path) -> dict[str, str]:
    """HEAD and whether the work tree differs from it in anything but what DVC rewrites."""
    commit = (_git(root, "rev-parse", "HEAD") or "").strip()
    status = _git(root, "status", "--porcelain", "--untracked-files=all") or ""
    changed = [line[3:].strip().strip('"') for line in status.splitlines() if line.strip()]
    written = dvc_written_paths(root)
    dirty = [path for path in changed if not _is_dvc_written(path, written)]
    return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower()}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in KEY_LIBRARIES:
        try:
            versions[f"lib.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"lib.{name}"] = "not installed"
    return versions


def upstream_runs(client, root: Path, paths: Iterable[str]) -> dict[str, str]:
    """``{"run.<stage>": run_id}``: for each path dvc.lock records as an output of ``<stage>``, the
    newest FINISHED run of that stage tagged with that md5 (``dvc.out.<path>``).

    One search per path at most; a path without a lock entry or a matching run, or any MLflow error,
    gives no link (a missing link must never fail a stage). ``@`` in stage names becomes ``_``.
    """
    produced = lock_outs(root)
    links: dict[str, str] = {}
    try:
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    except Exception:  # noqa: BLE001 - links are best effort
        return links
    if experiment is None:
        return links
    for path in dict.fromkeys(str(p).rstrip("/") for p in paths):
        stage, md5 = produced.get(path, ("", ""))
        key = f"run.{stage_slug(stage)}"
        if not stage or not md5 or key in links or any(q in path + stage + md5 for q in "'`"):
            continue
        query = (f"tags.stage = '{stage}' and tags.`dvc.out.{path}` = '{md5}'"
                 " and attributes.status = 'FINISHED'")
        try:
            runs = client.search_runs([experiment.experiment_id], query, max_results=1,
                                      order_by=["attributes.start_time DESC"])
        except Exception:  # noqa: BLE001, S112 - a missing link is not worth a warning per stage
            continue
        if runs:
            links[key] = runs[0].info.run_id
    return links


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists are JSON-encoded; values cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            flat[name] = text if len(text) <= 6000 else text[:5997] + "..."
    return flat


# ---------------------------------------------------------------------------------------------
# The run every stage logs


_ACTIVE: StageRun | None = None


class StageRun:
    """A thin handle on the active MLflow run of one stage."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        for i in range(0, len(batch), 900):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 900])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Every file under ``local_dir`` (e.g. a temporary folder of listening examples), under ``artifact_path``."""
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            target.write_text(json.dumps(obj, indent=2, sort_keys=True))
            self.log_artifact(target)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any], *, extra_tags: Mapping[str, str] | None = None,
              link_paths: Iterable[str] = ()) -> Iterator[StageRun]:
    """Open one MLflow run for ``stage`` with its flattened params and the provenance tags.

    Tags: ``stage``, ``git.commit`` (HEAD), ``git.dirty`` (ignoring dvc.lock/params.yaml),
    ``dvc.dep.<path>`` (the md5 dvc.lock records for each input), ``lib.<name>`` (versions of the key
    libraries: DVC cannot see a library upgrade), ``run.<stage>`` (the run that produced an input, or
    one of ``link_paths``; see upstream_runs). The run ends FAILED if the block raises.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    root = repo_root()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    with first_use_lock(uri):  # opening the store creates its schema the first time
        client = MlflowClient()
        experiment_id = get_experiment_id(client)
    tags = {"stage": stage, "mlflow.runName": stage, **git_tags(root), **library_versions()}
    deps = dep_md5s(root, stage)
    tags.update({f"dvc.dep.{dep}": md5 for dep, md5 in deps.items()})
    tags.update(upstream_runs(client, root, [*deps, *link_paths]))
    for key in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(key):
            tags[f"dvc.{key.lower()}"] = os.environ[key]
    tags.update(extra_tags or {})
    run = client.create_run(experiment_id, tags=tags, run_name=stage)
    handle = StageRun(client, run.info.run_id)
    from mlflow.entities import Param

    flat = [Param(key, value) for key, value in flatten(params).items()]
    for i in range(0, len(flat), 90):
        client.log_batch(run.info.run_id, params=flat[i : i + 90])
    global _ACTIVE
    _ACTIVE = handle
    try:
        yield handle
    except BaseException as exc:
        # Stopped from outside (SIGTERM, Ctrl-C) is not a failure of the stage: KILLED, as MLflow names it.
        stopped = isinstance(exc, (Terminated, KeyboardInterrupt))
        client.set_terminated(run.info.run_id, status="KILLED" if stopped else "FAILED")
        raise
    finally:
        _ACTIVE = None
    client.set_terminated(run.info.run_id, status="FINISHED")


def active_run() -> StageRun | None:
    """The run of the stage executing in this process (training attaches Lightning's logger to it)."""
    return _ACTIVE
