"""Monophonic Bach-cello-suite-style material, composed from a seed and rendered with the GM cello.

Each recording is a chain of sections in one key:

* ``arpeggio``: broken-chord figuration, one chord per bar, in the manner of the Prelude of Suite No. 1
  (bass, fifth, tenth, a neighbour below the tenth, ...), or rising / string-crossing / 12-8 figures;
* ``scale``: sixteenth-note scale runs (melodic minor rising, natural minor falling) that turn at the
  edges of the register and land on a chord tone at every bar line;
* ``chorale``: a chorale-style bass line: the chord root held, then stepwise passing notes to the next.

Progressions are I-IV-V-I (also over a tonic pedal), I-vi-IV-V, I-ii-V-I and the circle of fifths
(I-IV-vii-iii-vi-ii-V-I), with sevenths on some chords. Registers span the cello from C2 (MIDI 36) to
A5 (81). Articulation is legato, detached or staccato per section; dynamics follow a per-section shape
(crescendo, diminuendo, arc, terraced echo) through note velocity and CC11 expression, with accents on
downbeats; tempo varies per recording, per section, per bar (rubato) and slows into the final cadence.

Everything comes from ``numpy.random.default_rng([seed, index, tag])``: the same (seed, index) always gives
the same notes, and, because the key order is a seed-level permutation, the recordings of one seed are in
different keys. Every note is monophonic (the next starts no earlier than the previous ends), so the
composed MIDI is the pitch truth of its rendering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from timbrelab.audio import save_wav
from timbrelab.config import OfflineCelloConfig
from timbrelab.data.soundfont import SOUNDFONT_LICENSE, render_midi, soundfont_provenance
from timbrelab.errors import ConfigError
from timbrelab.fsutil import round_floats, sha256_file

GENERATOR = "timbrelab.data.bach"
_TAG = 0xBAC4                      # keeps these random streams apart from other generators' streams
CELLO_MIN, CELLO_MAX = 36, 81      # C2 .. A5
TAIL_SECONDS = 0.6                 # silence left after the last note-off for the release to ring out
MIN_SECONDS = 2.0
PEAK_TARGET = 0.891           # -1 dBFS

PITCH_CLASSES = {"C": 0, "D": 2, "Eb": 3, "E": 4, "F": 5, "G": 7, "A": 9, "Bb": 10}
# Keys of the six suites first, then their neighbours.
KEYS = (("G", "major"), ("D", "minor"), ("C", "major"), ("Eb", "major"), ("C", "minor"), ("D", "major"),
        ("A", "minor"), ("F", "major"), ("E", "minor"), ("Bb", "major"), ("G", "minor"), ("A", "major"))
MAJOR = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR = (0, 2, 3, 5, 7, 8, 10)
MELODIC_MINOR_UP = (0, 2, 3, 5, 7, 9, 11)
ROMAN = ("I", "ii", "iii", "IV", "V", "vi", "vii")

# name -> (chord list as (scale degree 0-6, add seventh), tonic pedal in the bass)
PROGRESSIONS: dict[str, tuple[tuple[tuple[int, bool], ...], bool]] = {
    "I-IV-V-I": (((0, False), (3, False), (4, True), (0, False)), False),
    "I-IV-V7-I pedal": (((0, False), (3, False), (4, True), (0, False)), True),
    "I-vi-IV-V": (((0, False), (5, False), (3, False), (4, True)), False),
    "I-ii-V-I": (((0, False), (1, True), (4, True), (0, False)), False),
    "circle-of-fifths": (((0, False), (3, True), (6, False), (2, True), (5, True), (1, True), (4, True),
                          (0, False)), False),
}
SECTION_KINDS = ("arpeggio", "scale", "chorale")
ARPEGGIO_FIGURES = ("prelude", "rising", "crossing", "gigue")
ARTICULATIONS = {"legato": (1.0, 1.0), "detached": (0.72, 0.85), "staccato": (0.32, 0.5)}
DYNAMICS = ("crescendo", "diminuendo", "arc", "terraced", "steady")
REGISTERS = {"low": (36, 62), "middle": (43, 69), "high": (50, 76), "top": (55, 81)}


def _rng(seed: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *map(int, extra), _TAG])


def key_for(seed: int, index: int) -> tuple[str, str]:
    """The key of recording ``index``: a seed-level permutation, so one seed's recordings differ in key."""
    order = _rng(seed).permutation(len(KEYS))
    return KEYS[int(order[index % len(KEYS)])]


