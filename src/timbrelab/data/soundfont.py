"""Render MIDI with the General MIDI soundfont that ships inside pretty_midi (TimGM6mb.sf2).

The synthesiser is TinySoundFont (the ``tinysoundfont`` wheel, imported lazily because it is installed
with ``--no-deps``). Output is rendered at the requested sample rate directly (no resampling step),
as float32 mono, and is deterministic: the same MIDI gives the same samples on every run.

Scheduling is sample-accurate without per-sample Python: every note-on / note-off / control change /
pitch bend becomes one event at ``round(time * sample_rate)``; the events are sorted once and the synth
renders the stretch between consecutive event times straight into one preallocated buffer.

A parsed soundfont is cached per process and per sample rate (parsing TimGM6mb takes ~15 ms, rendering a
4 s note ~1 ms, so the cache makes note-by-note rendering about ten times faster). Before each reuse the
synth is reset and flushed, so a render never depends on what was rendered before it; the tests check
that a cached render is byte-identical to one from a freshly loaded soundfont.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from timbrelab.errors import TimbrelabError
from timbrelab.fsutil import sha256_file

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pretty_midi

SOUNDFONT_NAME = "TimGM6mb.sf2"
SOUNDFONT_LICENSE = "GPL-2.0, TimGM6mb.sf2 by Tim Brechbill, shipped in pretty_midi"
MAX_CHANNELS = 16           # the tinysoundfont wrapper addresses channels 0-15
PEAK_LIMIT = 0.99           # renders louder than this are scaled down (never up)
_FLUSH_FRAMES = 2048        # rendered and discarded after a reset so no voice survives into the next render
_BYTES_PER_FRAME = 8        # interleaved stereo float32

# Events that share a sample are applied in this order: controllers and bends first (so a note starts
# with its dynamics), then note-offs, then note-ons (so a re-struck pitch is not cut by its own release).
_CONTROL, _BEND, _OFF, _ON = 0, 1, 2, 3


def default_soundfont() -> Path:
    """Path of TimGM6mb.sf2 inside the installed pretty_midi package."""
    try:
        import pretty_midi
    except ImportError as exc:  # pragma: no cover - pretty_midi is a hard dependency
        raise TimbrelabError("pretty_midi is not installed; it ships the GM soundfont TimGM6mb.sf2 "
                             "(pip install pretty_midi)") from exc
    path = Path(pretty_midi.__file__).resolve().parent / SOUNDFONT_NAME
    if not path.is_file():
        raise TimbrelabError(f"{path}: the General MIDI soundfont is missing from the pretty_midi package; "
                             "reinstall pretty_midi (pip install --force-reinstall pretty_midi)")
    return path


def _resolve(soundfont: str | os.PathLike | None) -> Path:
    if soundfont is None:
        return default_soundfont()
    path = Path(soundfont)
    if not path.is_file():
        raise TimbrelabError(f"{path}: no such soundfont file")
    return path.resolve()


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def soundfont_sha256(soundfont: str | os.PathLike | None = None) -> str:
    """sha256 of the soundfont file (cached per process while the file is unchanged)."""
    path = _resolve(soundfont)
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


class _CachedSynth:
    """One parsed soundfont at one sample rate, reset to a clean state before each use."""

    def __init__(self, path: Path, sample_rate: int):
        try:
            import tinysoundfont
        except ImportError as exc:
            raise TimbrelabError("tinysoundfont is not installed; install it with "
                                 "`pip install --no-deps tinysoundfont` (see the Makefile)") from exc
        self.synth = tinysoundfont.Synth(gain=0.0, samplerate=int(sample_rate))
        try:
            self.sfid = self.synth.sfload(str(path))
        except Exception as exc:  # tinysoundfont raises plain exceptions for unreadable files
            raise TimbrelabError(f"{path}: not a loadable soundfont ({exc})") from exc
        self.lock = threading.Lock()
        self.used = False

    def reset(self) -> None:
        """Stop every voice, drop channel state, and render the quick releases away."""
        if not self.used:
            return
        self.synth.soundfonts[self.sfid].reset()
        self.synth.generate_simple(_FLUSH_FRAMES)


_SYNTHS: dict[tuple[str, int, int, int], _CachedSynth] = {}
_SYNTHS_LOCK = threading.Lock()


def _synth_for(path: Path, sample_rate: int) -> _CachedSynth:
    stat = path.stat()
    key = (str(path), int(sample_rate), stat.st_size, stat.st_mtime_ns)
    with _SYNTHS_LOCK:
        cached = _SYNTHS.get(key)
        if cached is None:
            cached = _CachedSynth(path, sample_rate)
            _SYNTHS[key] = cached
        return cached


def clear_cache() -> None:
    """Forget every parsed soundfont (the next render loads it again)."""
    with _SYNTHS_LOCK:
        _SYNTHS.clear()


def _check_rate(sample_rate: int) -> int:
    if int(sample_rate) != sample_rate or sample_rate < 1000:
        raise TimbrelabError(f"sample_rate {sample_rate!r}: expected an integer rate in Hz (e.g. 16000)")
    return int(sample_rate)


def _select(cached: _CachedSynth, chan: int, program: int, is_drum: bool) -> None:
    if not 0 <= int(program) <= 127:
        raise TimbrelabError(f"MIDI program {program}: expected 0-127 (General MIDI, 0-based)")
    try:
        cached.synth.program_select(chan, cached.sfid, 0, int(program), is_drums=bool(is_drum))
    except Exception as exc:
        kind = "drum kit" if is_drum else "program"
        raise TimbrelabError(f"{kind} {program} is not in the soundfont ({exc})") from exc


def _render_events(cached: _CachedSynth, events: list[tuple[int, int, int, int, int, int]],
                   n_frames: int) -> np.ndarray:
    """Apply sorted events at their sample times while rendering ``n_frames``; returns mono float32."""
    synth = cached.synth
    buffer = bytearray(n_frames * _BYTES_PER_FRAME)
    view = memoryview(buffer)
    pos = 0
    for sample, kind, _seq, chan, a, b in events:
        sample = min(max(sample, 0), n_frames)
        if sample > pos:
            synth.generate_simple(sample - pos, buffer=view[pos * _BYTES_PER_FRAME:sample * _BYTES_PER_FRAME])
            pos = sample
        if kind == _ON:
            synth.noteon(chan, a, b)
        elif kind == _OFF:
            synth.noteoff(chan, a)
        elif kind == _CONTROL:
            synth.control_change(chan, a, b)
        else:
            synth.pitchbend(chan, a)
    if n_frames > pos:
        synth.generate_simple(n_frames - pos, buffer=view[pos * _BYTES_PER_FRAME:])
    view.release()
    stereo = np.frombuffer(buffer, dtype=np.float32).reshape(-1, 2)
    mono = (stereo[:, 0] + stereo[:, 1]) * np.float32(0.5)
    return _peak_safe(mono.astype(np.float32, copy=False))


def _peak_safe(audio: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(audio)):
        raise TimbrelabError("the synthesiser produced non-finite samples")
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > PEAK_LIMIT:
        audio = audio * np.float32(PEAK_LIMIT / peak)
    return audio.astype(np.float32, copy=False)


def render_midi(pm: pretty_midi.PrettyMIDI, sample_rate: int, soundfont: Path | None = None,
                tail_seconds: float = 1.0) -> np.ndarray:
    """Render every instrument of ``pm`` (program, is_drum, notes, CCs, pitch bends) to float32 mono.

    The result lasts ``pm.get_end_time() + tail_seconds`` (rounded to samples) so releases ring out;
    it is scaled down only if its peak would exceed 0.99.
    """
    sample_rate = _check_rate(sample_rate)
    if tail_seconds < 0:
        raise TimbrelabError(f"tail_seconds {tail_seconds}: must be >= 0")
    instruments = list(pm.instruments)
    if len(instruments) > MAX_CHANNELS:
        raise TimbrelabError(f"MIDI has {len(instruments)} instruments; the renderer supports at most "
                             f"{MAX_CHANNELS} (merge instruments that share a program)")

    def at(t: float) -> int:
        return int(round(float(t) * sample_rate))

    events: list[tuple[int, int, int, int, int, int]] = []
    seq = 0
    for chan, inst in enumerate(instruments):
        for cc in inst.control_changes:
            events.append((at(cc.time), _CONTROL, seq, chan, int(cc.number) & 127, min(max(int(cc.value), 0), 127)))
            seq += 1
        for bend in inst.pitch_bends:
            events.append((at(bend.time), _BEND, seq, chan, min(max(int(bend.pitch) + 8192, 0), 16383), 0))
            seq += 1
        for note in inst.notes:
            velocity = min(int(note.velocity), 127)
            if velocity <= 0 or not 0 <= int(note.pitch) <= 127:
                continue
            start, end = at(note.start), at(note.end)
            end = max(end, start + 1)  # a zero-length note still sounds its attack
            events.append((start, _ON, seq, chan, int(note.pitch), velocity))
            events.append((end, _OFF, seq, chan, int(note.pitch), 0))
            seq += 1
    events.sort()
    end_time = max((e[0] for e in events), default=0)
    n_frames = max(end_time + at(tail_seconds), 1)

    cached = _synth_for(_resolve(soundfont), sample_rate)
    with cached.lock:
        cached.reset()
        cached.used = True
        for chan, inst in enumerate(instruments):
            _select(cached, chan, inst.program, inst.is_drum)
        return _render_events(cached, events, n_frames)


def render_note(program: int, pitch: int, velocity: int, sample_rate: int, held_s: float, total_s: float,
                soundfont: Path | None = None) -> np.ndarray:
    """One note of GM ``program``: key down at 0, up at ``held_s``, ``total_s`` long (float32 mono)."""
    sample_rate = _check_rate(sample_rate)
    if not 0 < held_s <= total_s:
        raise TimbrelabError(f"held_s {held_s} / total_s {total_s}: need 0 < held_s <= total_s")
    if not 0 <= int(pitch) <= 127 or not 1 <= int(velocity) <= 127:
        raise TimbrelabError(f"pitch {pitch} / velocity {velocity}: expected 0-127 / 1-127")
    n_frames = int(round(total_s * sample_rate))
    off = min(int(round(held_s * sample_rate)), n_frames)
    events = [(0, _ON, 0, 0, int(pitch), int(velocity)), (off, _OFF, 0, 0, int(pitch), 0)]
    cached = _synth_for(_resolve(soundfont), sample_rate)
    with cached.lock:
        cached.reset()
        cached.used = True
        _select(cached, 0, program, False)
        return _render_events(cached, events, n_frames)


def preset_name(program: int, soundfont: Path | None = None, sample_rate: int = 16000) -> str | None:
    """The soundfont's name for GM ``program`` (bank 0), or None if it has none."""
    cached = _synth_for(_resolve(soundfont), _check_rate(sample_rate))
    with cached.lock:
        return cached.synth.sfpreset_name(cached.sfid, 0, int(program))


def soundfont_provenance(soundfont: Path | None = None) -> dict[str, Any]:
    """What a manifest records about the soundfont used."""
    path = _resolve(soundfont)
    return {"soundfont": path.name, "soundfont_sha256": soundfont_sha256(path)}
