"""Turn raw domains into model-ready clips: recordings -> normalised segments, NSynth notes -> whole notes.

Recordings (``cello``, ``source``)
    mono -> resample to ``sample_rate`` -> remove the recording's DC offset (its mean) -> trim
    leading/trailing audio more than ``trim_top_db`` below the peak -> one gain per *recording* (RMS of active frames to ``target_rms_db``, limited so the peak
    stays <= ``peak_limit``) -> segments of ``segment_seconds`` every ``segment_hop_seconds`` (the short
    tail is dropped) -> segments quieter than ``silence_threshold_db`` dropped -> whole recordings
    assigned to train/valid/test.

    Memory stays bounded by streaming every file twice in blocks (``audio.stream_blocks`` +
    ``soxr.ResampleStream``, which gives bit-identical output on both passes): pass 1 keeps two
    values per 20 ms frame (sum and sum of squares, about 2.9 MB per hour of audio) to find the DC
    offset, the peak, the trim points and the active level, and measures clipping on the raw samples
    (heavily clipped recordings are skipped, see CLIP_FRACTION_MAX); pass 2 resamples again and
    writes segments as soon as they are complete, holding at most one segment plus one block. The f0 sidecar of the source domain is read whole (three
    numbers per 4 ms row, about 22 MB per hour), which is the one O(duration) structure.

    f0 alignment: the resampled signal keeps the raw time axis (the resampler is delay-compensated
    and trimming happens after resampling), and with an f0 track the trim start is moved back onto
    the track's hop grid, so with a segment hop that is a multiple of the f0 hop every segment row
    is exactly a raw row (otherwise rows are interpolated).

NSynth notes
    kept whole, at their recorded velocity (no normalisation), in their official split.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from timbrelab.audio import (AUDIO_EXTENSIONS, check_complete, convert_to_wav, load_audio, rms_db, save_wav,
                             stream_blocks)
from timbrelab.config import PrepareConfig
from timbrelab.errors import AudioError, ConfigError, TimbrelabError
from timbrelab.data.splits import SPLITS, split_counts
from timbrelab.data.splits import split_fractions as fractions_of
from timbrelab.f0track import F0_SUFFIX, n_frames, read_f0_csv, write_f0_csv
from timbrelab.fsutil import atomic_dir, atomic_path, atomic_write_json, read_json, round_floats

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BLOCK_FRAMES = 1 << 16      # input frames per streamed block
_FRAME_SECONDS = 0.02        # analysis frame for trim and level
_RELATIVE_GATE_DB = 20.0     # "active" frames: within this of the mean power of the non-trimmed frames
_STAGING = ".staging"
# Clipping: samples within CLIP_TOLERANCE of the peak magnitude, in runs of at least CLIP_MIN_RUN, as a
# fraction of all samples. Measured: a clean full-scale sine scores 0 % at 220 Hz, 1.1 % at 98 Hz and
# at most 2.85 % (the limit for low tones, whose crest spans several samples); a sine clipped 0.1 dB
# below its crest 9.3 %, 0.9 dB 29 %, a square wave 100 %; the offline renders (cello, glides) at
# most 0.04 %. 5 % sits between clean and clipped. Measured on the raw samples, before resampling
# smooths the plateaus.
CLIP_TOLERANCE = 0.001
CLIP_MIN_RUN = 3
CLIP_FRACTION_MAX = 0.05


class _Skip(Exception):
    """A recording or note that is left out, with the reason."""


# --------------------------------------------------------------------------------------------------
# Configuration and split assignment


def split_fractions(cfg: PrepareConfig) -> dict[str, float]:
    """``cfg.split`` as {split: fraction}; ConfigError unless they are >= 0 and sum to 1."""
    return fractions_of(cfg.split, "prepare.split")


def _check_config(cfg: PrepareConfig) -> dict[str, float]:
    def positive(key: str) -> float:
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"prepare.{key} = {value!r}: expected a number > 0")
        return float(value)

    for key in ("sample_rate", "segment_seconds", "segment_hop_seconds", "trim_top_db", "peak_limit"):
        positive(key)
    if int(cfg.sample_rate) != cfg.sample_rate:
        raise ConfigError(f"prepare.sample_rate = {cfg.sample_rate!r}: expected a whole number of Hz")
    if cfg.peak_limit > 1.0:
        raise ConfigError(f"prepare.peak_limit = {cfg.peak_limit!r}: expected at most 1.0 (PCM_16 clips above)")
    if cfg.min_recording_seconds < 0:
        raise ConfigError(f"prepare.min_recording_seconds = {cfg.min_recording_seconds!r}: expected >= 0")
    for key in ("target_rms_db", "silence_threshold_db"):
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value > 0:
            raise ConfigError(f"prepare.{key} = {value!r}: expected a level in dBFS (<= 0)")
    return split_fractions(cfg)


def assign_splits(ids: list[str] | set[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """{recording id: split}, deterministic from ``seed`` and the ids alone (not their order).

    Recordings are ranked by sha256(seed, id); the first ``counts["train"]`` go to train, and so on.
    Adding a recording therefore moves at most the few recordings at the split boundaries.
    """
    unique = sorted(set(ids))
    counts = split_counts(len(unique), fractions)
    ranked = sorted(unique, key=lambda rid: (hashlib.sha256(f"{seed}\0{rid}".encode()).hexdigest(), rid))
    assignment: dict[str, str] = {}
    pos = 0
    for name in SPLITS:
        for rid in ranked[pos:pos + counts[name]]:
            assignment[rid] = name
        pos += counts[name]
    return assignment


# --------------------------------------------------------------------------------------------------
# Recordings


@dataclass
class _Plan:
    """What pass 1 found out about one recording, in output samples."""

    n_samples: int
    start: int
    end: int
    peak: float
    level_db: float
    gain: float
    n_segments: int
    dc: float = 0.0  # the recording's mean, subtracted from every segment


class _ClipMeter:
    """Streams raw blocks and counts the samples that sit on the peak in runs (see CLIP_FRACTION_MAX).

    The peak is the running one: when it rises past the tolerance band the earlier count is dropped
    (those samples sit below the new band), so a hard-clipped file, whose plateaus all share one value,
    is measured exactly.
    """

    def __init__(self) -> None:
        self.level = 0.0
        self.clipped = 0
        self.total = 0
        self.carry = 0  # length of the run of near-peak samples that ended the previous block

    def update(self, block: np.ndarray) -> None:
        mag = np.abs(np.asarray(block, dtype=np.float32))
        self.total += mag.size
        if not mag.size:
            return
        top = float(mag.max())
        if top > self.level:
            if top * (1.0 - CLIP_TOLERANCE) > self.level:
                self.clipped, self.carry = 0, 0
            self.level = top
        near = mag >= self.level * (1.0 - CLIP_TOLERANCE)
        edges = np.diff(np.concatenate([[0], near.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        lengths = ends - starts
        if lengths.size and starts[0] == 0 and self.carry:
            if self.carry < CLIP_MIN_RUN <= self.carry + lengths[0]:
                self.clipped += self.carry  # the previous block's tail turned out to be part of a run
            lengths[0] += self.carry
            own = lengths.copy()
            own[0] -= self.carry
        else:
            own = lengths
        self.clipped += int(np.sum(own[lengths >= CLIP_MIN_RUN]))
        self.carry = int(lengths[-1]) if near[-1] else 0

    @property
    def fraction(self) -> float:
        return self.clipped / self.total if self.total else 0.0


def clipped_fraction(audio: np.ndarray) -> float:
    """Fraction of ``audio``'s samples that sit within CLIP_TOLERANCE of its peak in runs of >= CLIP_MIN_RUN."""
    meter = _ClipMeter()
    meter.update(audio)
    return meter.fraction