class _Key:
    def __init__(self, tonic: str, mode: str):
        self.name = f"{tonic} {mode}"
        self.tonic = PITCH_CLASSES[tonic]
        self.mode = mode

    def scale(self, ascending: bool = True) -> tuple[int, ...]:
        if self.mode == "major":
            return MAJOR
        return MELODIC_MINOR_UP if ascending else NATURAL_MINOR

    def chord(self, degree: int, seventh: bool) -> tuple[int, list[int]]:
        """(root pitch class, chord pitch classes) of a diatonic triad / seventh chord."""
        steps = [degree, degree + 2, degree + 4] + ([degree + 6] if seventh else [])
        scale = NATURAL_MINOR if self.mode == "minor" else MAJOR
        pcs = [(self.tonic + scale[s % 7]) % 12 for s in steps]
        if self.mode == "minor" and degree in (4, 6):  # dominant harmony: raised leading tone
            lowered = (self.tonic + 10) % 12
            pcs = [(self.tonic + 11) % 12 if pc == lowered else pc for pc in pcs]
        return pcs[0], pcs

    def in_scale(self, pitch: int, ascending: bool = True) -> bool:
        return (pitch - self.tonic) % 12 in self.scale(ascending)


def _nearest(pcs: list[int], target: float, lo: int, hi: int) -> int:
    """Pitch in [lo, hi] with a pitch class in ``pcs`` nearest to ``target`` (ties go low)."""
    candidates = [p for p in range(lo, hi + 1) if p % 12 in pcs]
    if not candidates:
        raise AssertionError(f"no chord tone in [{lo}, {hi}]")  # registers span > 1 octave
    return min(candidates, key=lambda p: (abs(p - target), p))


def _scale_step(key: _Key, pitch: int, direction: int) -> int:
    nxt = pitch + direction
    while not key.in_scale(nxt, ascending=direction > 0):
        nxt += direction
    return nxt


# A figure turns a bar's chord into (pitch, beats) pairs; beats are quarter notes.
Figure = list[tuple[int, float]]


def _arpeggio_bar(key: _Key, pcs: list[int], bass: int, hi: int, figure: str) -> Figure:
    upper = [p for p in range(bass + 3, hi + 1) if p % 12 in pcs]
    if len(upper) < 4:  # the register tops out: borrow chord tones up to the cello's top, then closer ones
        upper = [p for p in range(bass + 3, CELLO_MAX + 1) if p % 12 in pcs]
    if len(upper) < 4:
        upper = [p for p in range(bass + 1, CELLO_MAX + 1) if p % 12 in pcs]
    upper = (upper + upper[-1:] * 4)[:max(len(upper), 4)]
    if figure == "prelude":
        top = upper[3]
        neighbour = _scale_step(key, top, -1)
        voices = [bass, upper[1], top]
        order = [0, 1, 2, "n", 2, 1, 2, 1] * 2
        return [((neighbour if i == "n" else voices[i]), 0.25) for i in order]
    if figure == "rising":
        voices = [bass, upper[0], upper[1], upper[2], upper[3]]
        return [(voices[i], 0.25) for i in [0, 1, 2, 3, 4, 3, 2, 1] * 2]
    if figure == "crossing":
        voices = [bass, upper[1], upper[3]]
        return [(voices[i], 0.25) for i in [0, 2, 1, 2] * 4]
    # gigue: triplet eighths, 12 notes per 4/4 bar (12/8 feel)
    voices = [bass, upper[0], upper[1], upper[2]]
    return [(voices[i], 1.0 / 3.0) for i in [0, 1, 2, 3, 2, 1] * 2]


