"""DDSP training on a tiny features tree of synthetic harmonic tones (CPU, tiny preset): training, resume,
the test-split judgement (baseline margin, pitch fidelity of the resynthesis) and the MLflow run / registry."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from timbrelab.dsp.loudness import a_weighted_loudness
from timbrelab.errors import TimbrelabError
from timbrelab.training import ddsp_eval
from timbrelab.inference.loading import fetch_checkpoint
from timbrelab.models import registry
from timbrelab.training.ddsp import config_hash, train
from timbrelab.training.ddsp_config import DDSPModelParams, DDSPTrainConfig
from timbrelab.training.loop import registered_model_name


def load_model(path):
    return registry.load(path, "ddsp")[0]

SR, HOP, CQT_HOP, N_BINS = 16000, 64, 256, 6
N = SR                                   # 1 s clips
F0S = {"train": [196.0, 220.0, 262.0, 330.0], "valid": [247.0, 294.0], "test": [208.0, 277.0]}
PITCH = {"estimator": "swift", "fmin_hz": 50.0, "fmax_hz": 2000.0, "voiced_threshold": 0.25}


def tone(f0: float, seed: int) -> np.ndarray:
    t = np.arange(N) / SR
    env = np.minimum(1.0, t / 0.05) * np.exp(-1.5 * t)
    rng = np.random.default_rng(seed)
    y = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 12) if k * f0 < SR / 2)
    return (0.3 * env * y + 0.003 * rng.standard_normal(N)).astype(np.float32)


def write_domain(root: Path) -> Path:
    domain = root / "cello"
    loud_all = []
    for split, f0s in F0S.items():
        d = domain / split
        d.mkdir(parents=True)
        audio = np.stack([tone(f0, i) for i, f0 in enumerate(f0s)])
        frames = 1 + N // HOP
        loud = np.stack([a_weighted_loudness(a, SR, HOP) for a in audio]).astype(np.float32)
        arrays = {"audio": np.round(audio * 32767).astype(np.int16),
                  "cqt": np.zeros((len(f0s), N_BINS, 1 + N // CQT_HOP), np.float16),
                  "f0_hz": np.repeat(np.array(f0s, np.float32)[:, None], frames, axis=1),
                  "f0_confidence": np.ones((len(f0s), frames), np.float32),
                  "loudness_db": loud}
        for name, array in arrays.items():
            np.save(d / f"{name}.npy", array)
        index = [{"row": i, "id": f"{split}{i}", "file": f"{split}{i}.wav", "seconds": 1.0} for i in range(len(f0s))]
        (d / "index.json").write_text(json.dumps(index))
        if split == "train":
            loud_all = loud
    stats = {"sample_rate": SR, "frame_hop": HOP, "cqt_hop": CQT_HOP, "hop_ratio": CQT_HOP // HOP, "n_bins": N_BINS,
             "cqt": {"mean": 0.0, "std": 1.0},
             "loudness_db": {"mean": float(loud_all.mean()), "std": float(loud_all.std())},
             "features_config": {"sample_rate": SR, "frame_hop": HOP, "pitch": PITCH},
             "computed_on": "train"}
    (domain / "stats.json").write_text(json.dumps(stats))
    return root


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return write_domain(tmp_path_factory.mktemp("features"))


def config(tmp_path: Path, **kw) -> DDSPTrainConfig:
    model = {"preset": "tiny", "lr": 3e-3, **kw.pop("model", {})}
    base = {"domain": "cello", "model": DDSPModelParams(**model), "batch_size": 4, "crop_seconds": 0.5, "max_steps": 30,
            "val_every_steps": 10, "baseline_steps": 20, "checkpoint_root": str(tmp_path / "cache")}
    return DDSPTrainConfig(**{**base, **kw})


def curve_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "curves.csv") as handle:
        return list(csv.DictReader(handle))


def test_train_writes_a_loadable_model_that_learned(features, tmp_path):
    out = tmp_path / "out"
    result = train(config(tmp_path), out, features_root=features, progress=False)
    payload = torch.load(out / "model.pt", weights_only=True)
    assert set(payload) >= {"state_dict", "model_config", "train_config", "stats"}
    model = load_model(out / "model.pt")
    f0 = torch.full((1, 50), 220.0)
    loud = torch.full((1, 50), -20.0)
    audio = model(f0, loud, 50 * HOP)
    assert audio.shape == (1, 50 * HOP) and torch.isfinite(audio).all()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 30
    assert metrics["val/loss_best"] < metrics["val/loss_initial"]
    assert metrics["gap"] == pytest.approx(metrics["val/loss_best"] - metrics["train/loss_final"])
    assert metrics["margin"] == pytest.approx(metrics["baseline/val_loss"] - metrics["val/loss_best"])
    assert result["val/loss_best"] == metrics["val/loss_best"]
    rows = curve_rows(out)
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)

    # Judged on the whole test clips: 2 clips x 250 frames, every frame voiced in these features.
    assert metrics["test/clips"] == 2 and metrics["test/f0_voiced_frames"] == 2 * (N // HOP)
    for key in ("test/loss", "baseline/test_loss", "test/margin", "test/f0_median_cents"):
        assert np.isfinite(metrics[key]), key
    assert metrics["test/margin"] == pytest.approx(metrics["baseline/test_loss"] - metrics["test/loss"])
    assert metrics["test/margin"] > 0.5          # measured 2.2: even 30 steps beat one average spectrum
    assert 0.9 <= metrics["test/f0_within_50c"] <= metrics["test/f0_output_voiced"] <= 1.0
    assert 0.0 <= metrics["baseline/test_f0_within_50c"] <= 1.0
    assert metrics["test/f0_median_cents"] < 10.0


def test_resume_continues_and_hash_dirs_are_checked(features, tmp_path):
    cfg = config(tmp_path, max_steps=10, baseline_steps=0)
    first = train(cfg, tmp_path / "a", features_root=features, progress=False)
    ckpt = Path(first["checkpoint_dir"]) / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 10
    second = train(replace(cfg, max_steps=20), tmp_path / "b", features_root=features, progress=False)
    assert second["hash"] == first["hash"] and second["steps"] == 20
    assert [int(r["step"]) for r in curve_rows(tmp_path / "b")] == [10, 20]   # step 10's row came from the ckpt
    assert torch.load(ckpt, weights_only=False)["global_step"] == 20
    # A finished run started again trains nothing and writes the same outputs (DVC hashes them).
    again = train(replace(cfg, max_steps=20), tmp_path / "b2", features_root=features, progress=False)
    assert again["steps"] == 20 and again["trainer/world_size"] == 1
    for name in ("metrics.json", "curves.csv", "model.pt"):
        assert (tmp_path / "b2" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    other = train(replace(cfg, model=replace(cfg.model, lr=1e-3)), tmp_path / "c", features_root=features, progress=False)
    assert other["hash"] != first["hash"] and other["steps"] == 10
    assert config_hash(cfg) != config_hash(replace(cfg, model=replace(cfg.model, lr=1e-3)))
    assert config_hash(cfg) == config_hash(replace(cfg, max_steps=99, num_workers=2))

    stored = Path(first["checkpoint_dir"]) / "config.json"
    tampered = json.loads(stored.read_text())
    tampered["train"]["lr"] = 0.5
    stored.write_text(json.dumps(tampered))
    with pytest.raises(TimbrelabError, match="does not match"):
        train(replace(cfg, max_steps=30), tmp_path / "d", features_root=features, progress=False)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A temporary sqlite store with the experiment and one open run, as the stage would have it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("timbrelab", artifact_location=(tmp_path / "art").as_uri())
    return client, exp, client.create_run(exp).info.run_id


def artifact_files(client, run_id: str, path: str | None = None) -> set[str]:
    files = set()
    for info in client.list_artifacts(run_id, path):
        files |= artifact_files(client, run_id, info.path) if info.is_dir else {info.path}
    return files


def test_metrics_land_in_the_given_mlflow_run(features, tmp_path, mlflow_store):
    client, exp, run_id = mlflow_store
    result = train(config(tmp_path, max_steps=20, baseline_steps=0), tmp_path / "out", features_root=features,
                   mlflow_run_id=run_id, progress=False)
    history = client.get_metric_history(run_id, "train/loss")
    assert len(history) >= 2 and all(np.isfinite(m.value) for m in history)
    assert client.get_metric_history(run_id, "val/loss")
    assert len(client.search_runs([exp])) == 1
    assert client.get_run(run_id).info.status == "RUNNING"     # the stage, not Lightning, ends it
    logged = client.get_run(run_id).data.metrics
    assert logged["test/margin"] == pytest.approx(result["test/margin"])
    assert logged["test/f0_within_50c"] == pytest.approx(result["test/f0_within_50c"])

    # Listening examples of both test clips, the model's folder, nothing written into the DVC output.
    files = artifact_files(client, run_id)
    stems = [f"resynthesis/{k:02d}_test{k}" for k in range(2)]
    assert files == {"model/model.pt"} | {f"{s}{end}" for s in stems for end in ("_input.wav", "_resynthesis.wav",
                                                                                  ".png")}
    local = Path(client.download_artifacts(run_id, "resynthesis", str(tmp_path / "dl")))
    audio, sr = sf.read(local / "00_test0_resynthesis.wav")
    assert sr == SR and audio.shape == (N,) and np.abs(audio).max() > 0.01
    assert (local / "00_test0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["curves.csv", "metrics.json", "model.pt"]

    # One registry version, pointing at this run's model folder, fetchable and loadable.
    name = registered_model_name("ddsp", "cello")
    assert result["registered_model"] == f"{name}/1"
    (version,) = client.search_model_versions(f"name='{name}'")
    assert version.run_id == run_id and version.source == f"runs:/{run_id}/model"
    assert version.tags["config_hash"] == result["hash"]
    assert float(version.tags["test/margin"]) == pytest.approx(result["test/margin"], rel=1e-5)
    assert client.get_run(run_id).data.tags["registered_model"] == f"{name}/1"
    fetched, _ = fetch_checkpoint(f"models:/{name}/latest", tmp_path / "fetched")
    assert fetched.read_bytes() == (tmp_path / "out" / "model.pt").read_bytes()
    assert isinstance(load_model(fetched), torch.nn.Module)


def test_a_registry_failure_warns_and_keeps_the_training(features, tmp_path, mlflow_store, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client, _, run_id = mlflow_store

    def refuse(*args, **kwargs):
        raise MlflowException("registry is read-only")

    monkeypatch.setattr(MlflowClient, "create_model_version", refuse)
    with pytest.warns(RuntimeWarning, match="could not register.*registry is read-only"):
        result = train(config(tmp_path, max_steps=10, baseline_steps=0), tmp_path / "out", features_root=features,
                       mlflow_run_id=run_id, progress=False)
    assert result["registered_model"] is None
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 10
    assert "model/model.pt" in artifact_files(client, run_id)


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_a_missing_or_empty_test_split_fails_before_training(features, tmp_path, damage):
    copy = tmp_path / "features"
    shutil.copytree(features, copy)
    test_dir = copy / "cello" / "test"
    if damage == "missing":
        shutil.rmtree(test_dir)
    else:
        (test_dir / "index.json").write_text("[]")
    cfg = config(tmp_path)
    with pytest.raises(TimbrelabError, match=f"non-empty test split at {test_dir}"):
        train(cfg, tmp_path / "out", features_root=copy, progress=False)
    assert not Path(cfg.checkpoint_root).exists() and not (tmp_path / "out").exists()


def _tracks_of(resynthesis: np.ndarray, f0: float) -> dict:
    """pitch_agreement of one resynthesised clip against features saying: voiced at ``f0`` throughout."""
    frames = N // HOP
    batch = {"f0_hz": torch.full((1, frames), f0), "f0_confidence": torch.ones(1, frames)}
    stats = {"sample_rate": SR, "frame_hop": HOP, "features_config": {"pitch": PITCH}}
    tracks = ddsp_eval.resynthesis_tracks([torch.from_numpy(resynthesis[None, :frames * HOP])], [batch], stats)
    return ddsp_eval.pitch_agreement(tracks)


def test_pitch_agreement_tells_right_from_wrong_pitch():
    right = _tracks_of(tone(220.0, 0), 220.0)
    assert right["f0_within_50c"] > 0.9 and right["f0_median_cents"] < 10
    sharp = _tracks_of(tone(220.0 * 2 ** (100 / 1200), 0), 220.0)      # a semitone off: voiced, but wrong
    assert sharp["f0_output_voiced"] > 0.9 and sharp["f0_within_50c"] < 0.05
    assert 90 < sharp["f0_median_cents"] < 110
    silent = _tracks_of(np.zeros(N, np.float32), 220.0)                 # lost voicing counts as a miss
    assert silent["f0_within_50c"] == 0.0 and silent["f0_output_voiced"] == 0.0
    assert silent["f0_median_cents"] is None and silent["f0_voiced_frames"] == N // HOP


def test_pitch_settings_follow_the_features():
    assert ddsp_eval.pitch_settings({"features_config": {"pitch": PITCH}}) == PITCH
    assert ddsp_eval.pitch_settings({})["voiced_threshold"] == 0.5