@dataclass
class _F0Track:
    t0: float
    hop_s: float
    f0: np.ndarray      # float64
    voiced: np.ndarray  # bool


def prepare_recordings(raw_dir: Path, out_dir: Path, cfg: PrepareConfig, *, domain: str,
                       progress: bool = True) -> dict[str, Any]:
    """Segment, normalise and split one recordings domain; build ``out_dir`` atomically; return a summary."""
    fractions = _check_config(cfg)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    items = _manifest_items(raw_dir)
    sr = int(cfg.sample_rate)
    seg_len = int(round(cfg.segment_seconds * sr))
    seg_hop = int(round(cfg.segment_hop_seconds * sr))

    skipped: list[dict[str, str]] = []
    dropped_silent = 0
    kept: dict[str, list[dict[str, Any]]] = {}  # recording id -> staged index entries
    seen: set[str] = set()

    with atomic_dir(out_dir) as tmp:
        staging = tmp / _STAGING
        staging.mkdir()
        for item in tqdm(items, desc=f"prepare {domain}", unit="rec", disable=not progress):
            rid = item.get("id")
            if not isinstance(rid, str) or not _SAFE_ID.match(rid):
                skipped.append({"id": str(rid), "reason": f"manifest id {rid!r} is not a safe file name"})
                continue
            if rid in seen:
                skipped.append({"id": rid, "reason": f"{rid}: duplicate id in {raw_dir.name}/manifest.json"})
                continue
            seen.add(rid)
            rec_dir = staging / rid
            try:
                entries, n_dropped = _prepare_one(raw_dir, item, rec_dir, cfg, sr, seg_len, seg_hop)
            except (_Skip, AudioError) as exc:
                shutil.rmtree(rec_dir, ignore_errors=True)
                reason = _path_free(str(exc), raw_dir)
                skipped.append({"id": rid, "reason": reason if reason.startswith(f"{rid}: ") else f"{rid}: {reason}"})
                continue
            dropped_silent += n_dropped
            if not entries:
                shutil.rmtree(rec_dir, ignore_errors=True)
                skipped.append({"id": rid, "reason": f"{rid}: all {n_dropped} segments are below "
                                                     f"silence_threshold_db ({cfg.silence_threshold_db:g} dB)"})
                continue
            kept[rid] = entries

        assignment = assign_splits(list(kept), fractions, cfg.seed)
        splits: dict[str, dict[str, Any]] = {}
        for name in SPLITS:
            split_dir = tmp / name
            split_dir.mkdir()
            index: list[dict[str, Any]] = []
            recs = sorted(rid for rid, split in assignment.items() if split == name)
            for rid in recs:
                for entry in kept[rid]:
                    os.replace(staging / rid / entry["file"], split_dir / entry["file"])
                    if "f0_file" in entry:
                        os.replace(staging / rid / entry["f0_file"], split_dir / entry["f0_file"])
                    index.append(entry)
            index.sort(key=lambda entry: entry["id"])
            atomic_write_json(split_dir / "index.json", round_floats(index))
            splits[name] = {"recordings": len(recs), "segments": len(index),
                            "seconds": float(sum(entry["duration_s"] for entry in index))}
        shutil.rmtree(staging)

    return round_floats({
        "domain": domain,
        "kind": "recordings",
        "splits": splits,
        "recordings": dict(sorted(assignment.items())),
        "skipped": sorted(skipped, key=lambda entry: entry["id"]),
        "segments_dropped_silent": dropped_silent,
    })