def _bass_pitch(key: _Key, root: int, previous: int | None, lo: int, pedal: bool) -> int:
    if pedal:
        return _nearest([key.tonic], lo + 5, lo, lo + 11)
    target = lo + 5 if previous is None else previous
    return _nearest([root], target, lo, lo + 11)


def _section_notes(rng: np.random.Generator, key: _Key, kind: str, progression: str, register: tuple[int, int],
                   repeats: int, figure: str, last: int | None) -> list[tuple[int, float, int]]:
    """(pitch, beats, beat-in-bar marker) for a whole section; marker 0 = downbeat, 1 = beat, 2 = other."""
    lo, hi = register
    chords, pedal = PROGRESSIONS[progression]
    notes: list[tuple[int, float, int]] = []
    bass_prev: int | None = None
    current = last if last is not None else int(rng.integers(lo + 4, hi - 4))
    direction = 1 if current < (lo + hi) / 2 else -1
    bars = [c for _ in range(repeats) for c in chords]
    for bar_index, (degree, seventh) in enumerate(bars):
        root, pcs = key.chord(degree, seventh)
        if kind == "arpeggio":
            bass = _bass_pitch(key, root, bass_prev, lo, pedal)
            bass_prev = bass
            bar = _arpeggio_bar(key, pcs, bass, hi, figure)
        elif kind == "scale":
            current = _nearest(pcs, current, lo, hi)
            bar = []
            for _ in range(16):
                bar.append((current, 0.25))
                nxt = _scale_step(key, current, direction)
                if not lo <= nxt <= hi:
                    direction = -direction
                    nxt = _scale_step(key, current, direction)
                current = nxt
            if rng.random() < 0.25:
                direction = -direction
        else:  # chorale bass: root held, then stepwise (or chord-tone) approach to the next root
            bass = _bass_pitch(key, root, bass_prev, lo, False)
            bass_prev = bass
            nxt_degree, nxt_seventh = bars[(bar_index + 1) % len(bars)]
            nxt_bass = _bass_pitch(key, key.chord(nxt_degree, nxt_seventh)[0], bass, lo, False)
            step = 1 if nxt_bass > bass else -1
            passing = [bass]
            for _ in range(2):
                passing.append(_scale_step(key, passing[-1], step) if passing[-1] != nxt_bass else passing[-1])
            if rng.random() < 0.5:
                bar = [(bass, 2.0), (passing[1], 1.0), (passing[2], 1.0)]
            else:
                fifth = _nearest(pcs, bass + 7, lo, hi)
                bar = [(bass, 1.0), (fifth, 1.0), (passing[1], 1.0), (passing[2], 1.0)]
        position = 0.0
        for pitch, beats in bar:
            marker = 0 if position < 1e-6 else (1 if abs(position - round(position)) < 1e-6 else 2)
            notes.append((int(min(max(pitch, CELLO_MIN), CELLO_MAX)), beats, marker))
            position += beats
    return notes


