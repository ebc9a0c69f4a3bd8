"""The features stage's library: prepared clips -> memory-mapped feature arrays, train statistics and
a data report.

Per domain and split (``data/features/<domain>/<split>/``), one row per clip, in the prepared
``index.json`` order (see :mod:`timbrelab.data.datasets` for the reader side):

    index.json          [{"row", "id", "file", ...the prepared entry}]
    audio.npy           int16   (N, n_samples)       the clip's PCM_16 samples
    cqt.npy             float16 (N, n_bins, 1 + n_samples // cqt_hop)   log(|CQT| + floor)
    f0_hz.npy           float32 (N, 1 + n_samples // frame_hop)          always positive
    f0_confidence.npy   float32 (N, frames)                              in [0, 1]
    loudness_db.npy     float32 (N, frames)                              A-weighted, floored

``<domain>/stats.json`` holds the train split's statistics (CQT mean/std, loudness quantiles, pitch
range) so that CycleGAN and WaveNet see one scale and the DDSP transfer can map loudness and octaves.
Memory stays bounded: clips are read one at a time and appended to the arrays with plain writes; the
statistics are read back row by row and accumulated as sums and fixed-bin histograms.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from timbrelab.config import FeaturesConfig
from timbrelab.errors import ConfigError
from timbrelab.fsutil import atomic_path, atomic_write_json, read_json, round_floats

ARRAYS = ("audio", "cqt", "f0_hz", "f0_confidence", "loudness_db")
SPLITS = ("train", "valid", "test")
# Fixed histogram bins, so statistics stream over any amount of data in bounded memory.
LOUDNESS_BINS = np.arange(-120.0, 20.0 + 1e-9, 0.1)
PITCH_BINS = np.arange(0.0, 128.0 + 1e-9, 0.1)  # MIDI


def check_config(cfg: FeaturesConfig) -> int:
    """Fail at start on a config that cannot work; returns the CQT/model hop ratio."""
    from timbrelab.dsp.cqt import check_cqt_config
    from timbrelab.dsp.framing import check_hop_ratio
    from timbrelab.dsp.pitch import ESTIMATORS

    ratio = check_hop_ratio(cfg.cqt.hop_length, cfg.frame_hop)
    check_cqt_config(cfg.sample_rate, cfg.cqt.hop_length, cfg.cqt.fmin_hz, cfg.cqt.bins_per_octave, cfg.cqt.n_bins)
    if cfg.pitch.estimator not in ESTIMATORS:
        raise ConfigError(f"features.pitch.estimator is {cfg.pitch.estimator!r}; expected one of {sorted(ESTIMATORS)}")
    if not 0.0 < cfg.pitch.voiced_threshold < 1.0:
        raise ConfigError("features.pitch.voiced_threshold must lie strictly between 0 and 1")
    if cfg.workers < 1:
        raise ConfigError("features.workers must be at least 1")
    return ratio


def clip_features(audio: np.ndarray, cfg: FeaturesConfig) -> dict[str, np.ndarray]:
    """(n,) float32 audio -> every feature of one clip, on the project's centred frame grids."""
    from timbrelab.dsp.cqt import log_cqt
    from timbrelab.dsp.loudness import a_weighted_loudness
    from timbrelab.dsp.pitch import estimate_f0

    sr = cfg.sample_rate
    f0, confidence = estimate_f0(audio, sr, cfg.frame_hop, estimator=cfg.pitch.estimator,
                                 fmin_hz=cfg.pitch.fmin_hz, fmax_hz=cfg.pitch.fmax_hz)
    return {
        "cqt": log_cqt(audio, sr, hop_length=cfg.cqt.hop_length, fmin_hz=cfg.cqt.fmin_hz,
                       bins_per_octave=cfg.cqt.bins_per_octave, n_bins=cfg.cqt.n_bins,
                       log_floor=cfg.cqt.log_floor).astype(np.float16),
        "f0_hz": f0.astype(np.float32),
        "f0_confidence": confidence.astype(np.float32),
        "loudness_db": a_weighted_loudness(audio, sr, cfg.frame_hop, n_fft=cfg.loudness.n_fft,
                                           floor_db=cfg.loudness.floor_db).astype(np.float32),
    }