def _path_free(reason: str, raw_dir: Path) -> str:
    """Name files relative to the raw folder and the folder by its name: summaries do not depend on the checkout path."""
    return reason.replace(f"{raw_dir}{os.sep}", "").replace(str(raw_dir), raw_dir.name)


def _manifest_items(raw_dir: Path) -> list[dict[str, Any]]:
    manifest = raw_dir / "manifest.json"
    if not manifest.is_file():
        raise TimbrelabError(f"{manifest}: no such file; run the acquire stage for this domain first")
    try:
        data = read_json(manifest)
    except (OSError, ValueError) as exc:
        raise TimbrelabError(f"{manifest}: not valid JSON ({exc}); rerun the acquire stage") from exc
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise TimbrelabError(f"{manifest}: expected {{\"items\": [{{\"id\", \"file\", ...}}]}}; rerun the acquire stage")
    return sorted(items, key=lambda item: str(item.get("id")))


def _prepare_one(raw_dir: Path, item: dict[str, Any], rec_dir: Path, cfg: PrepareConfig, sr: int,
                 seg_len: int, seg_hop: int) -> tuple[list[dict[str, Any]], int]:
    rid = item["id"]
    name = item.get("file")
    if not isinstance(name, str) or not name:
        raise _Skip(f"{rid}: manifest item has no 'file'")
    # a lexical check, not resolve(): DVC may link the files into raw_dir as symlinks to its cache
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise _Skip(f"{rid}: file {name!r} lies outside {raw_dir}")
    path = raw_dir / name
    if not path.is_file():
        raise _Skip(f"{rid}: file {name} is missing from {raw_dir}")
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise _Skip(f"{rid}: {name} is not an audio file (extension {path.suffix or 'none'!r})")
    if path.stat().st_size == 0:
        raise _Skip(f"{rid}: {name} is an empty file")

    track = _read_f0(raw_dir, rid, name, item.get("f0_file"))
    snap = 0
    if track is not None:
        hop_samples = track.hop_s * sr
        if abs(hop_samples - round(hop_samples)) < 1e-6 and abs(track.t0 * sr - round(track.t0 * sr)) < 1e-6:
            snap = int(round(hop_samples))

    rec_dir.mkdir(parents=True)
    with _readable(path, rec_dir, sr) as (readable, sr_in):
        meter = _ClipMeter()
        plan = _analyse(_resampled_blocks(readable, sr_in, sr, meter), cfg, sr, seg_len, seg_hop, snap, rid)
        if meter.fraction > CLIP_FRACTION_MAX:
            raise _Skip(f"{rid}: clipped: {meter.fraction:.1%} of the samples sit on the peak (within "
                        f"{CLIP_TOLERANCE:.1%} of it, in runs of {CLIP_MIN_RUN} or more; at most "
                        f"{CLIP_FRACTION_MAX:.0%} is accepted); use an unclipped take")
        entries: list[dict[str, Any]] = []
        dropped = 0
        for k, start, segment in _segments(_resampled_blocks(readable, sr_in, sr), plan, seg_len, seg_hop, rid):
            segment = (segment - np.float32(plan.dc)) * np.float32(plan.gain)
            if rms_db(segment) < cfg.silence_threshold_db:
                dropped += 1
                continue
            seg_id = f"{rid}_{k:04d}"
            save_wav(rec_dir / f"{seg_id}.wav", segment, sr)
            entry: dict[str, Any] = {"id": seg_id, "file": f"{seg_id}.wav", "recording": rid,
                                     "start_s": start / sr, "duration_s": seg_len / sr}
            if track is not None:
                _write_f0_slice(rec_dir / f"{seg_id}{F0_SUFFIX}", track, start / sr, seg_len, sr)
                entry["f0_file"] = f"{seg_id}{F0_SUFFIX}"
            entries.append(entry)
    return entries, dropped


