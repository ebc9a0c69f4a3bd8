"""Offline renders: soundfont MIDI rendering, Bach-style cello, NSynth-format subset, sine glides.

Numbers, not shapes: pitch is checked with pYIN against the MIDI / f0 truth, bytes against sha256.
"""

from __future__ import annotations

import json
import math
import time

import librosa
import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from timbrelab.audio import rms_db
from timbrelab.config import GlidesSourceConfig, OfflineCelloConfig, OfflineNSynthConfig, SplitFractions
from timbrelab import f0track
from timbrelab.data import bach, glides, nsynth_offline, soundfont
from timbrelab.data import nsynth_schema as schema
from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.fsutil import sha256_file

SR = 16000


def pyin(audio: np.ndarray, hop: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f0, voiced, prob = librosa.pyin(audio.astype(np.float32), fmin=50.0, fmax=1200.0, sr=SR,
                                    frame_length=1024, hop_length=hop)
    return f0, voiced, prob


def cents(f: np.ndarray, ref_hz: np.ndarray) -> np.ndarray:
    return 1200.0 * np.log2(f / ref_hz)


def shas(directory, pattern="*") -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.rglob(pattern)) if p.is_file()}


# ------------------------------------------------------------------------------------------------ soundfont


def test_default_soundfont_and_license():
    path = soundfont.default_soundfont()
    assert path.name == "TimGM6mb.sf2" and path.stat().st_size > 1_000_000
    assert soundfont.SOUNDFONT_LICENSE.startswith("GPL-2.0")
    assert len(soundfont.soundfont_sha256()) == 64
    with pytest.raises(TimbrelabError, match="no such soundfont"):
        soundfont.render_note(42, 48, 100, SR, 0.5, 1.0, soundfont="/nonexistent/x.sf2")


def test_cached_synth_renders_like_a_fresh_one():
    soundfont.clear_cache()
    fresh = soundfont.render_note(42, 50, 90, SR, 0.5, 1.0)
    # leave the cached synth with voices still sounding (note held to the very end), other program
    soundfont.render_note(73, 81, 127, SR, 0.5, 0.5)
    again = soundfont.render_note(42, 50, 90, SR, 0.5, 1.0)
    assert again.dtype == np.float32 and again.shape == (SR,)
    assert np.array_equal(fresh, again)


@pytest.mark.parametrize("pitch", [36, 45, 57, 69])
def test_cello_note_pitch(pitch):
    audio = soundfont.render_note(42, pitch, 100, SR, 1.0, 1.5)
    f0, voiced, _ = pyin(audio)
    assert voiced.mean() > 0.5
    error = np.median(cents(f0[voiced], librosa.midi_to_hz(pitch)))
    assert abs(error) < 50.0, f"pitch {pitch}: median error {error:.1f} cents"
    # key up at 1.0 s: the last 0.25 s is the release dying away
    assert rms_db(audio[int(1.25 * SR):]) < rms_db(audio[int(0.2 * SR):SR]) - 30.0


def test_render_midi_is_sample_accurate_with_dynamics_and_drums():
    def one_note(expression: int, start: float = 0.5) -> np.ndarray:
        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(program=42)
        inst.control_changes.append(pretty_midi.ControlChange(11, expression, 0.0))
        inst.notes.append(pretty_midi.Note(velocity=100, pitch=48, start=start, end=start + 0.5))
        pm.instruments.append(inst)
        return soundfont.render_midi(pm, SR, tail_seconds=0.5)

    loud, soft = one_note(127), one_note(40)
    assert loud.shape == (int(round(1.5 * SR)),) and loud.dtype == np.float32
    # sample-accurate: a note at an odd time is the same note shifted by exactly round(t * sr) samples
    late, early = one_note(127, start=0.32171), one_note(127, start=0.0)
    onset = int(round(0.32171 * SR))
    assert not np.any(late[:onset]) and np.any(late[onset:onset + 256])
    assert np.array_equal(late[onset:onset + early.shape[0] - 100], early[:early.shape[0] - 100])
    assert rms_db(soft) < rms_db(loud) - 10.0                           # CC11 expression is applied
    assert np.max(np.abs(loud)) <= soundfont.PEAK_LIMIT

    pm = pretty_midi.PrettyMIDI()
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes.append(pretty_midi.Note(velocity=110, pitch=38, start=0.0, end=0.1))  # snare
    pm.instruments.append(drums)
    assert rms_db(soundfont.render_midi(pm, SR)) > -60.0


