"""The features stage's library: storage layout, skipping, determinism, statistics, the report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from timbrelab.config import FeaturesConfig
from timbrelab.data import features as lib
from timbrelab.errors import ConfigError

SR = 16000
CFG = FeaturesConfig(workers=1)


def tone(seconds: float, freq: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def prepared_split(root: Path, clips: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True)
    index = []
    for name, audio in clips.items():
        sf.write(str(root / f"{name}.wav"), audio, SR, subtype="PCM_16")
        index.append({"id": name, "file": f"{name}.wav", "duration_s": len(audio) / SR})
    (root / "index.json").write_text(json.dumps(index))
    return root


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    clips = {"a220": tone(2.0, 220.0), "b440": tone(2.0, 440.0, 0.1), "short": tone(1.0, 330.0),
             "silent": np.zeros(2 * SR, np.float32), "c110": tone(2.0, 110.0)}
    src = prepared_split(tmp / "prepared", clips)
    summary = lib.extract_split(src, tmp / "out", CFG, label="test", progress=False)
    return src, tmp / "out", summary


def test_layout_and_shapes(extracted):
    _, out, summary = extracted
    assert summary["clips"] == 3
    index = json.loads((out / "index.json").read_text())
    assert [e["id"] for e in index] == ["a220", "b440", "c110"] and [e["row"] for e in index] == [0, 1, 2]
    n = 2 * SR
    frames, cqt_frames = 1 + n // CFG.frame_hop, 1 + n // CFG.cqt.hop_length
    expect = {"audio": ((3, n), np.int16), "cqt": ((3, CFG.cqt.n_bins, cqt_frames), np.float16),
              "f0_hz": ((3, frames), np.float32), "f0_confidence": ((3, frames), np.float32),
              "loudness_db": ((3, frames), np.float32)}
    for name, (shape, dtype) in expect.items():
        array = np.load(out / f"{name}.npy", mmap_mode="r")
        assert array.shape == shape and array.dtype == dtype, name
    assert not list(out.glob("*.partial"))


def test_bad_clips_are_skipped_with_reasons(extracted):
    _, _, summary = extracted
    reasons = {entry["id"]: entry["reason"] for entry in summary["skipped"]}
    assert set(reasons) == {"short", "silent"}
    assert "expected 32000" in reasons["short"] and "silent" in reasons["silent"]


def test_values_are_the_clips_features(extracted):
    src, out, _ = extracted
    audio = np.load(out / "audio.npy", mmap_mode="r")
    pcm = sf.read(str(src / "b440.wav"), dtype="int16")[0]
    np.testing.assert_array_equal(audio[1], pcm)
    f0 = np.load(out / "f0_hz.npy")
    conf = np.load(out / "f0_confidence.npy")
    for row, freq in ((0, 220.0), (1, 440.0), (2, 110.0)):
        voiced = conf[row] > 0.5
        assert voiced.mean() > 0.8
        cents = 1200 * np.abs(np.log2(f0[row][voiced] / freq))
        assert np.median(cents) < 20
    loud = np.load(out / "loudness_db.npy")
    # b440 is 3x quieter than a220 (-9.5 dB), and the A-curve favours 440 Hz over 220 Hz.
    import librosa

    a_gain = float(librosa.A_weighting(440.0) - librosa.A_weighting(220.0))
    expected = 20 * np.log10(3.0) - a_gain
    assert np.median(loud[0, 50:-50]) - np.median(loud[1, 50:-50]) == pytest.approx(expected, abs=0.5)


def test_same_input_gives_identical_bytes_for_any_worker_count(extracted, tmp_path):
    src, out, _ = extracted
    again = lib.extract_split(src, tmp_path / "again", dataclasses.replace(CFG, workers=2), label="t", progress=False)
    assert again["clips"] == 3
    assert digest(tmp_path / "again") == digest(out)


def test_statistics_of_a_split(extracted):
    _, out, _ = extracted
    stats = lib.split_statistics(out, CFG)
    cqt = np.load(out / "cqt.npy").astype(np.float64)
    assert stats["cqt"]["mean"] == pytest.approx(cqt.mean(), rel=1e-6)
    assert stats["cqt"]["std"] == pytest.approx(cqt.std(), rel=1e-6)
    loud = np.load(out / "loudness_db.npy")
    quantiles = stats["loudness_db"]["quantiles"]
    assert len(quantiles) == 101
    for q in (0, 10, 50, 90, 100):  # the extremes too: q=100 is the loudest frame, not the histogram's edge
        assert quantiles[q] == pytest.approx(np.quantile(loud, q / 100), abs=0.2)
    midi = np.array([57.0, 69.0, 45.0])  # A3, A4, A2
    assert stats["f0"]["mean_midi"] == pytest.approx(midi.mean(), abs=0.3)
    assert stats["f0"]["p01_midi"] == pytest.approx(45.0, abs=0.3)
    assert stats["f0"]["p99_midi"] == pytest.approx(69.0, abs=0.3)


def test_report_png_is_deterministic(extracted, tmp_path):
    _, out, _ = extracted
    stats = {**lib.split_statistics(out, CFG)}
    per_split = {"train": {"seconds": 6.0, "voiced_seconds": 5.5}}
    lib.write_report("test", stats, per_split, tmp_path / "a.png")
    lib.write_report("test", stats, per_split, tmp_path / "b.png")
    data = (tmp_path / "a.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("change,key", [
    ({"frame_hop": 100}, "features.cqt.hop_length"),
    ({"cqt": dataclasses.replace(CFG.cqt, n_bins=240)}, "n_bins"),
    ({"pitch": dataclasses.replace(CFG.pitch, estimator="crepe")}, "features.pitch.estimator"),
])
def test_impossible_configs_fail_at_start(change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        lib.check_config(dataclasses.replace(CFG, **change))


def test_row_writer_cuts_to_the_rows_written(tmp_path):
    """Skipped clips leave the pre-sized capacity short: the file must still be a valid .npy of the
    rows written, with nothing else left behind."""
    writer = lib._RowWriter(tmp_path / "x.npy.partial", 10 ** 9, (5,), np.float32)
    rows = np.arange(10, dtype=np.float32).reshape(2, 5)
    for row in rows:
        writer.append(row)
    writer.finish(tmp_path / "x.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), rows)
    np.testing.assert_array_equal(np.stack(list(lib.iter_rows(tmp_path / "x.npy"))), rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