class _readable:
    """Context manager: (path libsndfile can stream, its sample rate); ffmpeg converts other formats."""

    def __init__(self, path: Path, work_dir: Path, sr: int) -> None:
        self.path, self.work_dir, self.sr = path, work_dir, sr
        self.tmp: str | None = None

    def __enter__(self) -> tuple[Path, int]:
        try:
            info = sf.info(str(self.path))
        except Exception:  # noqa: BLE001 - libsndfile cannot read it: let ffmpeg try
            info = None
        if info is not None and info.frames > 0 and info.samplerate > 0:
            check_complete(self.path)  # a truncated file decodes without complaint: compare with its header
            return self.path, int(info.samplerate)
        self.tmp = tempfile.mkdtemp(prefix=".decode-", dir=self.work_dir)
        wav = Path(self.tmp) / "decoded.wav"
        try:
            convert_to_wav(self.path, wav, self.sr)
        except AudioError as exc:
            raise _Skip(f"unreadable audio: {exc}") from exc
        check_complete(self.path)
        return wav, self.sr

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _resampled_blocks(path: Path, sr_in: int, sr_out: int, meter: _ClipMeter | None = None) -> Iterator[np.ndarray]:
    """Mono float32 blocks at ``sr_out``; the same file always gives the same samples. ``meter`` sees
    the blocks before resampling."""
    resampler = None
    if sr_in != sr_out:
        import soxr

        resampler = soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32", quality="HQ")
    for block in stream_blocks(path, _BLOCK_FRAMES):
        if not np.all(np.isfinite(block)):
            raise _Skip("contains non-finite samples (NaN or inf)")
        if meter is not None:
            meter.update(block)
        if resampler is None:
            yield block
        else:
            out = resampler.resample_chunk(block)
            if out.size:
                yield out
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail


def _analyse(blocks: Iterator[np.ndarray], cfg: PrepareConfig, sr: int, seg_len: int, seg_hop: int,
             snap: int, rid: str) -> _Plan:
    """Pass 1: peak, trim points, active level and gain, keeping one power value per frame.

    DC: the recording's mean is removed first (pass 2 subtracts it too), so an offset neither counts
    as level nor eats headroom. A constant offset is what converters add; the mean removes it
    exactly, with no phase shift (the f0 tracks stay aligned) and no third pass. Frame powers are
    kept as sums so the mean can be taken out once it is known.
    Trim: 20 ms frames whose RMS is more than ``trim_top_db`` below the peak *sample* are cut from
    both ends. Level: the mean power of the kept frames above that floor, gated again at
    ``_RELATIVE_GATE_DB`` below their mean (so rests and room tone do not count as "active").
    """
    frame = max(1, int(round(sr * _FRAME_SECONDS)))
    sums: list[np.ndarray] = []
    squares: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.float64)
    n = 0
    high, low = -np.inf, np.inf
    for block in blocks:
        n += block.size
        if block.size:
            high, low = max(high, float(np.max(block))), min(low, float(np.min(block)))
        x = np.concatenate([carry, block.astype(np.float64)])
        whole = x.size // frame
        if whole:
            framed = x[:whole * frame].reshape(whole, frame)
            sums.append(framed.sum(axis=1))
            squares.append(np.square(framed).sum(axis=1))
        carry = x[whole * frame:]
    if carry.size:
        sums.append(np.array([carry.sum()]))
        squares.append(np.array([np.square(carry).sum()]))
    if n == 0:
        raise _Skip(f"{rid}: no audio samples")
    size = np.full(sum(part.size for part in sums), float(frame))
    if carry.size:
        size[-1] = carry.size  # the last, partial frame
    dc = float(np.concatenate(sums).sum() / n)
    # mean of (x - dc)^2 per frame, from the frame's sum and sum of squares
    power = np.maximum((np.concatenate(squares) - 2.0 * dc * np.concatenate(sums)) / size + dc * dc, 0.0)
    peak = max(high - dc, dc - low)
    if peak <= 0.0:
        raise _Skip(f"{rid}: silent (all samples are zero or one constant value)")
    trim_floor = peak * peak * 10.0 ** (-cfg.trim_top_db / 10.0)
    above = np.flatnonzero(power > trim_floor)
    if above.size == 0:  # only possible for a trim_top_db tiny enough that no frame reaches it
        above = np.array([int(np.argmax(power))])
    first, last = int(above[0]), int(above[-1])
    start, end = first * frame, min((last + 1) * frame, n)
    if snap:
        start -= start % snap
    seconds = (end - start) / sr
    if seconds < cfg.min_recording_seconds:
        raise _Skip(f"{rid}: too short: {seconds:.2f} s after trimming, min_recording_seconds is "
                    f"{cfg.min_recording_seconds:g}")
    candidates = power[first:last + 1]
    candidates = candidates[candidates > trim_floor]
    gated = candidates[candidates > np.mean(candidates) * 10.0 ** (-_RELATIVE_GATE_DB / 10.0)]
    level_db = float(10.0 * np.log10(np.mean(gated)))
    if level_db < cfg.silence_threshold_db:
        raise _Skip(f"{rid}: silent: active level {level_db:.1f} dBFS is below silence_threshold_db "
                    f"({cfg.silence_threshold_db:g} dB)")
    gain = min(10.0 ** ((cfg.target_rms_db - level_db) / 20.0), cfg.peak_limit / peak)
    length = end - start
    if length < seg_len:
        raise _Skip(f"{rid}: {seconds:.2f} s after trimming is shorter than one segment "
                    f"(segment_seconds = {cfg.segment_seconds:g})")
    n_segments = (length - seg_len) // seg_hop + 1
    return _Plan(n_samples=n, start=start, end=end, peak=peak, level_db=level_db, gain=gain,
                 n_segments=n_segments, dc=dc)