def _dynamics_curve(shape: str, rng: np.random.Generator) -> Callable[[float, int], float]:
    """u in [0, 1] through the section, bar index -> level in [0, 1]."""
    if shape == "crescendo":
        return lambda u, bar: u
    if shape == "diminuendo":
        return lambda u, bar: 1.0 - u
    if shape == "arc":
        return lambda u, bar: math.sin(math.pi * u)
    if shape == "terraced":  # forte phrase, piano echo
        loud, soft = float(rng.uniform(0.75, 1.0)), float(rng.uniform(0.0, 0.3))
        return lambda u, bar: loud if (bar // 2) % 2 == 0 else soft
    level = float(rng.uniform(0.3, 0.8))
    return lambda u, bar: level


def compose_recording(seed: int, index: int, seconds: float, program: int = 42) -> tuple[Any, dict]:
    """Compose one recording: (PrettyMIDI with one monophonic instrument, what was chosen).

    Notes end at least 0.6 s before ``seconds`` so the release fits inside the recording.
    """
    import pretty_midi

    if seconds < MIN_SECONDS:
        raise ConfigError(f"seconds_per_recording {seconds}: must be at least {MIN_SECONDS}")
    if int(seed) < 0 or int(index) < 0:
        raise ConfigError(f"seed {seed} / index {index}: must be >= 0")
    rng = _rng(seed, index)
    key = _Key(*key_for(seed, index))
    base_bpm = float(rng.uniform(58.0, 84.0))
    limit = float(seconds) - TAIL_SECONDS
    final_min = min(1.2, 0.3 * limit)

    pm = pretty_midi.PrettyMIDI(initial_tempo=base_bpm)
    inst = pretty_midi.Instrument(program=int(program), is_drum=False, name="cello")
    inst.control_changes.append(pretty_midi.ControlChange(7, 100, 0.0))
    sections: list[dict[str, Any]] = []
    t, last_pitch, last_cc = 0.0, None, -1
    bpm_drift = 0.0
    lo_used, hi_used = CELLO_MAX, CELLO_MIN
    velocities: list[int] = []
    done = False
    while not done:
        kind = SECTION_KINDS[int(rng.choice(len(SECTION_KINDS), p=[0.5, 0.3, 0.2]))]
        progression = list(PROGRESSIONS)[int(rng.integers(len(PROGRESSIONS)))]
        register_name = list(REGISTERS)[int(rng.integers(len(REGISTERS)))]
        if kind == "chorale" and register_name in ("high", "top"):
            register_name = "low"
        register = REGISTERS[register_name]
        figure = ARPEGGIO_FIGURES[int(rng.integers(len(ARPEGGIO_FIGURES)))] if kind == "arpeggio" else None
        articulation = list(ARTICULATIONS)[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
        dynamics = DYNAMICS[int(rng.integers(len(DYNAMICS)))]
        repeats = int(rng.integers(1, 3))
        section_bpm = base_bpm * float(rng.uniform(0.9, 1.1)) * (0.8 if kind == "chorale" else 1.0)
        v_soft, v_loud = int(rng.integers(35, 61)), int(rng.integers(85, 121))
        level = _dynamics_curve(dynamics, rng)
        notes = _section_notes(rng, key, kind, progression, register, repeats, figure or "", last_pitch)
        total_beats = sum(beats for _, beats, _ in notes)
        section = {"kind": kind, "progression": progression, "figure": figure, "articulation": articulation,
                   "dynamics": dynamics, "register": register_name, "tempo_bpm": section_bpm,
                   "start_s": t, "n_notes": 0}
        lo_frac, hi_frac = ARTICULATIONS[articulation]
        beat_pos, bar = 0.0, 0
        for pitch, beats, marker in notes:
            if marker == 0:
                bpm_drift = 0.7 * bpm_drift + 0.3 * float(rng.normal(0.0, 0.04))
                if beat_pos > 0:
                    bar += 1
            ritard = 1.0 - 0.2 * min(max((t - (limit - 3.0)) / 3.0, 0.0), 1.0)
            ioi = beats * 60.0 / (section_bpm * (1.0 + bpm_drift) * ritard)
            if t + ioi + final_min > limit:
                done = True
                break
            u = beat_pos / max(total_beats, 1e-9)
            s = min(max(level(u, bar), 0.0), 1.0)
            accent = 8 if marker == 0 else (3 if marker == 1 else 0)
            velocity = int(min(max(round(v_soft + (v_loud - v_soft) * s + accent + rng.normal(0.0, 2.5)), 20), 127))
            cc = int(round(127 * (0.62 + 0.38 * s)))
            if abs(cc - last_cc) >= 2:
                inst.control_changes.append(pretty_midi.ControlChange(11, cc, t))
                last_cc = cc
            frac = float(rng.uniform(lo_frac, hi_frac))
            inst.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch, start=t, end=t + ioi * frac))
            velocities.append(velocity)
            lo_used, hi_used = min(lo_used, pitch), max(hi_used, pitch)
            section["n_notes"] += 1
            last_pitch = pitch
            t += ioi
            beat_pos += beats
        if section["n_notes"]:
            sections.append(section)
    # Final cadence: the tonic (nearest the last note), held to the limit.
    final = _nearest([key.tonic], last_pitch if last_pitch is not None else 48, CELLO_MIN, 69)
    final_velocity = int(rng.integers(55, 96))
    inst.notes.append(pretty_midi.Note(velocity=final_velocity, pitch=final, start=t, end=limit))
    velocities.append(final_velocity)
    lo_used, hi_used = min(lo_used, final), max(hi_used, final)
    pm.instruments.append(inst)
    chosen = {"key": key.name, "tempo_bpm": base_bpm, "sections": sections,
              "pitch_min": lo_used, "pitch_max": hi_used, "n_notes": len(inst.notes),
              "velocity_min": min(velocities), "velocity_max": max(velocities),
              "articulations": sorted({s["articulation"] for s in sections}),
              "progressions": sorted({s["progression"] for s in sections})}
    return pm, round_floats(chosen)