# ------------------------------------------------------------------------------------------------ cello


def test_compose_recording_is_monophonic_in_range_and_varied():
    seen_kinds, seen_articulations, keys = set(), set(), set()
    for index in range(8):
        pm, chosen = bach.compose_recording(0, index, 30.0)
        json.dumps(chosen)  # manifest-ready
        notes = sorted(pm.instruments[0].notes, key=lambda n: n.start)
        assert all(a.end <= b.start + 1e-9 for a, b in zip(notes, notes[1:]))       # one note at a time
        assert all(bach.CELLO_MIN <= n.pitch <= bach.CELLO_MAX for n in notes)
        assert notes[-1].end <= 30.0 - bach.TAIL_SECONDS + 1e-9
        velocities = [n.velocity for n in notes]
        assert max(velocities) - min(velocities) >= 20                               # dynamics vary
        assert chosen["pitch_min"] == min(n.pitch for n in notes)
        assert chosen["n_notes"] == len(notes)
        seen_kinds.update(s["kind"] for s in chosen["sections"])
        seen_articulations.update(chosen["articulations"])
        keys.add(chosen["key"])
    assert len(keys) == 8                      # one seed's recordings are in different keys
    assert {"legato", "staccato"} <= seen_articulations
    assert {"arpeggio", "scale"} <= seen_kinds
    again = bach.compose_recording(0, 3, 30.0)
    assert again[1] == bach.compose_recording(0, 3, 30.0)[1]
    assert bach.compose_recording(1, 3, 30.0)[1] != again[1]


def test_offline_cello_is_deterministic_and_seeded(tmp_path):
    cfg = OfflineCelloConfig(seed=0, n_recordings=2, seconds_per_recording=4.0)
    started = time.perf_counter()
    items = bach.render_offline_cello(cfg, tmp_path / "a", progress=False)
    elapsed = time.perf_counter() - started
    print(f"\ncello render: {2 * 4.0 / elapsed:.0f}x real time")
    bach.render_offline_cello(cfg, tmp_path / "b", progress=False)
    assert shas(tmp_path / "a") == shas(tmp_path / "b")
    assert [it["file"] for it in items] == ["cello_offline_000.wav", "cello_offline_001.wav"]
    assert items[0]["sha256"] != items[1]["sha256"]
    for item in items:
        info = sf.info(str(tmp_path / "a" / item["file"]))
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (SR, 4 * SR, 1, "PCM_16")
        assert item["sha256"] == sha256_file(tmp_path / "a" / item["file"])
        assert item["duration_s"] == 4.0 and item["license"] == soundfont.SOUNDFONT_LICENSE
        prov = item["provenance"]
        assert prov["generator"] == "timbrelab.data.bach" and prov["soundfont"] == "TimGM6mb.sf2"
        assert prov["soundfont_sha256"] == soundfont.soundfont_sha256() and "key" in prov
    other = bach.render_offline_cello(OfflineCelloConfig(seed=1, n_recordings=1, seconds_per_recording=4.0),
                                      tmp_path / "c", progress=False)
    assert other[0]["sha256"] != items[0]["sha256"]
    with pytest.raises(ConfigError, match="n_recordings"):
        bach.render_offline_cello(OfflineCelloConfig(n_recordings=0), tmp_path / "d", progress=False)


