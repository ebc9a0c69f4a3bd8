"""Timbre transfer (timbrelab.inference.ddsp_transfer and .loading, `timbrelab transfer`): octave shift, loudness quantile mapping, the
pitch-range warning, peak safety, model resolution (path, MLflow run, default) and bad input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from timbrelab import cli
from timbrelab.inference import ddsp_transfer as transfer
from timbrelab.inference.loading import load_model
from timbrelab.config import FeaturesConfig
from timbrelab.data.features import LOUDNESS_BINS, _quantiles
from timbrelab.errors import AudioError, ConfigError, TimbrelabError
from timbrelab.models.ddsp import DDSP, PRESETS
from timbrelab.models.checkpoint import FORMAT as CHECKPOINT_FORMAT
from timbrelab.training.ddsp import MODEL_TYPE
from timbrelab.training.ddsp_config import DDSPModelParams, DDSPTrainConfig

SR = 16000
REPO = Path(__file__).resolve().parents[1]
TARGET_MEAN_MIDI = 57.5
P01, P99 = 36.0, 77.0
VOICED_THRESHOLD = 0.25  # what params.yaml uses


# ------------------------------------------------------------------------------------------ fixtures

def target_stats() -> dict:
    """stats.json as the features stage writes it, for a cello-like train set: 3 % floor frames, the rest
    around -33 dB; quantiles and histogram computed by the features module's own code."""
    rng = np.random.default_rng(0)
    loud = np.concatenate([np.full(300, -80.0), np.clip(rng.normal(-33.0, 10.0, 9700), -79.0, -12.0)])
    hist = np.histogram(np.clip(loud, LOUDNESS_BINS[0], LOUDNESS_BINS[-1] - 1e-6), LOUDNESS_BINS)[0]
    cfg = FeaturesConfig()
    cfg.pitch.voiced_threshold = VOICED_THRESHOLD
    return {
        "sample_rate": SR, "frame_hop": 64, "cqt_hop": 256, "hop_ratio": 4, "n_bins": 156, "fmin_hz": 65.406,
        "bins_per_octave": 24, "log_floor": 1e-5, "pitch_estimator": "swift", "voiced_threshold": VOICED_THRESHOLD,
        "features_config": asdict(cfg), "computed_on": "train", "clips": 10,
        "cqt": {"mean": -6.0, "std": 2.0},
        "loudness_db": {"mean": float(loud.mean()), "std": float(loud.std()),
                        "quantiles": _quantiles(hist, LOUDNESS_BINS, np.linspace(0, 1, 101))},
        "f0": {"voiced_fraction": 0.95, "voiced_seconds": 200.0, "mean_midi": TARGET_MEAN_MIDI, "std_midi": 10.0,
               "p01_midi": P01, "p99_midi": P99},
        "histograms": {"loudness_db": hist.tolist(), "pitch_midi": [0] * 1280},
    }


def audible_model(stats: dict, amplitude_logit: float = 0.0) -> DDSP:
    """A tiny DDSP whose output is a steady tone at the input f0: head weights zeroed, the amplitude head's
    bias at ``amplitude_logit`` (0 -> amplitude 0.40), the fundamental dominant, the noise at its quiet bias."""
    model = DDSP(PRESETS["tiny"], stats).eval()
    k = model.cfg.n_harmonics
    with torch.no_grad():
        model.decoder.head.weight.zero_()
        model.decoder.head.bias[0] = amplitude_logit
        model.decoder.head.bias[1:1 + k] = -8.0
        model.decoder.head.bias[1] = 8.0
    return model


def save_payload(path: Path, model: DDSP, stats: dict, **changes) -> Path:
    """model.pt written the way training.ddsp.train writes it (through memory, plain containers)."""
    payload = {"model_type": MODEL_TYPE, "format": CHECKPOINT_FORMAT,
               "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
               "model_config": asdict(model.cfg), "train_config": asdict(DDSPTrainConfig(model=DDSPModelParams(preset="tiny"))),
               "stats": stats, "hash": "0123456789ab", **changes}
    blob = io.BytesIO()
    torch.save(payload, blob)
    path.write_bytes(blob.getvalue())
    return path


