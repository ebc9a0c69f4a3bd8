"""MLflow tracking in one place: where runs go, what every stage run carries.

One tracking store per repository: ``sqlite:///<repo root>/mlflow.db`` with artifacts under
``<repo root>/mlartifacts``, resolved from the repository root rather than the working directory, so
that DVC's queued experiments (which run in temporary copies under ``.dvc/tmp/exps/``) log to the
store of the repository they came from. ``MLFLOW_TRACKING_URI`` overrides it (an MLflow server).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

EXPERIMENT_NAME = "timbrelab"
# Files DVC rewrites during `dvc repro` / `dvc exp run`: they must not make a run look dirty
# (nor must the outputs dvc.yaml declares; see dvc_written_paths).
DVC_REWRITTEN = ("dvc.lock", "params.yaml")
KEY_LIBRARIES = ("timbrelab", "torch", "lightning", "librosa", "numpy", "soundfile", "soxr",
                 "pretty_midi", "tinysoundfont", "yt-dlp", "dvc", "mlflow", "hydra-core", "omegaconf")


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The repository this process works in: ``$DVC_ROOT`` (set by DVC for stage commands), else the
    nearest parent of ``start``/cwd holding ``dvc.yaml`` or ``.git``."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists() or (candidate / ".git").exists():
            return candidate
    return here


def store_root(root: Path | None = None) -> Path:
    """The repository whose MLflow store to use: for a DVC temporary experiment copy
    (``<repo>/.dvc/tmp/exps/...``) that is ``<repo>``, otherwise the repository itself."""
    root = (root or repo_root()).resolve()
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri(root: Path | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{store_root(root) / 'mlflow.db'}"


def artifact_location(root: Path | None = None) -> str:
    return (store_root(root) / "mlartifacts").as_uri()


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
    metrics and plots file, and the .gitignore files it keeps beside outputs."""
    paths = set(DVC_REWRITTEN)
    dvc_yaml = root / "dvc.yaml"
    spec = yaml.safe_load(dvc_yaml.read_text()) if dvc_yaml.exists() else None
    for stage in ((spec or {}).get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                out = next(iter(entry)) if isinstance(entry, dict) else str(entry)
                paths.add(out.rstrip("/"))
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


def dvc_dir_md5(path: Path) -> str:
    """DVC 3's hash of a directory: md5 of its sorted (relpath, md5) listing, plus ``.dir``."""
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        entries.append({"md5": file_md5(file), "relpath": file.relative_to(path).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stage_deps(root: Path, stage: str) -> list[str]:
    """The dependency paths dvc.yaml declares for ``stage``."""
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.exists():
        return []
    spec = yaml.safe_load(dvc_yaml.read_text()) or {}
    return [str(dep) for dep in (spec.get("stages", {}).get(stage, {}).get("deps") or [])]


def dep_md5s(root: Path, stage: str) -> dict[str, str]:
    """md5 of each input of ``stage`` as dvc.lock records it.

    Inputs produced by other stages are taken from dvc.lock (DVC writes each stage's lock entry as
    soon as it finishes and has verified unchanged ones, so it is current); the rest (code, local
    folders) are hashed here with DVC's algorithm, so the tags equal dvc.lock after the run.
    """
    lock_outs: dict[str, str] = {}
    lock = root / "dvc.lock"
    if lock.exists():
        data = yaml.safe_load(lock.read_text()) or {}
        for entry in (data.get("stages") or {}).values():
            for out in entry.get("outs") or []:
                lock_outs[out["path"]] = out.get("md5", "")
    result = {}
    for dep in stage_deps(root, stage):
        path = root / dep
        if dep in lock_outs:
            result[dep] = lock_outs[dep]
        elif path.is_dir():
            result[dep] = dvc_dir_md5(path)
        elif path.is_file():
            result[dep] = file_md5(path)
        else:
            result[dep] = "missing"
    return result


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
def stage_run(stage: str, params: Mapping[str, Any], *, extra_tags: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """Open one MLflow run for ``stage`` with its flattened params and the provenance tags.

    Tags: ``stage``, ``git.commit`` (HEAD), ``git.dirty`` (ignoring dvc.lock/params.yaml),
    ``dvc.dep.<path>`` (the md5 dvc.lock records for each input), ``lib.<name>`` (versions of the key
    libraries: DVC cannot see a library upgrade). The run ends FAILED if the block raises.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri(root))
    client = MlflowClient()
    experiment_id = get_experiment_id(client)
    tags = {"stage": stage, "mlflow.runName": stage, **git_tags(root), **library_versions()}
    tags.update({f"dvc.dep.{dep}": md5 for dep, md5 in dep_md5s(root, stage).items()})
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
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    finally:
        _ACTIVE = None
    client.set_terminated(run.info.run_id, status="FINISHED")


def active_run() -> StageRun | None:
    """The run of the stage executing in this process (training attaches Lightning's logger to it)."""
    return _ACTIVE
