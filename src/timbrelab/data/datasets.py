"""The reader side of the ``features`` stage: PyTorch datasets and Lightning DataModules.

Storage (written by :mod:`timbrelab.data.features`, one row per clip, every clip of a split the same
length)::

    <features_root>/<domain>/<split>/index.json   [{"row": i, "id", "file", ...}]  in row order
        audio.npy          int16   (N, n_samples)                    PCM_16, / 32768 -> [-1, 1)
        cqt.npy            float16 (N, n_bins, 1 + n_samples // cqt_hop)   log(|C| + floor)
        f0_hz.npy          float32 (N, 1 + n_samples // frame_hop)   always positive
        f0_confidence.npy  float32 (N, frames)                       in [0, 1]
        loudness_db.npy    float32 (N, frames)                       A-weighted, floored
    <features_root>/<domain>/stats.json           grids (sample_rate, frame_hop, cqt_hop, n_bins) and
                                                  train statistics (cqt.mean / cqt.std, ...)

Arrays are memory maps (``np.load(..., mmap_mode="r")``), opened lazily in each process, so a split
of any size costs a few file handles and an item reads only its own rows and columns.

Framing (:mod:`timbrelab.f0track`): frames are centred, frame ``i`` sits at sample ``i * hop``.

Crop conventions (every item has exactly ``frames * hop`` samples):

* DDSP: a crop of ``F = round(crop_seconds * sample_rate) // frame_hop`` frames starting at frame
  ``s`` is frames ``s .. s+F-1`` and samples ``[s * frame_hop, (s+F) * frame_hop)``: crop frame ``j``
  is centred on crop sample ``j * frame_hop``, and upsampling frames by ``frame_hop`` gives exactly the
  crop's samples. No crop means the whole clip under the same rule: ``F = n_samples // frame_hop``
  (the last centred frame, at sample ``F * frame_hop``, and any samples from there on are dropped).
* CQT (CycleGAN, WaveNet): a crop is CQT columns ``s .. s+crop_frames-1``; WaveNet's audio is samples
  ``[s * cqt_hop, (s+crop_frames) * cqt_hop)``, so column ``j`` is centred on crop sample
  ``j * cqt_hop``. (A repeat-upsampler pairing column ``j`` with samples ``[j*hop, (j+1)*hop)`` is
  therefore half a hop late; a centred upsampler is exact.)

Randomness: every random choice (crop starts, CycleGAN pairings, the training order) is a function of
``(seed, epoch, index)`` alone, never of the worker count or of global RNG state. The epoch reaches
DataLoader workers inside the keys: :class:`EpochSampler` yields ``(epoch, index)`` pairs, and Lightning
calls its ``set_epoch`` at the start of every epoch. Datasets also accept plain ``int`` keys, which use
their own ``epoch`` (``set_epoch``), for direct use and for validation loaders.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.fsutil import read_json

ARRAYS: dict[str, np.dtype] = {
    "audio": np.dtype(np.int16),
    "cqt": np.dtype(np.float16),
    "f0_hz": np.dtype(np.float32),
    "f0_confidence": np.dtype(np.float32),
    "loudness_db": np.dtype(np.float32),
}
FRAME_ARRAYS = ("f0_hz", "f0_confidence", "loudness_db")
PCM_SCALE = 32768.0
REPRO = "rerun `dvc repro features`"

# Independent random streams, mixed into every seed: (seed, epoch, stream[, index]).
_SHUFFLE, _CROP, _CROP_B, _ASSIGN_A, _ASSIGN_B = range(5)

Key = int | tuple[int, int]


# --------------------------------------------------------------------------------------------------
# Statistics and one split on disk


def load_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``<domain>/stats.json`` (see :func:`check_stats`)."""
    path = Path(path)
    if not path.is_file():
        raise TimbrelabError(f"{path}: no such stats file; {REPRO}")
    return check_stats(_read_json_checked(path), str(path))


