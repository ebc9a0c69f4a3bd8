"""librosa's numba cache, written by one process at a time.

librosa jits its kernels with ``cache=True``: the first call compiles and writes an index file and a data
file per function beside librosa's sources (or under ``NUMBA_CACHE_DIR``). numba writes them without a
cross-process lock, so two processes compiling the same function at once (the features stage's workers
on an empty cache) can leave an index that points at another signature's machine code; from then on that
call segfaults in every new process of the venv, until the cache is deleted.

The cure here: whatever runs librosa in parallel compiles it first in one process under
:func:`cache_lock` (an ``flock`` on a file beside the cache, so concurrent stage processes take turns),
and the parallel workers call :func:`forbid_cache_writes`: a worker that meets a signature the warm-up
missed compiles it in its own memory and never writes the shared cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".timbrelab-numba-cache.lock"


def _cache_root() -> Path:
    """Where numba keeps librosa's cache: ``NUMBA_CACHE_DIR``, else librosa's package folder."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return Path(configured)
    import importlib.util

    spec = importlib.util.find_spec("librosa")
    return Path(spec.origin).parent if spec and spec.origin else Path(tempfile.gettempdir())


def lock_path() -> Path:
    """The lock file: in the cache root when writable, else one per cache root in the temp folder."""
    root = _cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root / LOCK_NAME
    except OSError:
        pass
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"timbrelab-numba-{key}.lock"


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Hold the exclusive lock on librosa's numba cache (blocks while another process holds it)."""
    path = lock_path()
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def forbid_cache_writes() -> None:
    """In this process, numba still loads cached code but never saves any (a parallel worker's setting)."""
    from numba.core import caching

    def _no_save(self, sig, data):  # the signature of Cache.save_overload
        return None

    caching.Cache.save_overload = _no_save
