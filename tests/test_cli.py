"""The `timbrelab` command: subcommands and the one-line error convention."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "timbrelab.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cqt_resynth_keeps_the_pitch(tmp_path):
    sr = 44100
    t = np.arange(int(1.0 * sr)) / sr
    sf.write(str(tmp_path / "in.wav"), np.stack([0.3 * np.sin(2 * np.pi * 330 * t)] * 2, axis=1), sr)
    result = cli("cqt-resynth", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.wav"), "--iters", "8")
    assert result.returncode == 0, result.stderr
    audio, out_sr = sf.read(str(tmp_path / "out.wav"))
    assert out_sr == 16000 and audio.ndim == 1 and abs(len(audio) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(np.argmax(spectrum) * out_sr / len(audio) - 330) < 3


def test_missing_input_is_one_line_exit_2(tmp_path):
    result = cli("cqt-resynth", str(tmp_path / "nope.wav"), "-o", str(tmp_path / "o.wav"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nope.wav" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.wav").exists()


def test_params_check_detects_drift(tmp_path):
    target = tmp_path / "params.yaml"
    assert cli("params", "--out", str(target)).returncode == 0
    assert cli("params", "--check", "--out", str(target)).returncode == 0
    target.write_text(target.read_text().replace("segment_seconds: 4.0", "segment_seconds: 3.0", 1))
    result = cli("params", "--check", "--out", str(target))
    assert result.returncode == 2 and "make params" in result.stderr


def test_unknown_stage_is_a_usage_error():
    result = cli("stage", "no_such_stage")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_evaluate_stage_needs_its_system():
    result = cli("stage", "evaluate")
    assert result.returncode == 2 and "SYSTEM" in result.stderr
    result = cli("stage", "evaluate", "no_such_system")
    assert result.returncode == 2 and "evaluate.systems has no 'no_such_system'" in result.stderr
