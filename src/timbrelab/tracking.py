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
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
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
    nearest parent of ``start``/cwd holding ``dvc.yaml`` or ``.git``.

    Inside a DVC temporary experiment copy (``dvc exp run --queue`` / ``--temp``) the copy, never
    ``$DVC_ROOT``: there DVC sets it to the repository the experiment came from, so a stage that
    trusted it would read that repository's params.yaml and write its outputs into that workspace.
    """
    here = Path(start or Path.cwd()).resolve()
    found = next((c for c in (here, *here.parents) if (c / "dvc.yaml").exists() or (c / ".git").exists()), here)
    if start is None and os.environ.get("DVC_ROOT") and _experiment_parent(found) is None:
        return Path(os.environ["DVC_ROOT"]).resolve()
    return found


def _experiment_parent(path: Path) -> Path | None:
    """``<repo>`` if ``path`` lies in a DVC temporary experiment copy (``<repo>/.dvc/tmp/exps/...``)."""
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return None


def store_root(root: Path | None = None) -> Path:
    """The repository whose MLflow store to use: for a DVC temporary experiment copy
    (``<repo>/.dvc/tmp/exps/...``) that is ``<repo>``, otherwise the repository itself."""
    root = (root or repo_root()).resolve()
    return _experiment_parent(root) or root


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


def dvc_dir_md5(path: Path) -> str:
    """DVC 3's hash of a directory: md5 of the JSON of its (md5, relpath) listing sorted by relpath
    (as dvc_data's Tree.as_bytes writes it), plus ``.dir``. Empty directories do not count."""
    entries = [{"md5": file_md5(file), "relpath": file.relative_to(path).as_posix()}
               for file in path.rglob("*") if file.is_file()]
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# dvc.yaml and dvc.lock

_REF = re.compile(r"\$\{([^}]*)\}")


def _load_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    return data if isinstance(data, dict) else {}


def stage_slug(stage: str) -> str:
    """A stage name fit for file names and MLflow keys (which reject ``@``): ``evaluate@ddsp`` ->
    ``evaluate_ddsp``."""
    return stage.replace("@", "_")


def _lookup(expr: str, context: Mapping[str, Any], where: str) -> Any:
    value: Any = context
    for part in expr.strip().split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise ValueError(f"{where}: cannot resolve ${{{expr}}} (no '{part}' there; "
                             "foreach supports ${key}, ${item}, ${item.<field>} and params.yaml keys)")
    return value


def _to_str(value: Any, expr: str, where: str) -> str:
    if isinstance(value, (Mapping, list)):  # a dvc.yaml error, a ValueError like the others here
        raise ValueError(  # noqa: TRY004
            f"{where}: ${{{expr}}} is a {type(value).__name__}, it cannot stand inside a string")
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _interpolate(value: Any, context: Mapping[str, Any], where: str) -> Any:
    """Substitute every ``${...}`` in the strings (and mapping keys) of ``value``; a string that is one
    reference becomes the referenced value itself (a foreach's dict or list)."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), context, where)
        return _REF.sub(lambda m: _to_str(_lookup(m.group(1), context, where), m.group(1), where), value)
    if isinstance(value, Mapping):
        return {str(_interpolate(k, context, where)): _interpolate(v, context, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, context, where) for v in value]
    return value


def _foreach_contexts(group: Any, where: str) -> dict[str, dict[str, Any]]:
    """DVC's names and variables for a foreach: a dict gives ``key`` and ``item``; a list gives
    ``item`` only, named by its value (or by its index where an item is a dict or list)."""
    if isinstance(group, Mapping):
        return {str(k): {"key": str(k), "item": v} for k, v in group.items()}
    if isinstance(group, list):
        composite = any(isinstance(v, (Mapping, list)) for v in group)
        return {(str(i) if composite else _to_str(v, "item", where)): {"item": v} for i, v in enumerate(group)}
    raise ValueError(f"{where}: foreach must be a dict or a list (or ${{...}} naming one in params.yaml), "
                     f"got {group!r}")


def dvc_stages(root: Path) -> dict[str, dict]:
    """Every stage of dvc.yaml under the name DVC gives it, ``${...}`` resolved from params.yaml;
    a foreach group becomes one ``<name>@<key>`` stage per key. (Neither ``vars`` nor ``matrix``.)"""
    spec = _load_yaml(root / "dvc.yaml")
    params = _load_yaml(root / "params.yaml")
    stages: dict[str, dict] = {}
    for name, entry in (spec.get("stages") or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        if "foreach" not in entry:
            stages[name] = _interpolate(entry, params, f"dvc.yaml: stage '{name}'")
            continue
        group = _interpolate(entry["foreach"], params, f"dvc.yaml: stage '{name}' (foreach)")
        for key, local in _foreach_contexts(group, f"dvc.yaml: stage '{name}'").items():
            full = f"{name}@{key}"
            stages[full] = _interpolate(entry.get("do") or {}, {**params, **local}, f"dvc.yaml: stage '{full}'")
    return stages


def stage_spec(root: Path, stage: str) -> dict:
    """The dvc.yaml entry of ``stage`` (``name@key`` for a foreach group's stage, expanded); {} if none."""
    return dvc_stages(root).get(stage) or {}


def stage_deps(root: Path, stage: str) -> list[str]:
    """The dependency paths dvc.yaml declares for ``stage``."""
    return [str(dep) for dep in (stage_spec(root, stage).get("deps") or [])]


def stage_outs(root: Path, stage: str) -> list[str]:
    """The outs, metrics and plots paths dvc.yaml declares for ``stage`` (dvc.lock records all three)."""
    spec = stage_spec(root, stage)
    return [(next(iter(entry)) if isinstance(entry, dict) else str(entry)).rstrip("/")
            for kind in ("outs", "metrics", "plots") for entry in spec.get(kind) or []]


def lock_outs(root: Path) -> dict[str, tuple[str, str]]:
    """``{path: (stage, md5)}`` for every output dvc.lock records."""
    outs = {}
    for name, entry in (_load_yaml(root / "dvc.lock").get("stages") or {}).items():
        for out in entry.get("outs") or []:
            outs[out["path"]] = (name, out.get("md5", ""))
    return outs


def dvc_md5(path: Path) -> str | None:
    """The md5 DVC 3 records for ``path`` (a file's bytes, or a directory's listing); None if absent."""
    if path.is_dir():
        return dvc_dir_md5(path)
    return file_md5(path) if path.is_file() else None


def dep_md5s(root: Path, stage: str) -> dict[str, str]:
    """md5 of each input of ``stage`` as dvc.lock records it.

    Inputs produced by other stages are taken from dvc.lock (DVC writes each stage's lock entry as
    soon as it finishes and has verified unchanged ones, so it is current); the rest (code, local
    folders) are hashed here with DVC's algorithm, so the tags equal dvc.lock after the run.
    """
    produced = lock_outs(root)
    return {dep: produced[dep][1] if dep in produced else dvc_md5(root / dep) or "missing"
            for dep in stage_deps(root, stage)}


def out_md5s(root: Path, stage: str) -> dict[str, str]:
    """md5 of each output of ``stage`` present on disk, as DVC will write it to dvc.lock."""
    hashes = {out: dvc_md5(root / out) for out in stage_outs(root, stage)}
    return {out: md5 for out, md5 in hashes.items() if md5 is not None}


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
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    finally:
        _ACTIVE = None
    client.set_terminated(run.info.run_id, status="FINISHED")


def active_run() -> StageRun | None:
    """The run of the stage executing in this process (training attaches Lightning's logger to it)."""
    return _ACTIVE