def _read_clip(path: Path, cfg: FeaturesConfig) -> tuple[np.ndarray | None, str | None]:
    """PCM_16 samples of a prepared clip, or a reason to skip it."""
    try:
        info = sf.info(str(path))
        pcm = sf.read(str(path), dtype="int16", always_2d=True)[0]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped with the reason
        return None, f"unreadable ({' '.join(str(exc).split())})"
    if info.samplerate != cfg.sample_rate:
        return None, f"sample rate {info.samplerate} Hz, expected {cfg.sample_rate} (rerun prepare)"
    if pcm.shape[1] != 1:
        return None, f"{pcm.shape[1]} channels, expected mono (rerun prepare)"
    return pcm[:, 0], None


_WORKER_CFG: FeaturesConfig | None = None


def _init_worker(cfg: FeaturesConfig, threads: int | None = None) -> None:
    global _WORKER_CFG
    _WORKER_CFG = cfg
    if threads:  # in a pool: one compute thread per process, the processes fill the cores
        os.environ["TIMBRELAB_ONNX_THREADS"] = str(threads)
        # The parent compiled everything under the cache lock (warm_up); a worker that still meets an
        # uncompiled signature keeps it in memory rather than race its siblings writing numba's cache.
        from timbrelab.dsp.numba_cache import forbid_cache_writes

        forbid_cache_writes()


WARM_UP_SECONDS = 0.5


