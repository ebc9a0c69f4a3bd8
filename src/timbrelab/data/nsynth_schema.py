"""NSynth's examples.json schema, shared by the real download and the offline render.

Reference: the NSynth dataset page (magenta). Each note is keyed by ``note_str``
(``<family>_<source>_<instrument:03d>-<pitch:03d>-<velocity:03d>``) and carries these fields.
"""

from __future__ import annotations

import re
from typing import Any

FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
            "synth_lead", "vocal")
SOURCES = ("acoustic", "electronic", "synthetic")
QUALITIES = ("bright", "dark", "distortion", "fast_decay", "long_release", "multiphonic",
             "nonlinear_env", "percussive", "reverb", "tempo-synced")
SAMPLE_RATE = 16000
NOTE_SECONDS = 4.0        # every NSynth note is 4 s long ...
HELD_SECONDS = 3.0        # ... with the key held for the first 3 s
VELOCITIES = (25, 50, 75, 100, 127)
PITCH_RANGE = (9, 120)    # MIDI pitches present in NSynth (21-108 for most acoustic instruments)
LICENSE = "CC-BY-4.0 (NSynth, Engel et al. 2017)"

NOTE_STR_RE = re.compile(
    r"^(?P<family>[a-z_]+?)_(?P<source>acoustic|electronic|synthetic)_(?P<index>\d{3})"
    r"-(?P<pitch>\d{3})-(?P<velocity>\d{3})$"
)


def instrument_str(family: str, source: str, index: int) -> str:
    return f"{family}_{source}_{index:03d}"


def note_str(family: str, source: str, index: int, pitch: int, velocity: int) -> str:
    return f"{instrument_str(family, source, index)}-{pitch:03d}-{velocity:03d}"


def parse_note_str(name: str) -> dict[str, Any] | None:
    """Split a note_str (or an audio file stem) into its fields; None if it is not one."""
    match = NOTE_STR_RE.match(name)
    if not match or match["family"] not in FAMILIES:
        return None
    return {"instrument_family_str": match["family"], "instrument_source_str": match["source"],
            "instrument_index": int(match["index"]), "pitch": int(match["pitch"]),
            "velocity": int(match["velocity"])}


def example_record(family: str, source: str, index: int, pitch: int, velocity: int, *,
                   instrument: int, note: int, qualities: tuple[str, ...] = ()) -> dict[str, Any]:
    """One examples.json value with NSynth's exact field names and types."""
    if family not in FAMILIES:
        raise ValueError(f"unknown NSynth family {family!r}; expected one of {FAMILIES}")
    if source not in SOURCES:
        raise ValueError(f"unknown NSynth source {source!r}; expected one of {SOURCES}")
    unknown = set(qualities) - set(QUALITIES)
    if unknown:
        raise ValueError(f"unknown NSynth qualities {sorted(unknown)}")
    return {
        "note": int(note),
        "note_str": note_str(family, source, index, pitch, velocity),
        "instrument": int(instrument),
        "instrument_str": instrument_str(family, source, index),
        "pitch": int(pitch),
        "velocity": int(velocity),
        "sample_rate": SAMPLE_RATE,
        "qualities": [int(q in qualities) for q in QUALITIES],
        "qualities_str": [q for q in QUALITIES if q in qualities],
        "instrument_family": FAMILIES.index(family),
        "instrument_family_str": family,
        "instrument_source": SOURCES.index(source),
        "instrument_source_str": source,
    }