@pytest.mark.parametrize("seed,index", [(0, 0), (3, 2)])
def test_offline_cello_pitch_follows_the_score(seed, index):
    audio, pm, _ = bach.render_recording(seed, index, 4.0, SR)
    hop = 160
    f0, voiced, prob = pyin(audio, hop)
    times = np.arange(f0.shape[0]) * hop / SR
    reference = np.full(f0.shape[0], np.nan)
    for note in pm.instruments[0].notes:
        reference[(times >= note.start) & (times < note.end)] = note.pitch
    confident = voiced & (prob > 0.5) & ~np.isnan(reference)
    assert confident.sum() > 50
    error = cents(f0[confident], librosa.midi_to_hz(reference[confident]))
    within = float(np.mean(np.abs(error) < 50.0))   # no octave allowance
    assert within >= 0.85, f"only {within:.0%} of confidently voiced frames within 50 cents"


# ------------------------------------------------------------------------------------------------ nsynth


def tiny_nsynth(**overrides) -> OfflineNSynthConfig:
    values = dict(seed=0, families={"string": [40, 41, 42], "flute": [72, 73, 74], "brass": [56]},
                  pitch_step=12, velocities=[50, 127], split=SplitFractions(0.6, 0.2, 0.2))
    values.update(overrides)
    return OfflineNSynthConfig(**values)


def test_offline_nsynth_schema_layout_and_splits(tmp_path):
    cfg = tiny_nsynth()
    started = time.perf_counter()
    result = nsynth_offline.render_offline_nsynth(cfg, tmp_path / "n", progress=False)
    elapsed = time.perf_counter() - started
    print(f"\nnsynth render: {len(result['items']) * 4.0 / elapsed:.0f}x real time")
    root = tmp_path / "n"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "valid"]
    reference = schema.example_record("string", "acoustic", 40, 60, 100, instrument=0, note=0)
    instruments_by_split: dict[str, set[str]] = {}
    total = 0
    for split in ("train", "valid", "test"):
        examples = json.loads((root / split / "examples.json").read_text())
        assert result["splits"][split] == len(examples) > 0
        wavs = sorted(p.stem for p in (root / split / "audio").iterdir())
        assert wavs == sorted(examples)
        for name, record in examples.items():
            assert set(record) == set(reference)
            assert {k: type(v) for k, v in record.items()} == {k: type(v) for k, v in reference.items()}
            assert record["note_str"] == name and schema.parse_note_str(name) is not None
            assert record["instrument_str"] == name.split("-")[0] and "_acoustic_" in name
            assert record["velocity"] in cfg.velocities and record["sample_rate"] == SR
        instruments_by_split[split] = {r["instrument_str"] for r in examples.values()}
        total += len(examples)
        audio, sr = sf.read(str(root / split / "audio" / f"{wavs[0]}.wav"), dtype="float32")
        assert sr == SR and audio.shape == (64000,) and sf.info(str(root / split / "audio" / f"{wavs[0]}.wav")).subtype == "PCM_16"
        hold, after = rms_db(audio[int(0.5 * SR):3 * SR]), rms_db(audio[int(3.5 * SR):])
        assert after < hold - 20.0, f"{wavs[0]}: {after:.1f} dB after release vs {hold:.1f} dB held"
    # disjoint by instrument, every split has an instrument of each family with >= 3 instruments
    splits = list(instruments_by_split.values())
    assert all(not (a & b) for i, a in enumerate(splits) for b in splits[i + 1:])
    for members in splits:
        assert any(m.startswith("string_") for m in members) and any(m.startswith("flute_") for m in members)
    assert len(result["items"]) == total and result["failed"] == []
    item = result["items"][0]
    assert item["sha256"] == sha256_file(root / item["file"]) and item["file"].startswith(item["split"] + "/audio/")
    assert item["provenance"]["generator"] == "timbrelab.data.nsynth_offline"
    # ids: instruments numbered in (family, program) order, notes unique
    all_records = [r for s in ("train", "valid", "test")
                   for r in json.loads((root / s / "examples.json").read_text()).values()]
    assert len({r["note"] for r in all_records}) == len(all_records)
    brass = {r["instrument"] for r in all_records if r["instrument_family_str"] == "brass"}
    assert brass == {0}  # brass comes first in NSynth's family order
    # same config -> same bytes
    nsynth_offline.render_offline_nsynth(cfg, tmp_path / "m", progress=False)
    assert shas(root) == shas(tmp_path / "m")


