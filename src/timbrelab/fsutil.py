"""Atomic, deterministic file output: write to a temp sibling, then rename.

A killed stage therefore never leaves a half-written file or directory behind, and JSON is written
with sorted keys so the same content always hashes the same.

Temporary siblings carry their writer's pid in the name and stay ``flock``-ed while it writes, so the
next write of the same output removes what a killed run left (its pid gone and its lock free) and never
what a live concurrent run is writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, on error delete it.

    ``suffix`` defaults to the target's suffix so that libraries that pick a format from the file
    name (soundfile, numpy) still see the right extension. Temp files a killed run left for the same
    target are removed first (:func:`remove_stale_temps`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target, rescan=False)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.tmp-{os.getpid()}-", suffix=target.suffix if suffix is None else suffix,
        dir=target.parent,
    )
    _lock(fd)  # held while this process writes: a concurrent run's cleanup skips it
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _lock(fd: int) -> None:
    """Exclusive flock on a fresh temp (uncontended: nobody else knows the name yet). A filesystem
    without locks gets none: its temps then count as live to :func:`remove_stale_temps`."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _stale_pattern(target: Path) -> re.Pattern:
    """Temp siblings of ``target`` written by this module: ``.<name>.<pid>-<rand>.tmp`` (atomic_dir) and
    ``.<name>.tmp-<pid>-<rand><suffix>`` (atomic_path); group 1 or 2 is the writer's pid."""
    name = re.escape(target.name)
    return re.compile(rf"^\.{name}\.(?:(\d+)-[A-Za-z0-9_]+\.tmp|tmp-(\d+)-[A-Za-z0-9_]+.*)$")


# Any temp sibling this module names (of any target): what a directory scan keeps as candidates.
_ANY_TEMP = re.compile(r"^\..+\.(?:\d+-[A-Za-z0-9_]+\.tmp|tmp-\d+-[A-Za-z0-9_]+.*)$")
# Per directory, the candidates found by this process's one scan of it (atomic_path writes thousands of
# files into one folder: scanning it on every write would cost O(files**2)).
_SCANNED: dict[str, list[str]] = {}


def _candidates(directory: Path, rescan: bool) -> list[str]:
    key = os.path.abspath(directory)
    if rescan or key not in _SCANNED:
        try:
            with os.scandir(directory) as entries:
                _SCANNED[key] = [entry.name for entry in entries if _ANY_TEMP.match(entry.name)]
        except OSError:
            _SCANNED[key] = []
    return _SCANNED[key]


def remove_stale_temps(target: str | os.PathLike, *, rescan: bool = True) -> list[Path]:
    """Remove the temp siblings of ``target`` that a dead run left; returns what was removed.

    A sibling is stale when its writer's pid (in its name) is no longer running *and* nobody holds its
    ``flock`` (a live writer holds it for as long as it writes, even one in another pid namespace).
    Anything else -- a live concurrent run's temp, another output's, a foreign name -- is left alone.
    ``rescan=False`` reuses this process's earlier scan of the folder (leftovers predate the run).
    """
    target = Path(target)
    pattern = _stale_pattern(target)
    removed: list[Path] = []
    siblings = [target.parent / name for name in _candidates(target.parent, rescan) if pattern.match(name)]
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if not match or sibling.is_symlink() or _pid_alive(int(match.group(1) or match.group(2))):
            continue
        try:
            fd = os.open(sibling, os.O_RDONLY | (os.O_DIRECTORY if sibling.is_dir() else 0))
        except OSError:
            continue  # gone meanwhile (another cleaner), or unreadable: not ours to judge
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it (or this filesystem has no locks: keep it, to be safe)
            if sibling.is_dir():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)
            removed.append(sibling)
        finally:
            os.close(fd)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temp sibling and swap it in only when the block succeeds.

    The old directory (if any) is replaced as a whole; on error the temp directory is removed and the
    old one is left untouched. Temp directories a killed run left for the same target are removed first
    (:func:`remove_stale_temps`); this one carries the pid and is ``flock``-ed while the block runs.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent))
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    _lock(fd)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def round_floats(obj: Any, ndigits: int = 6) -> Any:
    """Round every float in a nested structure so manifests do not depend on float noise."""
    if isinstance(obj, float):
        return round(obj, ndigits)
    if isinstance(obj, dict):
        return {key: round_floats(value, ndigits) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(value, ndigits) for value in obj]
    return obj
