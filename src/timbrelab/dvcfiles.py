"""dvc.yaml and dvc.lock read without DVC: stages (foreach expanded), their deps and outs, and DVC 3's md5s.

MLflow tags (:mod:`timbrelab.tracking`) and tests use these to say which inputs a run saw, as dvc.lock
records them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


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