def tone(f0: float, seconds: float = 1.0, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    """A harmonic tone (5 partials): swift is confident on it, unlike on a low pure sine."""
    t = np.arange(int(seconds * sr)) / sr
    return sum(amp / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def stats():
    return target_stats()


@pytest.fixture(scope="module")
def model(stats):
    return audible_model(stats)


@pytest.fixture(scope="module")
def payload(model, stats, tmp_path_factory):
    path = save_payload(tmp_path_factory.mktemp("ckpt") / "model.pt", model, stats)
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def checkpoint(model, stats, tmp_path_factory):
    return save_payload(tmp_path_factory.mktemp("ckpt") / "model.pt", model, stats)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("TIMBRELAB_DEBUG", raising=False)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["transfer", *args])
    out, err = capsys.readouterr()
    return code, out, err


def peak_hz(audio: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * sr / len(audio))


# -------------------------------------------------------------------------------------- octave shift

@pytest.mark.parametrize("f0, target_mean, expected", [(110.0, TARGET_MEAN_MIDI, 1), (110.0, 45.0, 0),
                                                        (880.0, TARGET_MEAN_MIDI, -2), (110.0, 75.0, 3)])
def test_auto_octave_shift_brings_the_mean_pitch_nearest_the_target(model, payload, f0, target_mean, expected):
    changed = {**payload, "stats": {**payload["stats"], "f0": {**payload["stats"]["f0"], "mean_midi": target_mean,
                                                               "p01_midi": 0.0, "p99_midi": 127.0}}}
    result = transfer.ddsp_transfer(tone(f0), SR, model, changed)
    assert result.octave_shift == expected
    np.testing.assert_allclose(result.f0_shifted_hz, result.f0_hz * 2.0 ** expected, rtol=1e-6)
    assert abs(np.median(result.f0_hz[result.voiced]) - f0) < 0.01 * f0


def test_explicit_octave_shift_is_applied_as_given(model, payload):
    result = transfer.ddsp_transfer(tone(220.0), SR, model, payload, octave_shift=-1)
    assert result.octave_shift == -1
    np.testing.assert_allclose(result.f0_shifted_hz, result.f0_hz / 2.0, rtol=1e-6)


def test_the_output_plays_the_shifted_pitch(model, payload):
    result = transfer.ddsp_transfer(tone(110.0), SR, model, payload)
    assert result.octave_shift == 1 and result.sample_rate == SR and result.audio.shape == (SR,)
    assert abs(peak_hz(result.audio) - 220.0) < 2.0
    assert np.all(np.isfinite(result.audio)) and np.max(np.abs(result.audio)) <= 1.0


# ------------------------------------------------------------------------------------ loudness mapping

def test_quantile_map_sends_the_source_quantiles_onto_the_target_and_is_monotone(stats):
    levels, values = transfer.target_quantiles(stats)
    rng = np.random.default_rng(1)
    silence = np.full(200, -80.0)
    source = np.concatenate([silence, rng.uniform(-60.0, -5.0, 2000)])   # another range, uniform, with pauses
    mapped = transfer.quantile_map_loudness(source, levels, values, silence_db=-70.0, floor_db=-80.0)
    active = source > -70.0
    u = np.linspace(0, 1, 11)
    got = np.quantile(mapped[active], u)
    # Each source quantile lands on the target's quantile of its level (within the 0.1 dB histogram bins
    # and the 1 % level spacing of the stats).
    tgt_levels, tgt_vals = transfer._active_quantile_function(levels, values, -70.0)
    np.testing.assert_allclose(got, np.interp(u, tgt_levels, tgt_vals), atol=0.6)
    assert abs(got[5] - values[50]) < 1.0 and got[0] == pytest.approx(-70.0, abs=0.5)  # median; the silence edge
    order = np.argsort(source)
    assert np.all(np.diff(mapped[order]) >= -1e-4)                       # monotone
    assert np.argmax(mapped) == np.argmax(source)                        # loud stays loud
    np.testing.assert_array_equal(mapped[:200], -80.0)                   # silent frames keep their level
    # The top of the map is the loudest train frame (-12 dB, within a 0.1 dB bin), not the histogram's +20 dB edge.
    assert values[-1] == pytest.approx(-12.0, abs=0.1)
    assert abs(mapped.max() - values[-1]) < 1e-4


def test_a_steady_source_maps_to_a_typical_target_level(stats):
    levels, values = transfer.target_quantiles(stats)
    mapped = transfer.quantile_map_loudness(np.full(100, -40.0), levels, values, silence_db=-70.0, floor_db=-80.0)
    tgt_levels, tgt_vals = transfer._active_quantile_function(levels, values, -70.0)
    np.testing.assert_allclose(mapped, np.mean(np.interp(np.linspace(0, 1, 101), tgt_levels, tgt_vals)), atol=1e-4)
    assert -40.0 < mapped[0] < -28.0


def test_loudness_shift_adds_decibels_after_the_mapping(model, payload):
    base = transfer.ddsp_transfer(tone(220.0), SR, model, payload)
    louder = transfer.ddsp_transfer(tone(220.0), SR, model, payload, loudness_shift_db=6.0)
    quieter = transfer.ddsp_transfer(tone(220.0), SR, model, payload, loudness_shift_db=-200.0)
    np.testing.assert_allclose(louder.loudness_mapped_db, base.loudness_mapped_db + 6.0, atol=1e-4)
    np.testing.assert_array_equal(quieter.loudness_mapped_db, -80.0)     # floored where the model's inputs end
    np.testing.assert_array_equal(base.loudness_db, louder.loudness_db)


# ------------------------------------------------------------------------------------------ warnings

def test_pitch_outside_the_trained_range_warns(model, payload):
    with pytest.warns(transfer.TransferWarning, match="outside the range the model was trained on"):
        result = transfer.ddsp_transfer(tone(110.0), SR, model, payload, octave_shift=3)  # MIDI 81 > p99 77
    assert result.out_of_range_fraction > 0.95 and len(result.warnings) == 1


def test_pitch_inside_the_trained_range_does_not_warn(model, payload):
    with warnings.catch_warnings():
        warnings.simplefilter("error", transfer.TransferWarning)
        result = transfer.ddsp_transfer(tone(110.0), SR, model, payload)
    assert result.out_of_range_fraction == 0.0 and result.warnings == []


def test_loud_output_is_scaled_not_clipped_and_warns(stats, tmp_path):
    loud_model = audible_model(stats, amplitude_logit=8.0)          # amplitude ~2: peaks near 2
    payload = torch.load(save_payload(tmp_path / "m.pt", loud_model, stats), weights_only=True)
    with pytest.warns(transfer.TransferWarning, match="scaled"):
        result = transfer.ddsp_transfer(tone(220.0), SR, loud_model, payload)
    assert result.peak_scale < 0.6
    assert abs(np.max(np.abs(result.audio)) - transfer.PEAK_LIMIT) < 1e-6


# -------------------------------------------------------------------------------------- features config

def test_stats_without_features_config_are_refused(stats):
    old = {k: v for k, v in stats.items() if k != "features_config"}
    with pytest.raises(ConfigError, match="lack features_config"):
        transfer.features_config(old)
    assert transfer.features_config(stats).pitch.voiced_threshold == VOICED_THRESHOLD


def test_cli_transfers_a_stereo_44k_file(checkpoint, tmp_path):
    sr = 44100
    left = tone(110.0, 1.5, sr)
    sf.write(str(tmp_path / "in.wav"), np.stack([left, 0.5 * left], axis=1), sr)
    out = tmp_path / "out.wav"
    result = subprocess.run([sys.executable, "-m", "timbrelab.cli", "transfer", str(tmp_path / "in.wav"),
                             "--checkpoint", str(checkpoint), "-o", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "octave shift +1 (auto)" in result.stdout and result.stdout.count("\n") == 1
    audio, out_sr = sf.read(str(out))
    assert out_sr == SR and audio.ndim == 1 and abs(len(audio) - 1.5 * SR) <= 1
    assert abs(peak_hz(audio) - 220.0) < 2.0


def test_cli_reports_warnings_on_stderr(checkpoint, tmp_path, capsys):
    sf.write(str(tmp_path / "in.wav"), tone(110.0), SR)
    code, out, err = run_cli(capsys, str(tmp_path / "in.wav"), "--checkpoint", str(checkpoint),
                             "-o", str(tmp_path / "o.wav"), "--octave-shift", "+3", "--loudness-shift", "-3")
    assert code == 0
    assert err.count("timbrelab: warning:") == 1 and "outside the range" in err
    assert "octave shift +3," in out and "loudness shift -3.0 dB" in out and "1 warning" in out


def _write_bad_input(kind: str, path: Path) -> None:
    if kind == "silence":
        sf.write(str(path), np.zeros(SR, dtype=np.float32), SR)
    elif kind == "noise":
        sf.write(str(path), (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32), SR)
    elif kind == "short":
        sf.write(str(path), tone(220.0, 0.02), SR)
    elif kind == "not audio":
        path.write_text("not a wav file")


@pytest.mark.parametrize("kind, needle", [("silence", "silent"), ("noise", "no pitch found"),
                                          ("short", "at least 40.0 ms"), ("not audio", "damaged or not readable audio")])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(kind, needle, checkpoint, tmp_path, capsys):
    source = tmp_path / "bad.wav"
    _write_bad_input(kind, source)
    out = tmp_path / "o.wav"
    code, _, err = run_cli(capsys, str(source), "--checkpoint", str(checkpoint), "-o", str(out))
    assert code == 2
    assert err.count("\n") == 1 and str(source) in err and needle in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == [source]


def _cyclegan(model, stats, path):
    return save_payload(path, model, stats, model_type="cyclegan")


def _off_grid(model, stats, path):
    return save_payload(path, model, {**stats, "features_config": {**stats["features_config"], "frame_hop": 128}})


def _no_quantiles(model, stats, path):
    return save_payload(path, model, {**stats, "loudness_db": {"mean": -33.0, "std": 10.0}})


def _garbage(model, stats, path):
    path.write_bytes(b"\x00not a checkpoint" * 10)
    return path


@pytest.mark.parametrize("make, needle", [(_cyclegan, "'cyclegan' checkpoint"), (_off_grid, "hop 128"),
                                          (_no_quantiles, "loudness_db.quantiles"),
                                          (_garbage, "not a timbrelab checkpoint")])
def test_unusable_checkpoints_are_refused_naming_the_file(make, needle, model, stats, tmp_path, capsys):
    ckpt = make(model, stats, tmp_path / "other.pt")
    sf.write(str(tmp_path / "in.wav"), tone(220.0), SR)
    out = tmp_path / "o.wav"
    code, _, err = run_cli(capsys, str(tmp_path / "in.wav"), "--checkpoint", str(ckpt), "-o", str(out))
    assert code == 2 and err.count("\n") == 1 and str(ckpt) in err and needle in err, err
    assert not out.exists()


def test_unknown_model_lists_the_choices(checkpoint, tmp_path, capsys):
    sf.write(str(tmp_path / "in.wav"), tone(220.0), SR)
    code, _, err = run_cli(capsys, str(tmp_path / "in.wav"), "--model", "timbretron", "-o", str(tmp_path / "o.wav"))
    assert code == 2 and "'timbretron': unknown; choose one of ddsp" in err and err.count("\n") == 1


def test_checkpoint_and_run_id_are_mutually_exclusive(checkpoint, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["transfer", "in.wav", "--checkpoint", str(checkpoint), "--run-id", "abc",
                                       "-o", "o.wav"])
    assert exit_info.value.code == 2
    with pytest.raises(ConfigError, match="not both"):
        load_model("ddsp", checkpoint=checkpoint, run_id="abc")


def test_default_model_missing_says_to_run_dvc_repro(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TimbrelabError, match=r"models/ddsp/model.pt: no trained model yet; run `dvc repro`"):
        load_model()


def test_library_errors_for_bad_audio(model, payload):
    with pytest.raises(AudioError, match="NaN"):
        transfer.ddsp_transfer(np.full(SR, np.nan, dtype=np.float32), SR, model, payload)
    with pytest.raises(AudioError, match="too short"):
        transfer.ddsp_transfer(np.zeros(0, dtype=np.float32), SR, model, payload)
    with pytest.raises(ConfigError, match="octave shift"):
        transfer.ddsp_transfer(tone(220.0), SR, model, payload, octave_shift="up")


# ------------------------------------------------------------------------------------------- MLflow

@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("timbrelab", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, experiment


def test_run_id_downloads_and_uses_the_runs_model(mlflow_store, stats, tmp_path, capsys):
    client, experiment = mlflow_store
    run_model = audible_model(stats, amplitude_logit=-1.0)
    ckpt_dir = tmp_path / "logged"
    ckpt_dir.mkdir()
    save_payload(ckpt_dir / "model.pt", run_model, stats, hash="feedfacecafe")
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(ckpt_dir / "model.pt"), "model")
    client.set_terminated(run.info.run_id)

    loaded, payload, source = load_model(run_id=run.info.run_id)
    assert payload["hash"] == "feedfacecafe" and run.info.run_id in source
    assert source.startswith("model/model.pt")
    torch.testing.assert_close(loaded.decoder.head.bias, run_model.decoder.head.bias)

    sf.write(str(tmp_path / "in.wav"), tone(220.0), SR)
    code, out, err = run_cli(capsys, str(tmp_path / "in.wav"), "--run-id", run.info.run_id, "-o",
                             str(tmp_path / "o.wav"))
    assert code == 0, err
    assert f"MLflow run {run.info.run_id}" in out
    audio, _ = sf.read(str(tmp_path / "o.wav"))
    assert abs(peak_hz(audio) - 220.0) < 2.0

    # The same model as a registered version: --model-uri goes through the same fetch, even in a process whose
    # global MLflow URIs point at another store (a stage run earlier in it, say).
    import mlflow

    store = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")    # (it also rewrites the variable)
    os.environ["MLFLOW_TRACKING_URI"] = store                        # the fixture's monkeypatch restores it
    from mlflow.tracking import MlflowClient

    registry = MlflowClient(tracking_uri=store, registry_uri=store)    # explicit: the globals point elsewhere
    registry.create_registered_model("timbrelab-ddsp-cello")
    registry.create_model_version("timbrelab-ddsp-cello", f"runs:/{run.info.run_id}/model", run.info.run_id)
    code, out, err = run_cli(capsys, str(tmp_path / "in.wav"), "--model-uri", "models:/timbrelab-ddsp-cello/latest",
                             "-o", str(tmp_path / "o2.wav"))
    assert code == 0 and "models:/timbrelab-ddsp-cello/latest" in out, err
    assert sf.read(str(tmp_path / "o2.wav"))[0].tolist() == audio.tolist()
    code, _, err = run_cli(capsys, str(tmp_path / "in.wav"), "--model-uri", "models:/timbrelab-ddsp-cello/7",
                           "-o", str(tmp_path / "o3.wav"))
    assert code == 2 and "models:/timbrelab-ddsp-cello/7: cannot download" in err and err.count("\n") == 1
    assert not (tmp_path / "o3.wav").exists()


def test_unknown_run_id_and_a_run_without_model_are_clear_errors(mlflow_store, tmp_path, capsys):
    client, experiment = mlflow_store
    sf.write(str(tmp_path / "in.wav"), tone(220.0), SR)
    code, _, err = run_cli(capsys, str(tmp_path / "in.wav"), "--run-id", "0123abcd", "-o", str(tmp_path / "o.wav"))
    assert code == 2 and "MLflow run '0123abcd': not found" in err and err.count("\n") == 1
    empty = client.create_run(experiment)
    (tmp_path / "curves.csv").write_text("step,train_loss,val_loss\n")
    client.log_artifact(empty.info.run_id, str(tmp_path / "curves.csv"))     # a run with artifacts, none a model
    with pytest.raises(TimbrelabError, match=f"{empty.info.run_id}' has no model.pt artifact"):
        load_model(run_id=empty.info.run_id)
    assert not (tmp_path / "o.wav").exists()


# ------------------------------------------- issue #19 item 11: files lost or mislabelled by the CLI


def test_output_equal_to_the_input_is_refused_and_the_recording_kept(checkpoint, tmp_path, capsys, monkeypatch):
    source = tmp_path / "take.wav"
    sf.write(str(source), tone(220.0), SR)
    before = source.read_bytes()
    monkeypatch.chdir(tmp_path)
    for spelling in (str(source), "take.wav", "./take.wav", str(tmp_path / "." / "take.wav")):
        code, _, err = run_cli(capsys, str(source), "--checkpoint", str(checkpoint), "-o", spelling)
        assert code == 2 and err.count("\n") == 1 and "is the input" in err, err
        assert source.read_bytes() == before
    (tmp_path / "link.wav").hardlink_to(source)
    code, _, err = run_cli(capsys, str(source), "--checkpoint", str(checkpoint), "-o", str(tmp_path / "link.wav"))
    assert code == 2 and "is the input" in err and source.read_bytes() == before


@pytest.mark.parametrize("ext, fmt", [(".wav", "WAV"), (".flac", "FLAC"), (".ogg", "OGG"), (".MP3", "MP3")])
def test_output_is_written_in_the_format_its_extension_names(ext, fmt, checkpoint, tmp_path, capsys):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    sf.write(str(tmp_path / "in.wav"), tone(220.0), SR)
    out = tmp_path / f"take{ext}"
    code, _, err = run_cli(capsys, str(tmp_path / "in.wav"), "--checkpoint", str(checkpoint), "-o", str(out))
    assert code == 0, err
    info = sf.info(str(out))
    assert info.format == fmt and info.samplerate == SR and info.channels == 1
    assert abs(info.frames - SR) <= (1152 * 2 if fmt == "MP3" else 0)


def test_unsupported_output_extension_is_refused_listing_the_supported(checkpoint, tmp_path, capsys):
    sf.write(str(tmp_path / "in.wav"), tone(220.0), SR)
    for name in ("take.m4a", "take"):
        code, _, err = run_cli(capsys, str(tmp_path / "in.wav"), "--checkpoint", str(checkpoint),
                               "-o", str(tmp_path / name))
        assert code == 2 and err.count("\n") == 1 and ".wav, .flac, .ogg" in err, err
        assert not (tmp_path / name).exists()


def test_directories_and_empty_files_are_named_as_such(checkpoint, tmp_path, capsys):
    sf.write(str(tmp_path / "in.wav"), tone(220.0), SR)
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    cases = [((str(tmp_path / "adir"), "-o", str(tmp_path / "o.wav")), "is a directory"),
             ((str(tmp_path / "in.wav"), "-o", str(tmp_path / "adir")), "output is a directory"),
             ((str(tmp_path / "empty.wav"), "-o", str(tmp_path / "o.wav")), "empty file")]
    for args, needle in cases:
        code, _, err = run_cli(capsys, *args, "--checkpoint", str(checkpoint))
        assert code == 2 and err.count("\n") == 1 and needle in err and "unexpected" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "empty.wav", "in.wav"]
    assert list((tmp_path / "adir").iterdir()) == []


def test_transfer_file_checks_its_paths_too(model, payload, tmp_path):
    sf.write(str(tmp_path / "in.wav"), tone(220.0), SR)
    with pytest.raises(TimbrelabError, match="is the input"):
        transfer.transfer_file(tmp_path / "in.wav", tmp_path / "in.wav", model, payload)
    with pytest.raises(TimbrelabError, match="is a directory"):
        transfer.transfer_file(tmp_path, tmp_path / "o.wav", model, payload)
    transfer.transfer_file(tmp_path / "in.wav", tmp_path / "o.flac", model, payload)
    assert sf.info(str(tmp_path / "o.flac")).format == "FLAC"