def warm_up(cfg: FeaturesConfig) -> None:
    """Compile (or load from numba's cache) every librosa kernel :func:`_work` runs, in this process and
    under :func:`timbrelab.dsp.numba_cache.cache_lock`, before any worker starts: numba writes its cache
    without a lock, and two processes compiling the same function at once can poison it for the venv.

    The clip goes through :func:`_work`'s own path (PCM_16 -> float32 -> :func:`clip_features` with
    ``cfg``), so the kernels see the same argument types: half a second of a tone with harmonics, then
    silence (voiced and unvoiced frames for pYIN's Viterbi, the silence rule, the loudness floor).
    """
    from timbrelab.dsp.numba_cache import cache_lock

    sr = cfg.sample_rate
    t = np.arange(int(sr * WARM_UP_SECONDS)) / sr
    tone = sum(0.2 / k * np.sin(2 * np.pi * 220.0 * k * t) for k in (1, 2, 3))
    tone[t.size // 2:] = 0.0
    pcm = np.round(tone * 32767.0).astype(np.int16)
    with cache_lock():
        clip_features(pcm.astype(np.float32) / 32768.0, cfg)


def _work(path: str) -> tuple[np.ndarray | None, dict | None, str | None]:
    """One clip (in a worker process or in this one): (pcm, features, skip reason)."""
    cfg = _WORKER_CFG
    pcm, reason = _read_clip(Path(path), cfg)
    if pcm is None:
        return None, None, reason
    audio = pcm.astype(np.float32) / 32768.0
    features = clip_features(audio, cfg)
    if not all(np.all(np.isfinite(value)) for value in features.values()):
        return None, None, "non-finite features"
    if float(np.max(features["loudness_db"])) < cfg.silence_db:
        return None, None, f"silent (loudness never above {cfg.silence_db:g} dB)"
    return pcm, features, None


@contextlib.contextmanager
def clip_mapper(cfg: FeaturesConfig) -> Iterator[Callable[[list[str]], Iterable]]:
    """``map`` over clip paths with ``cfg.workers`` processes, started once for the whole stage
    (each worker pays the imports and numba's compilation once). Results come back in input order,
    so the arrays are identical for any number of workers. numba's kernels are compiled first, here,
    under a lock (:func:`warm_up`): no worker ever compiles what another may be writing."""
    _init_worker(cfg)
    warm_up(cfg)
    if cfg.workers <= 1:
        yield lambda paths: map(_work, paths)
        return
    with ProcessPoolExecutor(max_workers=cfg.workers, initializer=_init_worker, initargs=(cfg, 1)) as pool:
        yield lambda paths: pool.map(_work, paths, chunksize=4)


def extract_split(prepared_dir: Path, out_dir: Path, cfg: FeaturesConfig, *, label: str,
                  progress: bool = True, mapper: Callable[[list[str]], Iterable] | None = None) -> dict[str, Any]:
    """Features of every clip listed in ``prepared_dir/index.json`` -> ``out_dir`` (see module doc).

    Clips that are unreadable, of another length than the split's first clip (shorter than one
    segment), non-finite or silent are skipped with the reason and never written.
    """
    index_path = prepared_dir / "index.json"
    entries = read_json(index_path) if index_path.exists() else []
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[dict[str, str]] = []
    writers: dict[str, _RowWriter] = {}
    kept: list[dict[str, Any]] = []
    n_samples = None
    tasks = [str(prepared_dir / entry["file"]) for entry in entries]
    with contextlib.ExitStack() as stack:
        if mapper is None:
            mapper = stack.enter_context(clip_mapper(cfg))
        for entry, (pcm, features, reason) in tqdm(zip(entries, mapper(tasks)), total=len(entries),
                                                   desc=f"features {label}", unit="clip", disable=not progress):
            if reason is None and n_samples is not None and pcm.shape[0] != n_samples:
                reason = f"{pcm.shape[0]} samples, expected {n_samples} like the split's other clips"
            if reason is not None:
                skipped.append({"id": entry["id"], "reason": reason})
                continue
            if n_samples is None:
                n_samples = pcm.shape[0]
                writers = _open_writers(out_dir, len(entries), pcm, features)
            writers["audio"].append(pcm)
            for name, value in features.items():
                writers[name].append(value)
            kept.append({**entry, "row": len(kept)})
    _finish_arrays(out_dir, writers)
    atomic_write_json(out_dir / "index.json", round_floats(kept))
    return {"clips": len(kept), "skipped": skipped, "n_samples": n_samples or 0,
            "seconds": len(kept) * (n_samples or 0) / cfg.sample_rate}


class _RowWriter:
    """Appends fixed-shape rows to ``<name>.npy.partial`` with plain sequential writes (a memory map
    would keep every written page in this process's resident set, growing with the data)."""

    def __init__(self, path: Path, capacity: int, row_shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.capacity, self.row_shape, self.dtype = path, capacity, row_shape, np.dtype(dtype)
        self.rows = 0
        self.handle = open(path, "wb")
        self.handle.write(self._header(capacity))

    def _header(self, rows: int) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (rows, *self.row_shape)})
        return buffer.getvalue()

    def append(self, row: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(row, dtype=self.dtype).tobytes())
        self.rows += 1

    def finish(self, final: Path) -> None:
        """Fix the header to the rows written (skipped clips leave the capacity short) and rename."""
        self.handle.close()
        if self.rows != self.capacity:
            # numpy pads the header with room for a first axis of up to 21 digits, so the header of
            # the shorter shape has the same length and is rewritten in place.
            new = self._header(self.rows)
            assert len(new) == len(self._header(self.capacity))
            body = self.rows * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
            with open(self.path, "r+b") as handle:
                handle.write(new)
                handle.truncate(len(new) + body)
        os.replace(self.path, final)


def _open_writers(out_dir: Path, rows: int, pcm: np.ndarray, features: dict[str, np.ndarray]) -> dict[str, _RowWriter]:
    """One writer per array, sized for ``rows`` clips shaped like the first one."""
    shapes = {"audio": (pcm.shape, pcm.dtype), **{k: (v.shape, v.dtype) for k, v in features.items()}}
    return {name: _RowWriter(out_dir / f"{name}.npy.partial", rows, shape, dtype)
            for name, (shape, dtype) in shapes.items()}