def test_offline_nsynth_skips_silent_notes_and_writes_atomically(tmp_path, monkeypatch):
    cfg = tiny_nsynth(families={"string": [40, 41, 42]}, velocities=[100])
    root = tmp_path / "n"
    nsynth_offline.render_offline_nsynth(cfg, root, progress=False)
    before = shas(root)
    real = nsynth_offline.render_note

    def silent_at_67(program, pitch, velocity, *args, **kwargs):
        audio = real(program, pitch, velocity, *args, **kwargs)
        return np.zeros_like(audio) if pitch == 67 else audio

    monkeypatch.setattr(nsynth_offline, "render_note", silent_at_67)
    result = nsynth_offline.render_offline_nsynth(cfg, tmp_path / "s", progress=False)
    assert result["failed"] and all("-067-" in f["id"] and "silent" in f["reason"] for f in result["failed"])
    ids = {it["id"] for it in result["items"]}
    assert not any("-067-" in i for i in ids)
    assert not list((tmp_path / "s").rglob("*-067-*.wav"))

    calls = {"n": 0}

    def crash_later(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(nsynth_offline, "render_note", crash_later)
    with pytest.raises(RuntimeError):
        nsynth_offline.render_offline_nsynth(cfg, root, progress=False)
    assert shas(root) == before                                         # old splits untouched
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_nsynth_split_assignment_rules():
    fractions = SplitFractions(0.8, 0.1, 0.1)
    three = [("string", 40), ("brass", 56), ("flute", 73)]
    for seed in range(5):
        assignment = nsynth_offline.assign_splits(three, fractions, seed)
        assert sorted(assignment.values()) == ["test", "train", "valid"]
        big = [("string", p) for p in (40, 41, 42, 43, 44)] + [("reed", 65), ("reed", 68)]
        assignment = nsynth_offline.assign_splits(big, fractions, seed)
        assert {s for (f, _), s in assignment.items() if f == "string"} == {"train", "valid", "test"}
        assert assignment == nsynth_offline.assign_splits(big, fractions, seed)
    with pytest.raises(ConfigError, match="sum to 1"):
        nsynth_offline.assign_splits(three, SplitFractions(0.5, 0.1, 0.1), 0)
    with pytest.raises(ConfigError, match="unknown NSynth family"):
        nsynth_offline.plan_notes(tiny_nsynth(families={"fiddle": [40]}))
    with pytest.raises(ConfigError, match="playable range"):
        nsynth_offline.plan_notes(tiny_nsynth(families={"synth_lead": [120]}))
    for program, (lo, hi) in [(40, (55, 100)), (42, (36, 76)), (73, (60, 96)), (58, (28, 58))]:
        assert nsynth_offline.playable_range(program) == (lo, hi)


# ------------------------------------------------------------------------------------------------ glides


def voiced_runs(voiced: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], voiced.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


@pytest.mark.parametrize("harmonics", [1, 3])
def test_glides_f0_truth_matches_the_audio(tmp_path, harmonics):
    cfg = GlidesSourceConfig(seed=0, n_phrases=1, seconds_per_phrase=6.0, harmonics=harmonics)
    started = time.perf_counter()
    items = glides.render_source_glides(cfg, tmp_path, progress=False)
    print(f"\nglides render: {6.0 / (time.perf_counter() - started):.0f}x real time")
    item = items[0]
    assert item["file"] == "source_glides_000.wav" and item["f0_file"] == "source_glides_000.f0.csv"
    audio, sr = sf.read(str(tmp_path / item["file"]), dtype="float32")
    assert sr == SR and audio.shape == (6 * SR,)
    text = (tmp_path / item["f0_file"]).read_text()
    assert text.splitlines()[0] == "time_s,f0_hz,voiced"
    assert text.splitlines()[1] == "0.000000,0.0000,0"
    times, f0, voiced = f0track.read_f0_csv(tmp_path / item["f0_file"])
    hop = cfg.hop_length
    assert f0.shape[0] == 1 + audio.shape[0] // hop
    assert np.allclose(times, np.arange(f0.shape[0]) * hop / SR)
    assert np.all(f0[~voiced] == 0.0) and np.all(f0[voiced] > 90.0)
    assert 0.3 < voiced.mean() < 0.95
    prov = item["provenance"]
    assert prov["n_glides"] > 0 and prov["n_staccato"] > 0 and prov["n_vibrato"] > 0

    # pYIN (an independent estimator) agrees with the truth on voiced frames
    est, est_voiced, _ = pyin(audio, hop)
    assert est.shape == f0.shape
    both = voiced & est_voiced
    assert both.sum() > 0.9 * voiced.sum()
    error = np.abs(cents(est[both], f0[both]))
    assert np.mean(error < 20.0) >= 0.93 and np.median(error) < 8.0   # pYIN's grid is 10 cents

    # the analytic signal's phase derivative is the exact instantaneous f0 of a pure sine
    if harmonics == 1:
        analytic = np.angle(scipy_hilbert(audio.astype(np.float64)))
        inst = np.diff(np.unwrap(analytic)) * SR / (2 * np.pi)
        frames = np.arange(f0.shape[0]) * hop
        keep = voiced & (frames < inst.shape[0])
        exact = np.abs(cents(np.maximum(inst[frames[keep]], 1.0), f0[keep]))
        assert np.mean(exact < 20.0) >= 0.99 and np.median(exact) < 1.0

    # rests and staccato gaps are unvoiced and silent; one voiced run per note group
    runs = voiced_runs(voiced)
    assert len(runs) == prov["n_groups"]
    for (_, end), (start, _) in zip(runs, runs[1:]):
        gap = audio[end * hop + hop:start * hop - hop]
        if gap.size:
            assert np.max(np.abs(gap)) < 0.01
    samples = np.arange(f0.shape[0])[~voiced] * hop
    samples = samples[samples < audio.shape[0]]
    assert np.max(np.abs(audio[samples])) <= 0.01 * glides.PEAK_TARGET + 1e-3


def scipy_hilbert(x: np.ndarray) -> np.ndarray:
    from scipy.signal import hilbert

    return hilbert(x)


def test_glides_are_deterministic_and_seeded(tmp_path):
    cfg = GlidesSourceConfig(seed=0, n_phrases=2, seconds_per_phrase=3.0)
    first = glides.render_source_glides(cfg, tmp_path / "a", progress=False)
    glides.render_source_glides(cfg, tmp_path / "b", progress=False)
    assert shas(tmp_path / "a") == shas(tmp_path / "b")
    assert len(shas(tmp_path / "a")) == 4
    assert first[0]["sha256"] != first[1]["sha256"]
    other = glides.render_source_glides(GlidesSourceConfig(seed=5, n_phrases=1, seconds_per_phrase=3.0),
                                        tmp_path / "c", progress=False)
    assert other[0]["sha256"] != first[0]["sha256"] and other[0]["f0_sha256"] != first[0]["f0_sha256"]
    assert first[0]["f0_sha256"] == sha256_file(tmp_path / "a" / first[0]["f0_file"])
    with pytest.raises(ConfigError, match="harmonics"):
        glides.render_source_glides(GlidesSourceConfig(harmonics=0), tmp_path / "d", progress=False)
    with pytest.raises(TimbrelabError, match="header"):
        bad = tmp_path / "bad.f0.csv"
        bad.write_text("t,f\n0,0\n")
        f0track.read_f0_csv(bad)


def test_demo_sizes_render_speed(tmp_path):
    """Real-time factors at the demo profile's settings (printed; no timed assertion)."""
    started = time.perf_counter()
    bach.render_offline_cello(OfflineCelloConfig(n_recordings=2, seconds_per_recording=40.0), tmp_path / "c",
                              progress=False)
    cello = 80.0 / (time.perf_counter() - started)
    started = time.perf_counter()
    glides.render_source_glides(GlidesSourceConfig(n_phrases=4, seconds_per_phrase=10.0), tmp_path / "g",
                                progress=False)
    source = 40.0 / (time.perf_counter() - started)
    print(f"\nreal-time factors: cello {cello:.0f}x, glides {source:.0f}x")
    assert math.isfinite(cello) and math.isfinite(source)
