"""prepare (recordings and NSynth notes) and the local-folder source, on files made here."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import hilbert

from timbrelab.audio import rms_db
from timbrelab.config import LocalFolderConfig, PrepareConfig, SplitFractions
from timbrelab.f0track import n_frames
from timbrelab.data import prepare as prepare_mod
from timbrelab.data.local import acquire_local
from timbrelab.data.prepare import assign_splits, prepare_notes, prepare_recordings
from timbrelab.errors import ConfigError, TimbrelabError

SR = 16000
CFG = PrepareConfig(segment_seconds=1.0, segment_hop_seconds=1.0, min_recording_seconds=0.5)


# --------------------------------------------------------------------------------------------------
# helpers


def tone(seconds: float, sr: int = SR, freq: float = 220.0, rms_dbfs: float = -20.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    amplitude = np.sqrt(2.0) * 10.0 ** (rms_dbfs / 20.0)
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, rms_dbfs: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(round(seconds * sr))) * 10.0 ** (rms_dbfs / 20.0)).astype(np.float32)


def write_domain(raw: Path, files: dict[str, tuple[np.ndarray, int] | bytes], ext: str = ".wav",
                 subtype: str = "PCM_16", order: list[str] | None = None) -> Path:
    """files: id -> (audio, sr) or raw bytes. Writes <id><ext> and manifest.json."""
    raw.mkdir(parents=True, exist_ok=True)
    items = []
    for rid in order or list(files):
        spec = files[rid]
        name = rid if "." in rid else rid + ext  # an id may come with its own extension ("notes.txt")
        rid = rid.split(".")[0]
        path = raw / name
        if isinstance(spec, bytes):
            path.write_bytes(spec)
        else:
            audio, sr = spec
            sf.write(str(path), audio, sr, subtype=subtype)
        items.append({"id": rid, "file": name, "license": "test"})
    (raw / "manifest.json").write_text(json.dumps({"items": items, "failed": []}))
    return raw


def read_index(out: Path, split: str) -> list[dict]:
    return json.loads((out / split / "index.json").read_text())


def all_segments(out: Path) -> list[tuple[str, dict]]:
    return [(split, entry) for split in ("train", "valid", "test") for entry in read_index(out, split)]


def tree_bytes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# recordings


def test_segments_exact_length_and_count(tmp_path):
    raw = write_domain(tmp_path / "raw", {"a": (tone(10.5, rms_dbfs=-15), SR)})
    cfg = replace(CFG, segment_seconds=2.0, segment_hop_seconds=1.5)
    summary = prepare_recordings(raw, tmp_path / "out", cfg, domain="cello", progress=False)
    segs = all_segments(tmp_path / "out")
    expected = int((10.5 - 2.0) // 1.5) + 1  # 6: the 0.5 s tail is dropped
    assert len(segs) == expected == sum(s["segments"] for s in summary["splits"].values())
    for split, entry in segs:
        info = sf.info(str(tmp_path / "out" / split / entry["file"]))
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (32000, SR, 1, "PCM_16")
        assert entry["duration_s"] == 2.0 and entry["recording"] == "a"
    assert sorted(e["start_s"] for _, e in segs) == pytest.approx([0.0, 1.5, 3.0, 4.5, 6.0, 7.5])
    assert summary["kind"] == "recordings" and summary["domain"] == "cello"
    assert summary["splits"]["train"]["seconds"] == pytest.approx(12.0)


def test_stereo_44k_and_22k_become_16k_mono(tmp_path):
    stereo = np.stack([tone(3.0, 44100, 440.0, -18), tone(3.0, 44100, 440.0, -18)], axis=1)
    raw = write_domain(tmp_path / "raw", {"st": (stereo, 44100), "lo": (tone(3.0, 22050, 440.0, -18), 22050)})
    prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    segs = all_segments(tmp_path / "out")
    assert {e["recording"] for _, e in segs} == {"st", "lo"}
    assert len(segs) == 6
    for split, entry in segs:
        audio, sr = sf.read(str(tmp_path / "out" / split / entry["file"]))
        assert sr == SR and audio.ndim == 1 and audio.size == SR
        spectrum = np.abs(np.fft.rfft(audio))
        assert np.argmax(spectrum) * sr / audio.size == pytest.approx(440.0, abs=1.0)


def test_loudness_normalised_per_recording_and_peak_limited(tmp_path):
    # two steady tones 28 dB apart, and a quiet tone with loud clicks (gain must be peak-limited)
    clicky = tone(3.0, rms_dbfs=-45)
    clicky[::4000] = 0.5
    raw = write_domain(tmp_path / "raw", {"quiet": (tone(3.0, rms_dbfs=-38), SR),
                                          "loud": (tone(3.0, rms_dbfs=-10), SR),
                                          "clicky": (clicky, SR)})
    summary = prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    assert summary["skipped"] == []
    levels: dict[str, list[float]] = {}
    peak = 0.0
    for split, entry in all_segments(tmp_path / "out"):
        audio, _ = sf.read(str(tmp_path / "out" / split / entry["file"]), dtype="float32")
        levels.setdefault(entry["recording"], []).append(rms_db(audio))
        peak = max(peak, float(np.max(np.abs(audio))))
    for rec in ("quiet", "loud"):
        assert all(abs(level - CFG.target_rms_db) < 1.0 for level in levels[rec]), levels
    assert abs(np.mean(levels["quiet"]) - np.mean(levels["loud"])) < 0.2
    assert peak <= CFG.peak_limit + 1 / 32768
    # the clicks stop the gain: the clicky recording stays well below the target
    assert np.mean(levels["clicky"]) < CFG.target_rms_db - 5


def test_leading_and_trailing_silence_trimmed(tmp_path):
    audio = np.concatenate([noise(1.0, -100), tone(3.0, rms_dbfs=-12), noise(1.5, -100, seed=1)])
    raw = write_domain(tmp_path / "raw", {"r": (audio, SR)})
    cfg = replace(CFG, silence_threshold_db=-300.0)  # nothing dropped as silent: only trimming acts
    prepare_recordings(raw, tmp_path / "out", cfg, domain="cello", progress=False)
    segs = sorted((e["start_s"], split, e) for split, e in all_segments(tmp_path / "out"))
    assert len(segs) == 3  # 5.5 s untrimmed would give 5
    assert segs[0][0] == pytest.approx(1.0, abs=0.02)
    first, _ = sf.read(str(tmp_path / "out" / segs[0][1] / segs[0][2]["file"]), dtype="float32")
    assert rms_db(first[:160]) > -30  # the first 10 ms is already the tone, not silence


def test_splits_by_recording_deterministic_and_order_independent(tmp_path):
    files = {f"rec{i:02d}": (tone(2.2, freq=200 + 10 * i, rms_dbfs=-20), SR) for i in range(10)}
    order = list(files)
    random.Random(3).shuffle(order)
    s1 = prepare_recordings(write_domain(tmp_path / "raw1", files), tmp_path / "o1", CFG, domain="cello",
                            progress=False)
    s2 = prepare_recordings(write_domain(tmp_path / "raw2", files, order=order), tmp_path / "o2", CFG,
                            domain="cello", progress=False)
    assert s1["recordings"] == s2["recordings"]
    assert {k: v["recordings"] for k, v in s1["splits"].items()} == {"train": 8, "valid": 1, "test": 1}
    where: dict[str, set[str]] = {}
    for split, entry in all_segments(tmp_path / "o1"):
        where.setdefault(entry["recording"], set()).add(split)
        assert (tmp_path / "o1" / split / entry["file"]).is_file()
    assert all(len(splits) == 1 for splits in where.values()) and len(where) == 10
    assert {rec: splits.pop() for rec, splits in where.items()} == s1["recordings"]

    fractions = {"train": 0.8, "valid": 0.1, "test": 0.1}
    ids = [f"x{i}" for i in range(40)]
    base = assign_splits(ids, fractions, seed=0)
    assert assign_splits(list(reversed(ids)), fractions, seed=0) == base
    more = assign_splits(ids + ["new1", "new2"], fractions, seed=0)
    assert sum(base[i] != more[i] for i in ids) <= 4  # only recordings at the boundaries move
    three = assign_splits(["a", "b", "c"], fractions, seed=5)
    assert sorted(three.values()) == ["test", "train", "valid"]


def test_split_fractions_must_sum_to_one(tmp_path):
    raw = write_domain(tmp_path / "raw", {"a": (tone(2.0), SR)})
    bad = replace(CFG, split=SplitFractions(train=0.8, valid=0.3, test=0.1))
    with pytest.raises(ConfigError, match=r"prepare\.split.*sum to 1"):
        prepare_recordings(raw, tmp_path / "out", bad, domain="cello", progress=False)
    assert not (tmp_path / "out").exists()


def test_silent_segments_dropped_and_counted(tmp_path):
    audio = np.concatenate([tone(2.0, rms_dbfs=-9), noise(2.0, -80), tone(2.0, rms_dbfs=-9)])
    raw = write_domain(tmp_path / "raw", {"gap": (audio, SR)})
    summary = prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    assert summary["segments_dropped_silent"] == 2
    assert sorted(e["id"] for _, e in all_segments(tmp_path / "out")) == [
        "gap_0000", "gap_0001", "gap_0004", "gap_0005"]


def test_bad_files_skipped_with_reasons_others_processed(tmp_path):
    with_nan = tone(2.0)
    with_nan[5000] = np.nan
    files = {
        "good": (tone(2.0), SR),
        "corrupt": os.urandom(4000),
        "empty": b"",
        "notes.txt": b"hello, not audio\n",
        "short": (tone(0.3), SR),
        "zeros": (np.zeros(3 * SR, dtype=np.float32), SR),
        "hiss": (noise(3.0, -75), SR),
        "nan": (with_nan, SR),
    }
    raw = write_domain(tmp_path / "raw", files, subtype="FLOAT")
    manifest = json.loads((raw / "manifest.json").read_text())
    manifest["items"].append({"id": "gone", "file": "gone.wav"})
    (raw / "manifest.json").write_text(json.dumps(manifest))
    summary = prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    reasons = {entry["id"]: entry["reason"] for entry in summary["skipped"]}
    assert set(reasons) == {"corrupt", "empty", "notes", "short", "zeros", "hiss", "nan", "gone"}
    patterns = {"corrupt": "unreadable", "empty": "empty", "notes": "not an audio file", "short": "too short",
                "zeros": "silent", "hiss": "silent", "nan": "non-finite", "gone": "missing"}
    for rid, pattern in patterns.items():
        assert pattern in reasons[rid] and reasons[rid].startswith(f"{rid}: "), reasons[rid]
    assert summary["recordings"] == {"good": "train"}
    assert len(all_segments(tmp_path / "out")) == 2


def test_ffmpeg_decodes_what_libsndfile_cannot(tmp_path):
    from timbrelab.audio import ffmpeg_exe

    raw = tmp_path / "raw"
    raw.mkdir()
    sf.write(str(tmp_path / "src.wav"), tone(2.5, 44100, 330.0, -15), 44100)
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(tmp_path / "src.wav"), "-c:a", "aac",
           "-b:a", "96k", str(raw / "m.m4a")]
    if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
        pytest.skip("this ffmpeg build cannot encode aac")
    (raw / "manifest.json").write_text(json.dumps({"items": [{"id": "m", "file": "m.m4a"}]}))
    summary = prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    assert summary["skipped"] == [] and summary["splits"]["train"]["segments"] == 2
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").rglob("*"))


def _glide(seconds: float, lead: float, hop: int = 64) -> tuple[np.ndarray, str]:
    """A sine gliding 150 -> 600 Hz after ``lead`` s of silence, and its f0 csv (rows every hop)."""
    n = int(round((lead + seconds) * SR))
    t = np.arange(n) / SR
    f0 = np.where(t >= lead, 150.0 * 4.0 ** ((t - lead) / seconds), 0.0)
    audio = (0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR)).astype(np.float32)
    rows = ["time_s,f0_hz,voiced"]
    for i in range(0, n, hop):
        rows.append(f"{i / SR:.6f},{f0[i]:.3f},{int(f0[i] > 0)}")
    return audio, "\n".join(rows) + "\n"


def test_f0_slices_stay_aligned_with_audio(tmp_path):
    audio, csv = _glide(6.0, lead=0.5137)
    raw = write_domain(tmp_path / "raw", {"g": (audio, SR)})
    (raw / "g.f0.csv").write_text(csv)
    raw_rows = np.loadtxt(raw / "g.f0.csv", delimiter=",", skiprows=1)
    hop_s = 64 / SR
    cfg = replace(CFG, segment_hop_seconds=0.5)
    summary = prepare_recordings(raw, tmp_path / "out", cfg, domain="source", progress=False)
    segs = all_segments(tmp_path / "out")
    assert len(segs) == summary["splits"]["train"]["segments"] >= 10
    for split, entry in segs:
        rows = np.loadtxt(tmp_path / "out" / split / entry["f0_file"], delimiter=",", skiprows=1)
        assert (tmp_path / "out" / split / entry["f0_file"]).read_text().startswith("time_s,f0_hz,voiced\n")
        assert rows.shape == (n_frames(SR, 64), 3)  # 1 s segments, centred framing: 1 + n // hop rows
        assert np.allclose(rows[:, 0], np.arange(rows.shape[0]) * hop_s)
        raw_index = entry["start_s"] / hop_s
        assert raw_index == pytest.approx(round(raw_index), abs=1e-6)  # the trim start sits on the f0 grid
        expect = raw_rows[int(round(raw_index)):int(round(raw_index)) + rows.shape[0]]
        np.testing.assert_array_equal(rows[:, 1], expect[:, 1])
        np.testing.assert_array_equal(rows[:, 2], expect[:, 2])
        # and the audio agrees: instantaneous frequency at a few voiced frames matches the f0 rows
        seg, _ = sf.read(str(tmp_path / "out" / split / entry["file"]), dtype="float64")
        inst = np.diff(np.unwrap(np.angle(hilbert(seg)))) * SR / (2 * np.pi)
        for j in (40, 125, 210):
            if rows[j, 2]:
                center = j * 64
                measured = np.median(inst[center - 80:center + 80])
                assert measured == pytest.approx(rows[j, 1], rel=0.01)
    assert min(e["start_s"] for _, e in segs) == pytest.approx(0.5137, abs=0.025)


def test_output_is_byte_identical_across_runs(tmp_path):
    audio, csv = _glide(4.0, lead=0.3)
    stereo = np.stack([tone(3.0, 44100), noise(3.0, -30, sr=44100)], axis=1)
    files = {"g": (audio, SR), "st": (stereo, 44100), "lo": (tone(2.5, 22050, 300.0), 22050)}
    raw = write_domain(tmp_path / "raw", files)
    (raw / "g.f0.csv").write_text(csv)
    s1 = prepare_recordings(raw, tmp_path / "a", CFG, domain="source", progress=False)
    s2 = prepare_recordings(raw, tmp_path / "b", CFG, domain="source", progress=False)
    assert s1 == s2
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert len(tree_bytes(tmp_path / "a")) > 10


def test_failure_midway_leaves_no_half_written_out_dir(tmp_path, monkeypatch):
    files = {f"r{i}": (tone(2.0, freq=300 + i), SR) for i in range(4)}
    raw = write_domain(tmp_path / "raw", files)
    out = tmp_path / "out"
    prepare_recordings(raw, out, CFG, domain="cello", progress=False)
    before = tree_bytes(out)
    calls = {"n": 0}
    real_save = prepare_mod.save_wav

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(prepare_mod, "save_wav", failing_save)
    with pytest.raises(OSError, match="simulated"):
        prepare_recordings(raw, out, replace(CFG, target_rms_db=-30.0), domain="cello", progress=False)
    assert tree_bytes(out) == before  # the previous output is untouched
    calls["n"] = 0
    with pytest.raises(OSError):
        prepare_recordings(raw, tmp_path / "fresh", CFG, domain="cello", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no temp dirs left either


# --------------------------------------------------------------------------------------------------
# NSynth notes


def _nsynth(raw: Path, split: str, notes: dict[str, tuple[np.ndarray, int] | bytes | None]) -> None:
    (raw / split / "audio").mkdir(parents=True)
    examples = {}
    for note, spec in notes.items():
        fam, rest = note.split("_acoustic_")
        inst, pitch, vel = rest.split("-")
        examples[note] = {"note_str": note, "pitch": int(pitch), "velocity": int(vel), "sample_rate": 16000,
                          "instrument_str": f"{fam}_acoustic_{inst}", "instrument_family_str": fam}
        path = raw / split / "audio" / f"{note}.wav"
        if isinstance(spec, bytes):
            path.write_bytes(spec)
        elif spec is not None:
            sf.write(str(path), spec[0], spec[1], subtype="PCM_16" if np.all(np.isfinite(spec[0])) else "FLOAT")
    (raw / split / "examples.json").write_text(json.dumps(examples))


def test_nsynth_notes_keep_velocity_split_and_samples(tmp_path):
    raw = tmp_path / "nsynth"
    soft, loud = tone(4.0, rms_dbfs=-32), tone(4.0, rms_dbfs=-14)
    nan_note = tone(4.0)
    nan_note[100] = np.nan
    _nsynth(raw, "train", {"string_acoustic_001-060-050": (soft, SR), "string_acoustic_001-060-100": (loud, SR),
                           "flute_acoustic_002-070-075": (np.zeros(4 * SR, np.float32), SR),
                           "flute_acoustic_002-071-075": os.urandom(3000),
                           "flute_acoustic_002-072-075": None,
                           "flute_acoustic_002-073-075": (nan_note, SR)})
    stereo44 = np.stack([tone(4.0, 44100, 440.0, -20)] * 2, axis=1)
    _nsynth(raw, "valid", {"brass_acoustic_003-062-127": (stereo44, 44100)})
    _nsynth(raw, "test", {"reed_acoustic_004-050-025": (tone(4.0, rms_dbfs=-40), SR)})
    out = tmp_path / "out"
    summary = prepare_notes(raw, out, CFG, progress=False)
    assert summary["kind"] == "notes" and summary["domain"] == "nsynth"
    assert {e["id"] for e in summary["skipped"]} == {f"flute_acoustic_002-0{p}-075" for p in (70, 71, 72, 73)}
    assert summary["recordings"] == {"string_acoustic_001-060-050": "train", "string_acoustic_001-060-100": "train",
                                     "brass_acoustic_003-062-127": "valid", "reed_acoustic_004-050-025": "test"}
    a, _ = sf.read(str(out / "train" / "string_acoustic_001-060-050.wav"))
    b, _ = sf.read(str(out / "train" / "string_acoustic_001-060-100.wav"))
    assert rms_db(b) - rms_db(a) == pytest.approx(18.0, abs=0.05)  # velocity kept, nothing normalised
    raw_pcm, _ = sf.read(str(raw / "train" / "audio" / "string_acoustic_001-060-050.wav"), dtype="int16")
    out_pcm, _ = sf.read(str(out / "train" / "string_acoustic_001-060-050.wav"), dtype="int16")
    np.testing.assert_array_equal(raw_pcm, out_pcm)  # already conform: samples untouched
    v, sr = sf.read(str(out / "valid" / "brass_acoustic_003-062-127.wav"))
    assert sr == SR and v.ndim == 1 and v.size == 4 * SR
    index = read_index(out, "train")
    assert [e["id"] for e in index] == ["string_acoustic_001-060-050", "string_acoustic_001-060-100"]
    assert index[1] == {"id": "string_acoustic_001-060-100", "file": "string_acoustic_001-060-100.wav",
                        "duration_s": 4.0, "pitch": 60, "velocity": 100, "instrument_str": "string_acoustic_001",
                        "instrument_family_str": "string"}
    assert sorted(json.loads((out / "train" / "examples.json").read_text())) == [e["id"] for e in index]
    assert summary["splits"]["train"] == {"recordings": 2, "segments": 2, "instruments": 1, "seconds": 8.0}
    first = tree_bytes(out)
    prepare_notes(raw, tmp_path / "again", CFG, progress=False)
    assert tree_bytes(tmp_path / "again") == first


# --------------------------------------------------------------------------------------------------
# local folder source


def test_local_folder_copies_and_feeds_prepare(tmp_path):
    src = tmp_path / "mine"
    (src / "Suite 1").mkdir(parents=True)
    (src / "suite_1").mkdir()
    sf.write(str(src / "Suite 1" / "Prélude.WAV"), tone(2.5, 44100), 44100)
    sf.write(str(src / "suite_1" / "prelude.flac"), np.stack([tone(2.0, 22050)] * 2, axis=1), 22050)
    audio, csv = _glide(2.5, lead=0.2)
    sf.write(str(src / "glide.wav"), audio, SR)
    (src / "glide.f0.csv").write_text(csv)
    (src / "lonely.f0.csv").write_text(csv)
    (src / "README.txt").write_text("not audio")
    (src / "empty.wav").write_bytes(b"")
    (src / "broken.ogg").write_bytes(os.urandom(2000))
    outside = tmp_path / "elsewhere.wav"
    sf.write(str(outside), tone(1.0), SR)
    (src / "link.wav").symlink_to(outside)
    (src / "loop").symlink_to(tmp_path, target_is_directory=True)  # a cycle: must not be followed

    out = tmp_path / "raw" / "cello"
    items, failed = acquire_local(LocalFolderConfig(path=str(src), license="mine"), out, progress=False)
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)) == 3 and all(re.fullmatch(r"[a-z0-9_-]+", i) for i in ids)
    by_rel = {item["provenance"]["relpath"]: item for item in items}
    assert set(by_rel) == {"Suite 1/Prélude.WAV", "suite_1/prelude.flac", "glide.wav"}
    for rel, item in by_rel.items():
        assert (out / item["file"]).read_bytes() == (src / rel).read_bytes()
        assert item["sha256"] == hashlib.sha256((src / rel).read_bytes()).hexdigest()
        assert item["license"] == "mine" and item["provenance"]["source"] == "local"
    assert (by_rel["suite_1/prelude.flac"]["sample_rate"], by_rel["suite_1/prelude.flac"]["channels"]) == (22050, 2)
    assert by_rel["Suite 1/Prélude.WAV"]["duration_s"] == pytest.approx(2.5)
    assert (out / f"{by_rel['glide.wav']['id']}.f0.csv").read_text() == csv
    reasons = {entry["file"]: entry["reason"] for entry in failed}
    assert set(reasons) == {"lonely.f0.csv", "README.txt", "empty.wav", "broken.ogg", "link.wav", "loop"}
    assert "not followed" in reasons["loop"] and "no audio file" in reasons["lonely.f0.csv"]
    assert "not an audio file" in reasons["README.txt"] and "empty" in reasons["empty.wav"]
    assert "outside" in reasons["link.wav"] and all(e["status"] == "skipped" for e in failed)

    (out / "manifest.json").write_text(json.dumps({"items": items, "failed": failed}))
    summary = prepare_recordings(out, tmp_path / "prepared", CFG, domain="source", progress=False)
    assert summary["skipped"] == [] and len(summary["recordings"]) == 3
    f0_files = [e for _, e in all_segments(tmp_path / "prepared") if "f0_file" in e]
    assert {e["recording"] for e in f0_files} == {"glide"}


def test_local_folder_missing_or_empty_is_a_clear_error(tmp_path):
    with pytest.raises(TimbrelabError, match=r"nowhere.*`path`"):
        acquire_local(LocalFolderConfig(path=str(tmp_path / "nowhere")), tmp_path / "out", progress=False)
    with pytest.raises(TimbrelabError, match=r"`path`"):
        acquire_local(LocalFolderConfig(), tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TimbrelabError, match=r"empty.*`path`"):
        acquire_local(LocalFolderConfig(path=str(tmp_path / "empty")), tmp_path / "out", progress=False)
