"""DDSP training on a tiny features tree of synthetic harmonic tones (CPU, tiny preset)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from timbrelab.dsp.loudness import a_weighted_loudness
from timbrelab.errors import TimbrelabError
from timbrelab.training.ddsp import DDSPTrainConfig, config_hash, load_model, train

SR, HOP, CQT_HOP, N_BINS = 16000, 64, 256, 6
N = SR                                   # 1 s clips
F0S = {"train": [196.0, 220.0, 262.0, 330.0], "valid": [247.0, 294.0]}


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
             "computed_on": "train"}
    (domain / "stats.json").write_text(json.dumps(stats))
    return root


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return write_domain(tmp_path_factory.mktemp("features"))


def config(tmp_path: Path, **kw) -> DDSPTrainConfig:
    base = {"domain": "cello", "preset": "tiny", "lr": 3e-3, "batch_size": 4, "crop_seconds": 0.5, "max_steps": 30,
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


def test_resume_continues_and_hash_dirs_are_checked(features, tmp_path):
    cfg = config(tmp_path, max_steps=10, baseline_steps=0)
    first = train(cfg, tmp_path / "a", features_root=features, progress=False)
    ckpt = Path(first["checkpoint_dir"]) / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 10
    second = train(replace(cfg, max_steps=20), tmp_path / "b", features_root=features, progress=False)
    assert second["hash"] == first["hash"] and second["steps"] == 20
    assert [int(r["step"]) for r in curve_rows(tmp_path / "b")] == [10, 20]   # step 10's row came from the ckpt
    assert torch.load(ckpt, weights_only=False)["global_step"] == 20

    other = train(replace(cfg, lr=1e-3), tmp_path / "c", features_root=features, progress=False)
    assert other["hash"] != first["hash"] and other["steps"] == 10
    assert config_hash(cfg) != config_hash(replace(cfg, lr=1e-3))
    assert config_hash(cfg) == config_hash(replace(cfg, max_steps=99, num_workers=2))

    stored = Path(first["checkpoint_dir"]) / "config.json"
    tampered = json.loads(stored.read_text())
    tampered["train"]["lr"] = 0.5
    stored.write_text(json.dumps(tampered))
    with pytest.raises(TimbrelabError, match="does not match"):
        train(replace(cfg, max_steps=30), tmp_path / "d", features_root=features, progress=False)


def test_metrics_land_in_the_given_mlflow_run(features, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("timbrelab", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    train(config(tmp_path, max_steps=20, baseline_steps=0), tmp_path / "out", features_root=features,
          mlflow_run_id=run.info.run_id, progress=False)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 2 and all(np.isfinite(m.value) for m in history)
    assert client.get_metric_history(run.info.run_id, "val/loss")
    assert len(client.search_runs([exp])) == 1
    assert client.get_run(run.info.run_id).info.status == "RUNNING"     # the stage, not Lightning, ends it
