"""The timbre classifier on a tiny synthetic features tree: three domains whose log-CQT spectra differ only in
their harmonic envelope (all harmonics, odd harmonics, nearly a sine), at random levels and with the test
clips at pitches the training never saw. CPU, one thread, a few seconds."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.evaluation import classifier
from timbrelab.evaluation.classifier import (
    MODEL_TYPE,
    ClassifierConfig,
    clip_acceptance,
    clip_embeddings,
    load_classifier,
    patch_starts,
    predict_clip,
    save_classifier,
    train_classifier,
)

SR, HOP, CQT_HOP, N_BINS, BPO = 16000, 64, 256, 72, 12
N = SR                                  # 1 s clips: 1 + 16000 // 256 = 63 CQT columns
COLUMNS = 1 + N // CQT_HOP
PATCH = 16                              # starts 0, 16, 32 and 47 (the last ends on column 62): 4 per clip
PATCHES_PER_CLIP = 4
ENVELOPES = {                           # harmonic number -> amplitude
    "bright": {k: 1.0 / k for k in range(1, 11)},
    "hollow": {k: 1.0 / k for k in range(1, 11, 2)},
    "pure": {1: 1.0, 2: 0.03},
}
CLIPS = {"train": {"bright": 6, "hollow": 6, "pure": 3}, "test": {"bright": 3, "hollow": 2, "pure": 3}}
# Fundamental's bin at the clip's start: train and test pitches never coincide.
START_BINS = {"train": [0.0, 4.0, 8.0, 12.0, 16.0, 20.0], "test": [2.0, 10.0, 18.0]}
CFG = ClassifierConfig(patch_frames=PATCH, channels=(8, 16, 16), embed_dim=16, batch_size=24, steps=120, lr=3e-3)


def log_cqt(envelope: dict[int, float], start_bin: float, rng: np.random.Generator) -> np.ndarray:
    """(N_BINS, COLUMNS) log-magnitude of a harmonic tone gliding up to 3 bins, at a random level."""
    bins = np.arange(N_BINS)[:, None]
    f0_bin = start_bin + np.linspace(0.0, rng.uniform(-3.0, 3.0), COLUMNS)[None, :]
    mag = sum(a * np.exp(-0.5 * ((bins - f0_bin - BPO * np.log2(k)) / 0.7) ** 2) for k, a in envelope.items())
    level = 10.0 ** rng.uniform(-1.5, 0.0)
    return np.log(level * mag + 1e-3 * rng.uniform(0.5, 1.5, mag.shape)).astype(np.float16)


def write_split(split_dir: Path, domain: str, split: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = CLIPS[split][domain]
    starts = START_BINS[split]
    cqt = np.stack([log_cqt(ENVELOPES[domain], starts[i % len(starts)] + rng.uniform(-0.5, 0.5), rng)
                    for i in range(n)])
    frames = 1 + N // HOP
    arrays = {"audio": np.zeros((n, N), np.int16), "cqt": cqt,
              "f0_hz": np.full((n, frames), 220.0, np.float32), "f0_confidence": np.ones((n, frames), np.float32),
              "loudness_db": np.full((n, frames), -30.0, np.float32)}
    split_dir.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(split_dir / f"{name}.npy", array)
    index = [{"row": i, "id": f"{domain}_{split}{i}", "file": f"{domain}_{split}{i}.wav"} for i in range(n)]
    (split_dir / "index.json").write_text(json.dumps(index))
    return cqt


def write_tree(root: Path) -> Path:
    for d, domain in enumerate(ENVELOPES):
        train = write_split(root / domain / "train", domain, "train", seed=10 * d)
        write_split(root / domain / "test", domain, "test", seed=10 * d + 1)
        values = train.astype(np.float64)
        stats = {"sample_rate": SR, "frame_hop": HOP, "cqt_hop": CQT_HOP, "hop_ratio": CQT_HOP // HOP,
                 "n_bins": N_BINS, "fmin_hz": 65.406, "bins_per_octave": BPO, "log_floor": 1e-3,
                 "cqt": {"mean": float(values.mean()), "std": float(values.std())}, "computed_on": "train"}
        (root / domain / "stats.json").write_text(json.dumps(stats))
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def trained(features):
    return train_classifier(features, list(ENVELOPES), CFG, seed=0)


def test_patch_starts_cover_every_column_once_or_twice():
    assert patch_starts(COLUMNS, PATCH) == [0, 16, 32, 47]
    assert patch_starts(251, 32) == [0, 32, 64, 96, 128, 160, 192, 219]
    assert patch_starts(64, 32) == [0, 32]
    assert patch_starts(32, 32) == [0]
    covered = np.zeros(251, int)
    for s in patch_starts(251, 32):
        covered[s:s + 32] += 1
    assert covered.min() == 1 and covered.max() == 2
    with pytest.raises(ValueError, match="shorter than one patch"):
        patch_starts(31, 32)
    # Overlapping patches (the Fréchet distance's embeddings): every hop columns, the last one still ends the clip.
    assert patch_starts(251, 32, hop=8) == [*range(0, 220, 8), 219]
    assert patch_starts(64, 32, hop=32) == patch_starts(64, 32)
    with pytest.raises(ValueError, match="at least 1 column"):
        patch_starts(64, 32, hop=0)


def test_tells_the_domains_apart_at_unseen_pitches(trained):
    model, metrics = trained
    assert metrics["domains"] == list(ENVELOPES) == list(model.domains)
    confusion = np.array(metrics["test/confusion"])
    expected_rows = [CLIPS["test"][d] * PATCHES_PER_CLIP for d in ENVELOPES]
    assert confusion.sum(axis=1).tolist() == expected_rows
    assert metrics["test/patches"] == dict(zip(ENVELOPES, expected_rows))
    assert metrics["test/clips"] == CLIPS["test"]
    assert metrics["test/accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    for i, domain in enumerate(ENVELOPES):
        assert metrics["test/per_domain_accuracy"][domain] == pytest.approx(confusion[i, i] / expected_rows[i])
    assert metrics["test/accuracy"] >= 0.9
    assert metrics["test/balanced_accuracy"] >= 0.9
    assert metrics["train/loss_final"] < 0.3


def test_training_is_deterministic_for_a_seed(features, trained):
    model, metrics = trained
    torch.manual_seed(1234)   # a state that training under seed 0 could not leave behind by chance
    rng_before = torch.get_rng_state()
    again, metrics_again = train_classifier(features, list(ENVELOPES), CFG, seed=0)
    assert torch.equal(rng_before, torch.get_rng_state()), "training must not consume the global torch RNG"
    state, state_again = model.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert metrics_again == metrics
    short = replace(CFG, steps=5)
    seed0, seed1 = (train_classifier(features, list(ENVELOPES), short, seed=s)[0] for s in (0, 1))
    assert not torch.equal(seed0.state_dict()["head.weight"], seed1.state_dict()["head.weight"])


def test_embeddings_have_the_documented_shape_and_ignore_level(trained):
    model, _ = trained
    patches = torch.randn(5, N_BINS, PATCH) - 4.0
    emb = model.eval().embed(patches)
    assert emb.shape == (5, CFG.embed_dim)
    assert torch.allclose(model.embed(patches[:, None]), emb)
    # A gain is a constant in log-CQT: the patch-mean removal makes it vanish.
    assert torch.allclose(model.embed(patches + 2.5), emb, atol=1e-4)
    assert model(patches).shape == (5, len(ENVELOPES))
    with pytest.raises(ValueError, match=f"\\(B, {N_BINS}, T\\)"):
        model.embed(torch.zeros(5, N_BINS - 1, PATCH))


def test_clip_acceptance_is_the_fraction_of_patches_taken_as_the_target(features, trained):
    model, _ = trained
    cqt = np.load(features / "hollow" / "test" / "cqt.npy")[0]
    predicted = predict_clip(model, cqt)
    assert predicted.shape == (PATCHES_PER_CLIP,)
    hollow = model.domains.index("hollow")
    assert clip_acceptance(model, cqt, "hollow") == pytest.approx(float((predicted == hollow).float().mean()))
    assert clip_acceptance(model, cqt, "hollow") >= 0.75
    assert clip_acceptance(model, cqt, "pure") <= 0.25
    assert clip_embeddings(model, cqt).shape == (PATCHES_PER_CLIP, CFG.embed_dim)
    with pytest.raises(ConfigError, match="'cello' is not one of"):
        clip_acceptance(model, cqt, "cello")


def test_checkpoint_round_trip_with_weights_only(tmp_path, trained):
    model, metrics = trained
    path = tmp_path / "classifier" / "model.pt"
    save_classifier(model, path, train_config=CFG, seed=0, metrics=metrics)
    payload = torch.load(path, weights_only=True)
    assert payload["model_type"] == MODEL_TYPE
    assert payload["stats"]["n_bins"] == N_BINS and payload["stats"]["cqt_hop"] == CQT_HOP
    loaded, payload = load_classifier(path)
    assert loaded.domains == model.domains and not loaded.training
    assert payload["train_config"]["channels"] == list(CFG.channels)
    assert payload["metrics"]["test/confusion"] == metrics["test/confusion"]
    patches = torch.randn(3, N_BINS, PATCH)
    assert torch.equal(loaded(patches), model.eval()(patches))
    save_classifier(model, tmp_path / "again.pt", train_config=CFG, seed=0, metrics=metrics)
    assert (tmp_path / "again.pt").read_bytes() == path.read_bytes()

    other = tmp_path / "ddsp.pt"
    torch.save({"model_type": "ddsp", "format": 1, "state_dict": {}, "model_config": {}}, other)
    with pytest.raises(TimbrelabError, match=re.escape(f"{other}: a 'ddsp' checkpoint")):
        load_classifier(other)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TimbrelabError, match="not a timbrelab model checkpoint"):
        load_classifier(tmp_path / "list.pt")
    with pytest.raises(TimbrelabError, match="no such checkpoint; train one with `dvc repro train_classifier`"):
        load_classifier(tmp_path / "missing.pt")


def test_a_missing_split_fails_before_training_and_names_its_path(tmp_path, features, monkeypatch):
    root = tmp_path / "features"
    shutil.copytree(features, root)
    shutil.rmtree(root / "hollow" / "test")
    monkeypatch.setattr(classifier, "_fit", lambda *a, **k: pytest.fail("training started before the check"))
    with pytest.raises(TimbrelabError, match=re.escape(f"{root / 'hollow' / 'test'}: no such feature split")):
        train_classifier(root, list(ENVELOPES), CFG)
    with pytest.raises(TimbrelabError, match=re.escape(f"{root / 'cello' / 'stats.json'}: no such stats file")):
        train_classifier(root, ["bright", "cello"], CFG)


def test_domains_on_different_cqt_grids_are_refused(tmp_path, features, monkeypatch):
    root = tmp_path / "features"
    shutil.copytree(features, root)
    stats_path = root / "pure" / "stats.json"
    stats_path.write_text(json.dumps({**json.loads(stats_path.read_text()), "bins_per_octave": 24}))
    monkeypatch.setattr(classifier, "_fit", lambda *a, **k: pytest.fail("training started before the check"))
    with pytest.raises(ConfigError, match=re.escape(f"{stats_path} and {root / 'bright' / 'stats.json'} differ in "
                                                    "['bins_per_octave']")):
        train_classifier(root, list(ENVELOPES), CFG)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown keys \\['stepz'\\]"):
        ClassifierConfig.from_dict({"stepz": 10})
    assert ClassifierConfig.from_dict({"channels": [4, 8]}).channels == (4, 8)
    with pytest.raises(ConfigError, match="classifier.lr"):
        ClassifierConfig(lr=0.0)
    with pytest.raises(ConfigError, match="at least two distinct domains"):
        classifier.TimbreClassifier(["cello", "cello"], N_BINS)