def _finish_arrays(out_dir: Path, writers: dict[str, _RowWriter]) -> None:
    for name in ARRAYS:
        if name in writers:
            writers[name].finish(out_dir / f"{name}.npy")
        else:  # no clip survived: empty arrays keep the layout uniform
            np.save(out_dir / f"{name}.npy", np.zeros((0,), dtype=np.float32))


def iter_rows(path: Path) -> Iterator[np.ndarray]:
    """Rows of a 2-D+ ``.npy`` file read with plain file reads (bounded resident memory)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(handle)
        if fortran_order or len(shape) < 2:
            return
        count = int(np.prod(shape[1:], dtype=np.int64))
        for _ in range(shape[0]):
            yield np.fromfile(handle, dtype=dtype, count=count).reshape(shape[1:])


# ------------------------------------------------------------------------------------------------
# Statistics of the train split (streamed)


def split_statistics(split_dir: Path, cfg: FeaturesConfig) -> dict[str, Any]:
    """CQT mean/std, loudness quantiles and pitch range of one split, row by row."""
    total = total_sq = 0.0
    count = rows = 0
    loud_hist = np.zeros(LOUDNESS_BINS.size - 1, dtype=np.int64)
    pitch_hist = np.zeros(PITCH_BINS.size - 1, dtype=np.int64)
    voiced_frames = frames = 0
    for c, f0, conf, loud in zip(*(iter_rows(split_dir / f"{name}.npy")
                                    for name in ("cqt", "f0_hz", "f0_confidence", "loudness_db"))):
        rows += 1
        c = c.astype(np.float64)
        total += c.sum()
        total_sq += np.square(c).sum()
        count += c.size
        loud_hist += np.histogram(np.clip(loud, LOUDNESS_BINS[0], LOUDNESS_BINS[-1] - 1e-6), LOUDNESS_BINS)[0]
        voiced = conf >= cfg.pitch.voiced_threshold
        midi = 69.0 + 12.0 * np.log2(f0[voiced].astype(np.float64) / 440.0)
        pitch_hist += np.histogram(np.clip(midi, PITCH_BINS[0], PITCH_BINS[-1] - 1e-6), PITCH_BINS)[0]
        voiced_frames += int(voiced.sum())
        frames += voiced.size
    mean = total / count if count else 0.0
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0))) if count else 1.0
    return {
        "clips": rows,
        "cqt": {"mean": mean, "std": std or 1.0},
        "loudness_db": {**_hist_summary(loud_hist, LOUDNESS_BINS),
                        "quantiles": _quantiles(loud_hist, LOUDNESS_BINS, np.linspace(0, 1, 101))},
        "f0": {"voiced_fraction": voiced_frames / frames if frames else 0.0,
               "voiced_seconds": voiced_frames * cfg.frame_hop / cfg.sample_rate,
               **{f"{k}_midi": v for k, v in _hist_summary(pitch_hist, PITCH_BINS).items()},
               "p01_midi": _quantiles(pitch_hist, PITCH_BINS, [0.01])[0],
               "p99_midi": _quantiles(pitch_hist, PITCH_BINS, [0.99])[0]},
        "histograms": {"loudness_db": loud_hist.tolist(), "pitch_midi": pitch_hist.tolist()},
    }


def _hist_summary(hist: np.ndarray, edges: np.ndarray) -> dict[str, float]:
    centres = 0.5 * (edges[:-1] + edges[1:])
    n = hist.sum()
    if not n:
        return {"mean": 0.0, "std": 0.0}
    mean = float((hist * centres).sum() / n)
    return {"mean": mean, "std": float(np.sqrt((hist * (centres - mean) ** 2).sum() / n))}


def _quantiles(hist: np.ndarray, edges: np.ndarray, qs) -> list[float]:
    """Quantiles from a histogram, interpolated inside bins (0.1-unit bins: error <= 0.05).

    Only the span from the first to the last non-empty bin takes part: outside it the CDF is flat, and
    interpolating on a flat CDF would put q=0 / q=1 at the histogram's outer edges instead of the data's.
    """
    occupied = np.flatnonzero(hist)
    if occupied.size == 0:
        return [0.0 for _ in qs]
    lo, hi = occupied[0], occupied[-1] + 1
    cdf = np.concatenate([[0.0], np.cumsum(hist[lo:hi], dtype=np.float64)])
    return [float(np.interp(q * cdf[-1], cdf, edges[lo:hi + 1])) for q in qs]


def domain_stats(domain_dir: Path, cfg: FeaturesConfig, ratio: int) -> dict[str, Any]:
    """stats.json of a domain: the train split's statistics plus the grids every model must match."""
    train = split_statistics(domain_dir / "train", cfg)
    return {
        "sample_rate": cfg.sample_rate, "frame_hop": cfg.frame_hop, "cqt_hop": cfg.cqt.hop_length,
        "hop_ratio": ratio, "n_bins": cfg.cqt.n_bins, "fmin_hz": cfg.cqt.fmin_hz,
        "bins_per_octave": cfg.cqt.bins_per_octave, "log_floor": cfg.cqt.log_floor,
        "pitch_estimator": cfg.pitch.estimator, "voiced_threshold": cfg.pitch.voiced_threshold,
        # How every feature was computed, so a model trained on them can compute the same for new audio.
        "features_config": asdict(cfg),
        "computed_on": "train", **train,
    }