def _read_json_checked(path: Path) -> Any:
    try:
        return read_json(path)
    except ValueError as exc:
        raise TimbrelabError(f"{path}: not valid JSON ({exc}); {REPRO}") from exc


def check_stats(stats: Mapping[str, Any], where: str = "stats.json") -> dict[str, Any]:
    """Check the grid keys every reader relies on; returns ``stats`` as a plain dict.

    ``sample_rate``, ``frame_hop``, ``cqt_hop``, ``n_bins`` must be positive integers and
    ``cqt_hop / frame_hop`` an integer (ConfigError naming both keys otherwise).
    """
    if not isinstance(stats, Mapping):
        raise TimbrelabError(f"{where}: expected a JSON object, found {type(stats).__name__}; {REPRO}")
    for key in ("sample_rate", "frame_hop", "cqt_hop", "n_bins"):
        value = stats.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TimbrelabError(f"{where}: '{key}' must be a positive integer, found {value!r}; {REPRO}")
    if stats["cqt_hop"] % stats["frame_hop"]:
        raise ConfigError(
            f"{where}: cqt_hop={stats['cqt_hop']} is not an integer multiple of frame_hop={stats['frame_hop']}; "
            f"set features.cqt.hop_length to a multiple of features.frame_hop and {REPRO}")
    ratio = stats["cqt_hop"] // stats["frame_hop"]
    if "hop_ratio" in stats and stats["hop_ratio"] != ratio:
        raise TimbrelabError(f"{where}: hop_ratio={stats['hop_ratio']!r} but cqt_hop / frame_hop = {ratio}; {REPRO}")
    return dict(stats)


def cqt_normaliser(stats: Mapping[str, Any], where: str = "stats.json") -> tuple[float, float]:
    """``(cqt.mean, cqt.std)`` from stats, checked finite with std > 0."""
    cqt = stats.get("cqt")
    mean = cqt.get("mean") if isinstance(cqt, Mapping) else None
    std = cqt.get("std") if isinstance(cqt, Mapping) else None
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (mean, std))
    if not ok or std <= 0:
        raise TimbrelabError(f"{where}: 'cqt' must hold finite 'mean' and 'std' > 0, found {cqt!r}; {REPRO}")
    return float(mean), float(std)


