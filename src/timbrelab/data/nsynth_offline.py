"""An NSynth-format subset rendered from the General MIDI soundfont, for offline runs.

Layout and schema are NSynth's own, so every consumer of the real dataset reads it unchanged::

    out_root/<split>/examples.json          {note_str: example_record(...)}, canonical JSON
    out_root/<split>/audio/<note_str>.wav   4 s, 16 kHz, mono PCM_16; key held for the first 3 s

Each (family, GM program) pair is one NSynth instrument, ``<family>_acoustic_<program:03d>``. Pitches run
every ``pitch_step`` semitones through the program's playable range (``PLAYABLE_RANGES``, below), at the
configured velocities. Integer ids are deterministic: instruments are numbered in (family, program) order
(NSynth family order), notes in (instrument, pitch, velocity) order over all planned notes, so an id never
depends on which other notes happened to render silent.

Splits are by instrument, as in NSynth: no instrument has notes in two splits. The assignment comes from
the seed alone. A family with >= 3 instruments puts at least one in every split whose fraction is > 0;
with >= 3 instruments overall, every such split gets at least one.

Levels are the soundfont's own (velocity dynamics kept, no per-note normalisation); a note is only
scaled down if it would clip. A note that renders silent is skipped and listed under ``"failed"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from timbrelab.audio import rms_db, save_wav
from timbrelab.config import OfflineNSynthConfig, SplitFractions
from timbrelab.data import nsynth_schema as schema
from timbrelab.data.soundfont import SOUNDFONT_LICENSE, render_note, soundfont_provenance
from timbrelab.data.splits import SPLITS, split_counts, split_fractions
from timbrelab.errors import ConfigError
from timbrelab.fsutil import atomic_dir, atomic_write_json, sha256_file

GENERATOR = "timbrelab.data.nsynth_offline"
SOURCE = "acoustic"
SILENT_DB = -70.0  # a rendered note quieter than this (RMS over its 4 s, dBFS) counts as silent
_TAG = 0x75F1


def _spread(programs: range, lo: int, hi: int) -> dict[int, tuple[int, int]]:
    return {program: (lo, hi) for program in programs}


# Plausible playable range (MIDI pitches, inclusive) of each General MIDI program (0-based numbers),
# from the real instrument's compass; unpitched kits and sound effects (113-127) have none.
PLAYABLE_RANGES: dict[int, tuple[int, int]] = {
    **_spread(range(0, 6), 21, 108),                                  # pianos, electric pianos
    6: (29, 89), 7: (36, 96),                                         # harpsichord, clavinet
    8: (60, 108), 9: (79, 108), 10: (60, 96), 11: (53, 89),           # celesta, glockenspiel, music box, vibes
    12: (45, 96), 13: (65, 108), 14: (60, 77), 15: (48, 84),          # marimba, xylophone, bells, dulcimer
    16: (36, 96), 17: (36, 96), 18: (36, 96), 19: (24, 108), 20: (41, 89),  # organs
    21: (53, 89), 22: (60, 84), 23: (53, 89),                         # accordion, harmonica, bandoneon
    24: (40, 84), 25: (40, 84), 26: (40, 86), 27: (40, 86), 28: (40, 76), 29: (40, 86), 30: (40, 86),
    31: (52, 88),                                                     # guitars
    32: (28, 55), **_spread(range(33, 38), 28, 60), 38: (24, 60), 39: (24, 60),  # basses
    40: (55, 100), 41: (48, 88), 42: (36, 76), 43: (28, 60),          # violin, viola, cello, contrabass
    44: (28, 96), 45: (28, 96), 46: (23, 103), 47: (40, 55),          # tremolo, pizzicato, harp, timpani
    48: (28, 96), 49: (28, 96), 50: (36, 96), 51: (36, 96),           # string ensembles
    52: (48, 79), 53: (48, 79), 54: (48, 84), 55: (48, 72),           # choir, voice oohs, synth voice, hit
    56: (54, 86), 57: (40, 72), 58: (28, 58), 59: (54, 82),           # trumpet, trombone, tuba, muted tpt
    60: (34, 77), 61: (36, 84), 62: (36, 84), 63: (36, 84),           # horn, brass section, synth brass
    64: (56, 88), 65: (49, 81), 66: (44, 76), 67: (36, 69),           # saxophones S A T B
    68: (58, 91), 69: (52, 81), 70: (34, 72), 71: (50, 91),           # oboe, cor anglais, bassoon, clarinet
    72: (74, 108), 73: (60, 96), 74: (60, 96), 75: (60, 96),          # piccolo, flute, recorder, pan flute
    76: (60, 84), 77: (55, 84), 78: (60, 96), 79: (60, 84),           # bottle, shakuhachi, whistle, ocarina
    **_spread(range(80, 104), 36, 96),                                # synth leads, pads, effects
    104: (48, 77), 105: (48, 84), 106: (50, 79), 107: (55, 90),       # sitar, banjo, shamisen, koto
    108: (60, 84), 109: (60, 77), 110: (55, 96), 111: (60, 88),       # kalimba, bagpipe, fiddle, shanai
    112: (72, 96),                                                    # tinkle bell
}


def playable_range(program: int) -> tuple[int, int]:
    if program not in PLAYABLE_RANGES:
        raise ConfigError(f"nsynth.families: GM program {program} has no playable range in "
                          f"timbrelab.data.nsynth_offline.PLAYABLE_RANGES (unpitched or sound effect); "
                          "use a program from 0-112")
    lo, hi = PLAYABLE_RANGES[program]
    return max(lo, schema.PITCH_RANGE[0]), min(hi, schema.PITCH_RANGE[1])


def instruments_of(cfg: OfflineNSynthConfig) -> list[tuple[str, int]]:
    """(family, program) pairs in id order: NSynth family order, then program."""
    if not cfg.families:
        raise ConfigError("nsynth.families is empty: name at least one family with GM programs")
    pairs = set()
    for family, programs in cfg.families.items():
        if family not in schema.FAMILIES:
            raise ConfigError(f"nsynth.families: unknown NSynth family {family!r}; expected one of {schema.FAMILIES}")
        if not programs:
            raise ConfigError(f"nsynth.families.{family}: empty program list")
        for program in programs:
            if isinstance(program, bool) or int(program) != program or not 0 <= program <= 127:
                raise ConfigError(f"nsynth.families.{family}: {program!r} is not a GM program 0-127")
            playable_range(int(program))
            pairs.add((family, int(program)))
    return sorted(pairs, key=lambda fp: (schema.FAMILIES.index(fp[0]), fp[1]))


def assign_splits(instruments: list[tuple[str, int]], split: SplitFractions, seed: int) -> dict[tuple[str, int], str]:
    """Instrument -> split, deterministic from ``seed`` (see the module docstring for the guarantees)."""
    fractions = split_fractions(split, "acquire_nsynth.split")
    positive = [s for s in SPLITS if fractions[s] > 0]
    assignment: dict[tuple[str, int], str] = {}
    families = sorted({f for f, _ in instruments}, key=schema.FAMILIES.index)
    for family in families:
        members = [fp for fp in instruments if fp[0] == family]
        order = np.random.default_rng([int(seed), schema.FAMILIES.index(family), _TAG]).permutation(len(members))
        counts = split_counts(len(members), fractions, at_least_one=len(members) >= len(positive))
        names = [s for s in SPLITS for _ in range(counts[s])]
        for position, member_index in enumerate(order):
            assignment[members[int(member_index)]] = names[position]
    if len(instruments) >= len(positive):
        family_size = {f: sum(1 for fp in instruments if fp[0] == f) for f in families}
        for target in positive:
            if any(s == target for s in assignment.values()):
                continue
            # Move one instrument from the largest split, never one that would empty its family's split.
            totals = {s: sum(1 for v in assignment.values() if v == s) for s in SPLITS}
            for donor in sorted(SPLITS, key=lambda s: (-totals[s], SPLITS.index(s))):
                candidates = [fp for fp, s in sorted(assignment.items(), key=lambda kv: (schema.FAMILIES.index(kv[0][0]), kv[0][1]))
                              if s == donor and totals[donor] > 1
                              and (family_size[fp[0]] < len(positive)
                                   or sum(1 for g, v in assignment.items() if g[0] == fp[0] and v == donor) > 1)]
                if candidates:
                    assignment[candidates[-1]] = target
                    break
    return assignment


def plan_notes(cfg: OfflineNSynthConfig) -> list[dict[str, Any]]:
    """Every note to render, with its split and NSynth example record, in note-id order."""
    if cfg.pitch_step < 1:
        raise ConfigError(f"nsynth.pitch_step {cfg.pitch_step}: must be >= 1")
    if not cfg.velocities:
        raise ConfigError("nsynth.velocities is empty; NSynth uses 25, 50, 75, 100, 127")
    velocities = sorted(set(int(v) for v in cfg.velocities))
    if any(not 1 <= v <= 127 for v in velocities):
        raise ConfigError(f"nsynth.velocities {cfg.velocities}: expected MIDI velocities 1-127 "
                          "(NSynth uses 25, 50, 75, 100, 127)")
    if cfg.seed < 0:
        raise ConfigError(f"nsynth.seed {cfg.seed}: must be >= 0")
    instruments = instruments_of(cfg)
    splits = assign_splits(instruments, cfg.split, cfg.seed)
    notes = []
    for instrument_id, (family, program) in enumerate(instruments):
        lo, hi = playable_range(program)
        for pitch in range(lo, hi + 1, cfg.pitch_step):
            for velocity in velocities:
                record = schema.example_record(family, SOURCE, program, pitch, velocity,
                                               instrument=instrument_id, note=len(notes))
                notes.append({"split": splits[(family, program)], "program": program, "record": record})
    return notes


def render_offline_nsynth(cfg: OfflineNSynthConfig, out_root: Path, *, progress: bool = True) -> dict:
    """Render the subset under ``out_root``; returns {"splits", "items", "failed"} for the manifest.

    Each split directory is built aside and swapped in whole, so an interrupted run leaves either the old
    split or the new one, never a mixture.
    """
    from tqdm import tqdm

    out_root = Path(out_root)
    notes = plan_notes(cfg)
    sf_info = soundfont_provenance()
    n_samples = int(round(schema.NOTE_SECONDS * schema.SAMPLE_RATE))
    items: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    bar = tqdm(total=len(notes), desc="nsynth (offline)", unit="note", disable=not progress)
    try:
        for split in SPLITS:
            examples: dict[str, dict[str, Any]] = {}
            with atomic_dir(out_root / split) as tmp:
                (tmp / "audio").mkdir()
                for note in (n for n in notes if n["split"] == split):
                    record = note["record"]
                    name = record["note_str"]
                    audio = render_note(note["program"], record["pitch"], record["velocity"], schema.SAMPLE_RATE,
                                        schema.HELD_SECONDS, schema.NOTE_SECONDS)
                    bar.update(1)
                    level = rms_db(audio)
                    if audio.shape[0] != n_samples or level < SILENT_DB:
                        failed.append({"id": name, "split": split,
                                       "reason": f"rendered silent ({level:.1f} dBFS RMS < {SILENT_DB:.0f})"})
                        continue
                    relative = f"{split}/audio/{name}.wav"
                    save_wav(tmp / "audio" / f"{name}.wav", audio, schema.SAMPLE_RATE)
                    examples[name] = record
                    items.append({"id": name, "split": split, "file": relative,
                                  "sha256": sha256_file(tmp / "audio" / f"{name}.wav"), "license": SOUNDFONT_LICENSE,
                                  "provenance": {"generator": GENERATOR, "seed": cfg.seed, "program": note["program"],
                                                 **sf_info}})
                atomic_write_json(tmp / "examples.json", examples)
            counts[split] = len(examples)
    finally:
        bar.close()
    return {"splits": counts, "items": items, "failed": failed}