# ------------------------------------------------------------------------------------------------
# Data report


def write_report(domain: str, stats: dict[str, Any], per_split: dict[str, dict], path: Path) -> None:
    """One PNG per domain: pitch and loudness histograms of train, and voiced audio per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    pitch = np.asarray(stats["histograms"]["pitch_midi"], dtype=float)
    centres = 0.5 * (PITCH_BINS[:-1] + PITCH_BINS[1:])
    coarse = pitch.reshape(-1, 10).sum(axis=1)  # one bar per semitone
    axes[0].bar(centres.reshape(-1, 10).mean(axis=1), coarse, width=0.9)
    lo, hi = stats["f0"]["p01_midi"], stats["f0"]["p99_midi"]
    axes[0].set_xlim(max(0, lo - 6), min(128, hi + 6))
    axes[0].set(title=f"{domain} train: pitch of voiced frames", xlabel="MIDI pitch", ylabel="frames")
    axes[0].axvspan(lo, hi, alpha=0.1, color="green", label=f"1-99 %: {lo:.1f}-{hi:.1f}")
    axes[0].legend()
    loud = np.asarray(stats["histograms"]["loudness_db"], dtype=float)
    l_centres = 0.5 * (LOUDNESS_BINS[:-1] + LOUDNESS_BINS[1:])
    axes[1].bar(l_centres.reshape(-1, 10).mean(axis=1), loud.reshape(-1, 10).sum(axis=1), width=0.9)
    axes[1].set_xlim(-85, 5)
    axes[1].set(title=f"{domain} train: A-weighted loudness", xlabel="dB", ylabel="frames")
    splits = [s for s in SPLITS if s in per_split]
    voiced = [per_split[s].get("voiced_seconds", 0.0) for s in splits]
    total = [per_split[s].get("seconds", 0.0) for s in splits]
    axes[2].bar(splits, total, color="lightgray", label="all audio")
    axes[2].bar(splits, voiced, label="voiced")
    axes[2].set(title=f"{domain}: seconds per split", ylabel="seconds")
    axes[2].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # No Software/date metadata: the PNG must hash the same on every run (it is a DVC output).
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)


def voiced_seconds(split_dir: Path, cfg: FeaturesConfig) -> float:
    voiced = sum(int((conf >= cfg.pitch.voiced_threshold).sum()) for conf in iter_rows(split_dir / "f0_confidence.npy"))
    return voiced * cfg.frame_hop / cfg.sample_rate