def _as_stats(stats: Mapping[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
    if isinstance(stats, (str, os.PathLike)):
        return load_stats(stats), str(stats)
    return check_stats(stats), "stats.json"


class FeatureSplit:
    """One ``<domain>/<split>/`` directory, checked against itself and its domain's stats.

    Construction reads ``index.json`` and the arrays' headers and raises :class:`TimbrelabError`
    naming the file on any disagreement. :meth:`array` opens memory maps lazily, once per process;
    pickling (to DataLoader workers) drops them, so workers never receive array data.

    Attributes: ``path``, ``stats``, ``entries`` (index.json), ``n_samples``, ``n_frames``
    (``1 + n_samples // frame_hop``), ``n_cqt_frames`` (``1 + n_samples // cqt_hop``), ``n_bins``,
    ``sample_rate``, ``frame_hop``, ``cqt_hop``.
    """

    def __init__(self, split_dir: str | os.PathLike, stats: Mapping[str, Any] | str | os.PathLike):
        self.path = Path(split_dir)
        self.stats, self.stats_where = _as_stats(stats)
        self.sample_rate = self.stats["sample_rate"]
        self.frame_hop = self.stats["frame_hop"]
        self.cqt_hop = self.stats["cqt_hop"]
        self.n_bins = self.stats["n_bins"]
        self._arrays: dict[str, np.ndarray] = {}
        self._pid: int | None = os.getpid()
        self.entries = self._read_index()
        self.n_samples = 0
        if self.entries:
            self._check_arrays()
        self.n_frames = 1 + self.n_samples // self.frame_hop
        self.n_cqt_frames = 1 + self.n_samples // self.cqt_hop

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"FeatureSplit({str(self.path)!r}, rows={len(self)}, n_samples={self.n_samples})"

    def _read_index(self) -> list[dict[str, Any]]:
        if not self.path.is_dir():
            raise TimbrelabError(f"{self.path}: no such feature split (expected <features_root>/<domain>/"
                                 f"<split>/, domains from features.domains); {REPRO}")
        index_path = self.path / "index.json"
        if not index_path.is_file():
            raise TimbrelabError(f"{index_path}: missing; {REPRO}")
        entries = _read_json_checked(index_path)
        if not isinstance(entries, list):
            raise TimbrelabError(f"{index_path}: expected a list of entries; {REPRO}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or entry.get("row") != i or "id" not in entry:
                raise TimbrelabError(f"{index_path}: entry {i} must be an object with \"row\": {i} and an \"id\", "
                                     f"found {entry!r}; {REPRO}")
        return entries

    def _check_arrays(self) -> None:
        rows = len(self.entries)
        for name, dtype in ARRAYS.items():
            array = self.array(name)
            where = self.path / f"{name}.npy"
            if array.dtype != dtype:
                raise TimbrelabError(f"{where}: dtype {array.dtype}, expected {dtype}; {REPRO}")
            if array.ndim < 1 or array.shape[0] != rows:
                raise TimbrelabError(f"{where}: {array.shape[0] if array.ndim else 0} rows, but "
                                     f"{self.path / 'index.json'} lists {rows}; {REPRO}")
        audio = self.array("audio")
        if audio.ndim != 2 or audio.shape[1] < 1:
            raise TimbrelabError(f"{self.path / 'audio.npy'}: shape {audio.shape}, expected (N, n_samples); {REPRO}")
        self.n_samples = int(audio.shape[1])
        frames = 1 + self.n_samples // self.frame_hop
        expected = {name: (rows, frames) for name in FRAME_ARRAYS}
        expected["cqt"] = (rows, self.n_bins, 1 + self.n_samples // self.cqt_hop)
        for name, shape in expected.items():
            found = self.array(name).shape
            if found != shape:
                raise TimbrelabError(
                    f"{self.path / f'{name}.npy'}: shape {found}, expected {shape} for {self.n_samples}-sample "
                    f"clips with frame_hop={self.frame_hop}, cqt_hop={self.cqt_hop}, n_bins={self.n_bins} "
                    f"from {self.stats_where}; the split and its stats disagree, {REPRO}")

    def array(self, name: str) -> np.ndarray:
        """The memory-mapped array ``<name>.npy`` (opened on first use in this process)."""
        if self._pid != os.getpid():  # a forked worker: open our own maps
            self._arrays, self._pid = {}, os.getpid()
        if name not in self._arrays:
            path = self.path / f"{name}.npy"
            if not path.is_file():
                raise TimbrelabError(f"{path}: missing; {REPRO}")
            try:
                self._arrays[name] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise TimbrelabError(f"{path}: unreadable or truncated ({' '.join(str(exc).split())}); "
                                     f"{REPRO}") from exc
        return self._arrays[name]

    def audio(self, row: int, start: int, stop: int) -> np.ndarray:
        """(stop - start,) float32 samples in [-1, 1)."""
        return np.asarray(self.array("audio")[row, start:stop], dtype=np.float32) / PCM_SCALE

    def frames(self, name: str, row: int, start: int, stop: int) -> np.ndarray:
        """(stop - start,) float32 frames of a frame-rate array."""
        return np.array(self.array(name)[row, start:stop], dtype=np.float32)

    def cqt(self, row: int, start: int, stop: int) -> np.ndarray:
        """(n_bins, stop - start) float32 log-CQT columns (not normalised)."""
        return np.array(self.array("cqt")[row, :, start:stop], dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"], state["_pid"] = {}, None
        return state


# --------------------------------------------------------------------------------------------------
# Seeding


def _rng(seed: int, epoch: int, stream: int, index: int | None = None) -> np.random.Generator:
    entropy = [seed, epoch, stream] if index is None else [seed, epoch, stream, index]
    return np.random.default_rng(entropy)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, found {seed!r}")
    return seed


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and numpy's global RNGs from the worker's torch seed
    (itself drawn from the loader's seeded generator), for any library code that uses them. The
    datasets here never do: their draws depend on ``(seed, epoch, index)`` only."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys over ``range(n)``: a permutation seeded by ``(seed, epoch)`` when
    ``shuffle``, else in order. Lightning calls :meth:`set_epoch` at every epoch start.

    With ``world_size`` > 1 (DDP) every rank takes the same permutation and keeps every ``world_size``-th
    key from its ``rank`` on, after dropping the ``n % world_size`` last ones: disjoint shards of equal length
    (no item repeated to even them out). ``handed`` lists the keys handed out so far in the current pass."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle, self.epoch = int(n), check_seed(seed), shuffle, 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        if world_size > self.n:
            raise TimbrelabError(f"{world_size} training processes but only {self.n} training items: every "
                                 f"process needs at least one; use fewer devices or more data")
        self.rank, self.world_size = int(rank), int(world_size)
        self.handed: list[tuple[int, int]] = []
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        """The next pass over ``epoch`` leaves out its first ``skip`` keys (those a resumed run already trained
        on), so a run resumed mid-epoch sees the batches an uninterrupted one would."""
        self._resume = (int(epoch), int(skip))

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = _rng(self.seed, self.epoch, _SHUFFLE).permutation(self.n) if self.shuffle else range(self.n)
        if self.world_size > 1:
            order = order[: len(self) * self.world_size][self.rank :: self.world_size]
        keys = [(self.epoch, int(i)) for i in order]
        if self._resume is not None and self._resume[0] == self.epoch:
            keys = keys[self._resume[1]:]
            self._resume = None
        self.handed = []
        return self._hand_out(keys)

    def _hand_out(self, keys: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        for key in keys:
            self.handed.append(key)
            yield key


class _EpochDataset(Dataset):
    """Shared key handling: ``int`` (uses ``self.epoch``) or ``(epoch, index)`` from :class:`EpochSampler`."""

    def __init__(self, seed: int):
        self.seed = check_seed(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _key(self, key: Key) -> tuple[int, int]:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return epoch, index


def _non_empty(split: FeatureSplit) -> FeatureSplit:
    if not len(split):
        raise TimbrelabError(f"{split.path / 'index.json'}: the split is empty (no clip survived prepare/features); "
                             f"add data or check the prepare split fractions, then rerun `dvc repro`")
    return split


def _crop_start(rng: np.random.Generator | None, max_start: int) -> int:
    return 0 if rng is None else int(rng.integers(0, max_start + 1))


# --------------------------------------------------------------------------------------------------
# Datasets


class _CropDataset(_EpochDataset):
    """One split, one crop per item: random per (seed, epoch, index) in training, start 0 otherwise.
    Subclasses set ``split``, ``max_start`` and ``random_crop``."""

    def __len__(self) -> int:
        return len(self.split)

    def start_frame(self, index: int, epoch: int | None = None) -> int:
        """The crop's first frame (CQT column for WaveNet) for item ``index`` in ``epoch``."""
        rng = _rng(self.seed, self.epoch if epoch is None else epoch, _CROP, index) if self.random_crop else None
        return _crop_start(rng, self.max_start)


class DDSPDataset(_CropDataset):
    """Audio with its f0, confidence and loudness, for the DDSP autoencoder.

    Item: ``{"audio": (F * frame_hop,) float32, "f0_hz": (F,), "f0_confidence": (F,), "loudness_db": (F,)}``
    (all float32, raw values; see the module doc for the crop rule). ``random_crop`` (training) draws
    the start frame uniformly from ``0 .. n_samples // frame_hop - F``, seeded by ``(seed, epoch, index)``;
    otherwise (validation) the crop starts at frame 0.
    """

    def __init__(self, split_dir: str | os.PathLike, stats: Mapping[str, Any] | str | os.PathLike,
                 crop_seconds: float | None = None, seed: int = 0, random_crop: bool = True):
        super().__init__(seed)
        self.split = _non_empty(FeatureSplit(split_dir, stats))
        hop, n = self.split.frame_hop, self.split.n_samples
        whole = n // hop
        if crop_seconds is None:
            self.crop_frames = whole
        else:
            self.crop_frames = round(float(crop_seconds) * self.split.sample_rate) // hop
            if self.crop_frames < 1 or self.crop_frames > whole:
                raise ConfigError(f"crop_seconds={crop_seconds} gives {self.crop_frames} frames of {hop} samples; "
                                  f"it must be between {hop / self.split.sample_rate} s and the clips' "
                                  f"{whole * hop / self.split.sample_rate} s in {self.split.path}")
        self.crop_samples = self.crop_frames * hop
        self.max_start = whole - self.crop_frames
        self.random_crop = random_crop

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        epoch, index = self._key(key)
        start = self.start_frame(index, epoch)
        stop = start + self.crop_frames
        hop = self.split.frame_hop
        item = {"audio": self.split.audio(index, start * hop, stop * hop)}
        for name in FRAME_ARRAYS:
            item[name] = self.split.frames(name, index, start, stop)
        return {name: torch.from_numpy(value) for name, value in item.items()}


class UnpairedCQTDataset(_EpochDataset):
    """Unpaired log-CQT crops of two domains, for CycleGAN.

    Item: ``{"a": (1, n_bins, crop_frames), "b": (1, n_bins, crop_frames)}`` float32, each normalised
    with its own domain's ``cqt.mean`` / ``cqt.std``. Length ``L = max(len a, len b)``. Per epoch each
    domain's rows are spread over the ``L`` items so that every row appears ``L // n`` or ``L // n + 1``
    times (the extra rows drawn at random); domain a in row order (item ``k`` is a's row ``k`` when a
    is the larger domain), domain b in a permutation seeded by ``(seed, epoch)``, drawn independently
    of a. ``random_crop`` draws a's and b's crop starts independently per ``(seed, epoch, index)``;
    otherwise crops start at column 0. ``crop_frames=None``: the frames both domains' clips have (whole clips).
    """

    def __init__(self, split_dir_a: str | os.PathLike, split_dir_b: str | os.PathLike,
                 stats_a: Mapping[str, Any] | str | os.PathLike, stats_b: Mapping[str, Any] | str | os.PathLike,
                 crop_frames: int | None, seed: int = 0, random_crop: bool = True):
        super().__init__(seed)
        self.split_a = _non_empty(FeatureSplit(split_dir_a, stats_a))
        self.split_b = _non_empty(FeatureSplit(split_dir_b, stats_b))
        self.norm_a = cqt_normaliser(self.split_a.stats, self.split_a.stats_where)
        self.norm_b = cqt_normaliser(self.split_b.stats, self.split_b.stats_where)
        if self.split_a.n_bins != self.split_b.n_bins:
            raise ConfigError(f"{self.split_a.path} has n_bins={self.split_a.n_bins} but {self.split_b.path} has "
                              f"n_bins={self.split_b.n_bins}; both domains need one features.cqt grid, {REPRO}")
        common = min(self.split_a.n_cqt_frames, self.split_b.n_cqt_frames)
        self.crop_frames = common if crop_frames is None else _check_crop_frames(
            crop_frames, common, f"{self.split_a.path} and {self.split_b.path}")
        self.max_start_a = self.split_a.n_cqt_frames - self.crop_frames
        self.max_start_b = self.split_b.n_cqt_frames - self.crop_frames
        self.random_crop = random_crop
        self._length = max(len(self.split_a), len(self.split_b))
        self._assignment: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._length

    def rows(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(L,) row of a and (L,) row of b for every item in ``epoch`` (default ``self.epoch``)."""
        epoch = self.epoch if epoch is None else epoch
        if self._assignment is None or self._assignment[0] != epoch:
            a = _cover(len(self.split_a), self._length, _rng(self.seed, epoch, _ASSIGN_A), shuffle=False)
            b = _cover(len(self.split_b), self._length, _rng(self.seed, epoch, _ASSIGN_B), shuffle=True)
            self._assignment = (epoch, a, b)
        return self._assignment[1], self._assignment[2]

    def _crop(self, split: FeatureSplit, norm: tuple[float, float], row: int, start: int) -> torch.Tensor:
        mean, std = norm
        cqt = (split.cqt(row, start, start + self.crop_frames) - np.float32(mean)) / np.float32(std)
        return torch.from_numpy(cqt[None])

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        epoch, index = self._key(key)
        rows_a, rows_b = self.rows(epoch)
        if self.random_crop:
            start_a = _crop_start(_rng(self.seed, epoch, _CROP, index), self.max_start_a)
            start_b = _crop_start(_rng(self.seed, epoch, _CROP_B, index), self.max_start_b)
        else:
            start_a = start_b = 0
        return {"a": self._crop(self.split_a, self.norm_a, int(rows_a[index]), start_a),
                "b": self._crop(self.split_b, self.norm_b, int(rows_b[index]), start_b)}


def _cover(n: int, length: int, rng: np.random.Generator, shuffle: bool) -> np.ndarray:
    """(length,) rows of ``range(n)``: each ``length // n`` times plus ``length % n`` distinct random rows
    once more; in that order, or permuted when ``shuffle``."""
    extra = np.sort(rng.choice(n, size=length % n, replace=False))
    rows = np.concatenate([np.tile(np.arange(n), length // n), extra])
    return rng.permutation(rows) if shuffle else rows


def _check_crop_frames(crop_frames: int, available: int, where: str) -> int:
    if isinstance(crop_frames, bool) or not isinstance(crop_frames, int) or not 1 <= crop_frames <= available:
        raise ConfigError(f"crop_frames={crop_frames!r} must be an integer from 1 to {available} "
                          f"(the CQT frames of the clips in {where})")
    return crop_frames


class WaveNetDataset(_CropDataset):
    """Normalised log-CQT crops with their exactly aligned audio, for the conditional WaveNet.

    Item: ``{"cqt": (n_bins, crop_frames) float32, "audio": (crop_frames * cqt_hop,) float32}`` with
    ``audio = samples[s * cqt_hop : (s + crop_frames) * cqt_hop]`` for CQT columns ``s ..
    s+crop_frames-1`` (column ``j`` is centred on crop sample ``j * cqt_hop``). ``random_crop`` draws
    ``s`` from ``0 .. n_samples // cqt_hop - crop_frames`` per ``(seed, epoch, index)``; otherwise 0.
    """

    def __init__(self, split_dir: str | os.PathLike, stats: Mapping[str, Any] | str | os.PathLike,
                 crop_frames: int, seed: int = 0, random_crop: bool = True):
        super().__init__(seed)
        self.split = _non_empty(FeatureSplit(split_dir, stats))
        self.norm = cqt_normaliser(self.split.stats, self.split.stats_where)
        self.crop_frames = _check_crop_frames(crop_frames, self.split.n_samples // self.split.cqt_hop,
                                              str(self.split.path))
        self.crop_samples = self.crop_frames * self.split.cqt_hop
        self.max_start = self.split.n_samples // self.split.cqt_hop - self.crop_frames
        self.random_crop = random_crop

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        epoch, index = self._key(key)
        start = self.start_frame(index, epoch)
        mean, std = self.norm
        cqt = (self.split.cqt(index, start, start + self.crop_frames) - np.float32(mean)) / np.float32(std)
        hop = self.split.cqt_hop
        audio = self.split.audio(index, start * hop, (start + self.crop_frames) * hop)
        return {"cqt": torch.from_numpy(cqt), "audio": torch.from_numpy(audio)}