def _segments(blocks: Iterator[np.ndarray], plan: _Plan, seg_len: int, seg_hop: int, rid: str
              ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Pass 2: yield (k, start sample, segment) as soon as each segment is complete."""
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # absolute sample index of buf[0]
    k = 0
    for block in blocks:
        buf = np.concatenate([buf, block])
        while k < plan.n_segments:
            seg_start = plan.start + k * seg_hop
            if seg_start + seg_len > buf_start + buf.size:
                break
            offset = seg_start - buf_start
            yield k, seg_start, buf[offset:offset + seg_len].copy()
            k += 1
        if k >= plan.n_segments:
            return
        drop = min(plan.start + k * seg_hop, buf_start + buf.size) - buf_start
        if drop > 0:
            buf = buf[drop:]
            buf_start += drop
    if k < plan.n_segments:
        raise AudioError(f"{rid}: the file decoded to fewer samples on the second pass; is it being written to?")


# --------------------------------------------------------------------------------------------------
# f0 sidecars


def _read_f0(raw_dir: Path, rid: str, name: str, listed: object = None) -> _F0Track | None:
    """The f0 sidecar: the manifest's ``f0_file`` if it names one, else ``<id>.f0.csv`` / ``<stem>.f0.csv``."""
    candidates = [raw_dir / f"{rid}{F0_SUFFIX}", raw_dir / f"{Path(name).stem}{F0_SUFFIX}"]
    if isinstance(listed, str) and listed:
        if Path(listed).is_absolute() or ".." in Path(listed).parts:
            raise _Skip(f"{rid}: f0_file {listed!r} lies outside {raw_dir}")
        if not (raw_dir / listed).is_file():
            raise _Skip(f"{rid}: f0_file {listed} is missing from {raw_dir}")
        candidates = [raw_dir / listed]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        return None
    try:
        times, f0_hz, voiced = read_f0_csv(path)
    except TimbrelabError as exc:
        raise _Skip(f"{rid}: {path.name}: unreadable f0 track ({exc})") from exc
    rows = np.stack([times, f0_hz, voiced.astype(np.float64)], axis=1)
    if rows.shape[0] < 2:
        raise _Skip(f"{rid}: {path.name}: expected at least 2 finite rows of time_s,f0_hz,voiced")
    times = rows[:, 0]
    hop = float(np.median(np.diff(times)))
    grid = times[0] + hop * np.arange(times.size)
    if hop <= 0 or np.max(np.abs(times - grid)) > 1e-4 * max(hop, 1e-3) + 1e-6:
        raise _Skip(f"{rid}: {path.name}: rows are not on a uniform time grid")
    return _F0Track(t0=float(times[0]), hop_s=hop, f0=rows[:, 1], voiced=rows[:, 2] > 0.5)


def _write_f0_slice(path: Path, track: _F0Track, start_s: float, seg_len: int, sr: int) -> None:
    """Rows of the segment at the track's hop, times relative to the segment start.

    Row j is the raw row at ``start_s + j * hop`` when that lands on the raw grid (the normal case);
    otherwise f0 is interpolated linearly between two voiced neighbours (nearest row otherwise).
    Rows past the end of the raw track are unvoiced.
    """
    n_rows = n_frames(seg_len, int(round(track.hop_s * sr)))
    rel = np.arange(n_rows) * track.hop_s
    pos = (start_s + rel - track.t0) / track.hop_s
    nearest = np.rint(pos).astype(np.int64)
    exact = np.abs(pos - nearest) < 1e-6
    last = track.f0.size - 1
    lo = np.clip(np.floor(pos).astype(np.int64), 0, last)
    hi = np.clip(lo + 1, 0, last)
    frac = np.clip(pos - lo, 0.0, 1.0)
    near = np.clip(nearest, 0, last)
    f0 = track.f0[near].copy()
    voiced = track.voiced[near].copy()
    blend = ~exact & track.voiced[lo] & track.voiced[hi]
    f0[blend] = track.f0[lo[blend]] * (1.0 - frac[blend]) + track.f0[hi[blend]] * frac[blend]
    outside = (nearest < 0) | (nearest > last)
    f0[outside] = 0.0
    voiced[outside] = False
    write_f0_csv(path, rel, f0, voiced)


# --------------------------------------------------------------------------------------------------
# NSynth notes


def prepare_notes(raw_dir: Path, out_dir: Path, cfg: PrepareConfig, *, domain: str = "nsynth",
                  progress: bool = True) -> dict[str, Any]:
    """Copy NSynth notes whole (velocity kept, official split kept) into ``out_dir``; return a summary."""
    _check_config(cfg)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    sr = int(cfg.sample_rate)
    present = [name for name in SPLITS if (raw_dir / name / "examples.json").is_file()]
    if not present:
        raise TimbrelabError(f"{raw_dir}: no <split>/examples.json for any of {', '.join(SPLITS)}; "
                             "run the acquire stage for nsynth first")
    skipped: list[dict[str, str]] = []
    recordings: dict[str, str] = {}
    splits: dict[str, dict[str, Any]] = {}
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            split_dir = tmp / name
            split_dir.mkdir()
            examples: dict[str, Any] = {}
            if name in present:
                try:
                    examples = read_json(raw_dir / name / "examples.json")
                except (OSError, ValueError) as exc:
                    raise TimbrelabError(f"{raw_dir / name / 'examples.json'}: not valid JSON ({exc})") from exc
                if not isinstance(examples, dict):
                    raise TimbrelabError(f"{raw_dir / name / 'examples.json'}: expected an object keyed by note_str")
            index: list[dict[str, Any]] = []
            kept_examples: dict[str, Any] = {}
            for note in tqdm(sorted(examples), desc=f"prepare {domain} {name}", unit="note",
                             disable=not progress):
                record = examples[note]
                if not _SAFE_ID.match(note) or not isinstance(record, dict):
                    skipped.append({"id": note, "reason": f"{name}/{note}: not a valid note entry"})
                    continue
                if note in recordings:
                    skipped.append({"id": note, "reason": f"{name}/{note}: already in split {recordings[note]}"})
                    continue
                src = raw_dir / name / "audio" / f"{note}.wav"
                try:
                    n_samples = _prepare_note(src, split_dir / f"{note}.wav", cfg, sr)
                except (_Skip, AudioError) as exc:
                    reason = _path_free(str(exc), raw_dir)
                    skipped.append({"id": note, "reason": f"{name}/{note}: {reason}"})
                    continue
                recordings[note] = name
                record = dict(record)
                if "sample_rate" in record:
                    record["sample_rate"] = sr
                kept_examples[note] = record
                index.append({"id": note, "file": f"{note}.wav", "duration_s": n_samples / sr,
                              "pitch": record.get("pitch"), "velocity": record.get("velocity"),
                              "instrument_str": record.get("instrument_str"),
                              "instrument_family_str": record.get("instrument_family_str")})
            atomic_write_json(split_dir / "index.json", round_floats(index))
            atomic_write_json(split_dir / "examples.json", round_floats(kept_examples))
            splits[name] = {"recordings": len(index), "segments": len(index),
                            "instruments": len({entry["instrument_str"] for entry in index}),
                            "seconds": float(sum(entry["duration_s"] for entry in index))}
    return round_floats({
        "domain": domain,
        "kind": "notes",
        "splits": splits,
        "recordings": dict(sorted(recordings.items())),
        "skipped": sorted(skipped, key=lambda entry: entry["id"]),
        "segments_dropped_silent": 0,
    })


def _prepare_note(src: Path, dst: Path, cfg: PrepareConfig, sr: int) -> int:
    """Write one note to ``dst``; return its length in samples. Samples untouched when already conform."""
    if not src.is_file():
        raise _Skip("audio file missing")
    if src.stat().st_size == 0:
        raise _Skip("empty file")
    check_complete(src)
    try:
        info = sf.info(str(src))
    except Exception:  # noqa: BLE001 - not for libsndfile; load_audio falls back to ffmpeg
        info = None
    if (info is not None and info.format == "WAV" and info.subtype == "PCM_16" and info.channels == 1
            and info.samplerate == sr):
        try:
            pcm, _ = sf.read(str(src), dtype="int16", always_2d=False)
        except Exception as exc:  # noqa: BLE001
            raise _Skip(f"unreadable audio ({exc})") from exc
        _check_note(pcm.astype(np.float32) / 32768.0, cfg)
        with atomic_path(dst) as tmp:  # int16 in, int16 out: the samples are bit-identical
            sf.write(str(tmp), pcm, sr, subtype="PCM_16", format="WAV")
        return int(pcm.size)
    audio, _ = load_audio(src, sample_rate=sr)
    _check_note(audio, cfg)
    save_wav(dst, audio, sr)
    return int(audio.size)


def _check_note(audio: np.ndarray, cfg: PrepareConfig) -> None:
    if audio.size == 0:
        raise _Skip("no audio samples")
    if not np.all(np.isfinite(audio)):
        raise _Skip("contains non-finite samples (NaN or inf)")
    level = rms_db(audio)
    if level < cfg.silence_threshold_db:
        raise _Skip(f"silent: RMS {level:.1f} dBFS is below silence_threshold_db ({cfg.silence_threshold_db:g} dB)")