def recording_id(index: int) -> str:
    return f"cello_offline_{index:03d}"


def _validate(cfg: OfflineCelloConfig) -> None:
    if cfg.n_recordings < 1:
        raise ConfigError(f"cello.n_recordings {cfg.n_recordings}: must be >= 1")
    if cfg.seconds_per_recording < MIN_SECONDS:
        raise ConfigError(f"cello.seconds_per_recording {cfg.seconds_per_recording}: must be >= {MIN_SECONDS}")
    if not 0 <= cfg.program <= 127:
        raise ConfigError(f"cello.program {cfg.program}: expected a General MIDI program 0-127")
    if cfg.seed < 0:
        raise ConfigError(f"cello.seed {cfg.seed}: must be >= 0")
    if cfg.sample_rate < 8000:
        raise ConfigError(f"cello.sample_rate {cfg.sample_rate}: must be >= 8000")


def render_recording(seed: int, index: int, seconds: float, sample_rate: int, program: int = 42,
                     soundfont: Path | None = None) -> tuple[np.ndarray, Any, dict]:
    """(audio exactly ``seconds`` long, the PrettyMIDI it came from, what was chosen)."""
    pm, chosen = compose_recording(seed, index, seconds, program)
    n = int(round(seconds * sample_rate))
    audio = render_midi(pm, sample_rate, soundfont, tail_seconds=max(seconds - pm.get_end_time(), 0.0))
    if audio.shape[0] < n:
        audio = np.pad(audio, (0, n - audio.shape[0]))
    audio = audio[:n]
    # GM volume/expression are cubic in TinySoundFont, so the raw render peaks around -30 dBFS; one gain per
    # recording (its dynamics kept) brings the peak to -1 dBFS so PCM_16 keeps its resolution.
    peak = float(np.max(np.abs(audio)))
    gain = PEAK_TARGET / peak if peak > 0 else 1.0
    chosen = {**chosen, "gain_db": round(20.0 * math.log10(gain), 6)}
    return (audio * np.float32(gain)).astype(np.float32), pm, chosen


def render_offline_cello(cfg: OfflineCelloConfig, out_dir: Path, *, progress: bool = True) -> list[dict]:
    """Write ``cfg.n_recordings`` WAVs to ``out_dir`` and return their manifest records."""
    from tqdm import tqdm

    _validate(cfg)
    out_dir = Path(out_dir)
    sf_info = soundfont_provenance()
    items = []
    for index in tqdm(range(cfg.n_recordings), desc="cello (offline)", unit="rec", disable=not progress):
        audio, _pm, chosen = render_recording(cfg.seed, index, cfg.seconds_per_recording, cfg.sample_rate,
                                              cfg.program)
        name = recording_id(index)
        path = out_dir / f"{name}.wav"
        save_wav(path, audio, cfg.sample_rate)
        items.append({
            "id": name, "file": path.name, "duration_s": round(audio.shape[0] / cfg.sample_rate, 6),
            "sample_rate": cfg.sample_rate, "sha256": sha256_file(path), "license": SOUNDFONT_LICENSE,
            "provenance": {"generator": GENERATOR, "seed": cfg.seed, "index": index, "program": cfg.program,
                           **sf_info, **chosen},
        })
    return items
