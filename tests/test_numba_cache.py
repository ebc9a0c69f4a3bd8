"""librosa's numba cache is never written by two processes at once (issue #19, item 1).

numba writes a jitted function's cache index and data files without a cross-process lock; two
processes compiling the same librosa function at once (the features stage's workers on an empty cache)
can leave an index that points at another signature's machine code, after which every call segfaults
in any new process of the venv. The race itself fails rarely, so these tests check the mechanism: the
parent compiles everything the workers run before any worker starts (under a file lock, so concurrent
stage processes take turns), and the workers never write the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf

from timbrelab.config import FeaturesConfig
from timbrelab.data import features as lib

SR = 16000


def test_the_warm_up_runs_before_any_worker_starts(monkeypatch):
    events: list[str] = []

    class FakePool:
        def __init__(self, *args, **kwargs):
            events.append("pool")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, items, chunksize=1):
            return map(fn, items)

    monkeypatch.setattr(lib, "warm_up", lambda cfg: events.append("warm-up"))
    monkeypatch.setattr(lib, "ProcessPoolExecutor", FakePool)
    with lib.clip_mapper(FeaturesConfig(workers=2)):
        pass
    assert events == ["warm-up", "pool"]
    events.clear()
    with lib.clip_mapper(FeaturesConfig(workers=1)):  # one process: still under the lock, before any clip
        pass
    assert events == ["warm-up"]


def test_pool_workers_never_write_the_numba_cache(tmp_path):
    """A worker that would compile something the warm-up missed keeps it in memory: it never writes."""
    code = textwrap.dedent("""
        import numba.core.caching as caching
        from timbrelab.config import FeaturesConfig
        from timbrelab.data import features as lib
        calls = []
        caching.IndexDataCacheFile.save = lambda self, key, data: calls.append(key)
        lib._init_worker(FeaturesConfig(), 1)           # as the pool's initializer runs it
        import librosa, numpy as np                     # an empty cache: localmax must be compiled here
        assert librosa.util.localmax(np.array([0.0, 1.0, 0.0])).tolist() == [False, True, False]
        print(len(calls))
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "0"


# The child that runs the workers' code after the warm-up, counting what numba had to compile and save.
_WORKER = textwrap.dedent("""
    import json, sys
    import numba.core.caching as caching
    from timbrelab.config import FeaturesConfig, PitchConfig
    from timbrelab.data import features as lib
    saved = []
    original = caching.Cache.save_overload
    def spy(self, sig, data):
        saved.append(f"{self._name} {sig}")
        return original(self, sig, data)
    caching.Cache.save_overload = spy
    for estimator, paths in json.loads(sys.argv[1]).items():
        cfg = FeaturesConfig(workers=1, pitch=PitchConfig(estimator=estimator))
        lib._init_worker(cfg)
        for path in paths:
            lib._work(path)
    print(json.dumps(saved))
""")


def test_the_warm_up_compiles_every_jitted_function_the_workers_use(tmp_path):
    """On an empty cache: one process warms up (for each estimator), a second runs the workers' code on
    real-length clips (a 4 s segment, a short clip, one with silence): nothing is left for it to compile.
    (~35 s on 2 cores: compiling librosa's kernels from nothing.)"""
    rng = np.random.default_rng(0)
    t = np.arange(4 * SR) / SR
    clips = {
        "segment": 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size),
        "short": 0.2 * np.sin(2 * np.pi * 440 * t[: SR // 3]),
        "gap": np.concatenate([0.3 * np.sin(2 * np.pi * 110 * t[:SR]), np.zeros(SR)]),
    }
    paths = []
    for name, audio in clips.items():
        sf.write(str(tmp_path / f"{name}.wav"), audio.astype(np.float32), SR, subtype="PCM_16")
        paths.append(str(tmp_path / f"{name}.wav"))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    estimators = ["swift", "pyin"]
    warm = ("from timbrelab.config import FeaturesConfig, PitchConfig\nfrom timbrelab.data import features as lib\n"
            f"for e in {estimators!r}:\n    lib.warm_up(FeaturesConfig(pitch=PitchConfig(estimator=e)))")
    subprocess.run([sys.executable, "-c", warm], env=env, check=True, capture_output=True, timeout=600)
    assert any(Path(tmp_path / "numba").rglob("*.nbi")), "the warm-up compiled nothing into the cache"
    out = subprocess.run([sys.executable, "-c", _WORKER, json.dumps({e: paths for e in estimators})], env=env,
                         check=True, capture_output=True, text=True, timeout=600)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
