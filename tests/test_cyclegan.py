"""The CycleGAN on log-CQT (issue #13): fully convolutional over time, chunked translation equal to the whole one
without a seam, losses that vanish for identity generators, a step that moves all four networks, kill/resume
equal to an uninterrupted run, one-line errors for bad data before training, and transfer of a file."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.models.cyclegan import PRESETS, Discriminator, Generator, translate_chunked
from timbrelab.training.cyclegan import CycleGANLightningModule, check_domains, cqt_profiles, pitch_kept, train
from timbrelab.training.cyclegan_config import CycleGANTrainConfig

SR, HOP, CQT_HOP, N_BINS, BPO = 16000, 64, 256, 48, 12
N = CQT_HOP * 47                        # 48 CQT frames per clip
CQT = {"hop_length": CQT_HOP, "fmin_hz": 65.406, "bins_per_octave": BPO, "n_bins": N_BINS, "log_floor": 1e-5,
       "griffinlim_iters": 2}
PITCH = {"estimator": "swift", "fmin_hz": 50.0, "fmax_hz": 2000.0, "voiced_threshold": 0.25}


def write_cqt_domain(root: Path, name: str, harmonics: int, clips: int = 4, **cqt_changes) -> None:
    """A feature domain whose log-CQT shows ``harmonics`` partials of a few pitches (bins 12 apart per octave)."""
    rng = np.random.default_rng(len(name) + harmonics)
    frames = 1 + N // CQT_HOP
    for split in ("train", "valid", "test"):
        d = root / name / split
        d.mkdir(parents=True)
        cqt = np.full((clips, N_BINS, frames), np.log(1e-5), np.float32) + rng.normal(0, 0.1, (clips, N_BINS, frames))
        for i in range(clips):
            base = int(rng.integers(2, 12))
            for h, offset in enumerate((0, 12, 19, 24, 28)[:harmonics]):
                cqt[i, base + offset] = -1.0 - h
        n_frames = 1 + N // HOP
        arrays = {"audio": np.zeros((clips, N), np.int16), "cqt": cqt.astype(np.float16),
                  "f0_hz": np.full((clips, n_frames), 110.0, np.float32),
                  "f0_confidence": np.ones((clips, n_frames), np.float32),
                  "loudness_db": np.full((clips, n_frames), -30.0, np.float32)}
        for key, array in arrays.items():
            np.save(d / f"{key}.npy", array)
        (d / "index.json").write_text(json.dumps([{"row": i, "id": f"{name}{split}{i}"} for i in range(clips)]))
    stats = {"sample_rate": SR, "frame_hop": HOP, "cqt_hop": CQT_HOP, "n_bins": N_BINS,
             "cqt": {"mean": -8.0, "std": 3.0},
             "features_config": {"sample_rate": SR, "frame_hop": HOP, "cqt": {**CQT, **cqt_changes}, "pitch": PITCH}}
    (root / name / "stats.json").write_text(json.dumps(stats))


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("features")
    write_cqt_domain(root, "sine", harmonics=1)
    write_cqt_domain(root, "cello", harmonics=5)
    return root


def config(tmp_path: Path, **kw) -> CycleGANTrainConfig:
    base = {"domain_a": "sine", "domain_b": "cello", "model": {"preset": "tiny"}, "crop_frames": 16, "max_steps": 6,
            "val_every_steps": 3, "checkpoint_root": str(tmp_path / "cache"), "pool_size": 2}
    return CycleGANTrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ model

@pytest.mark.parametrize("generator", ["2d", "212d"])
@pytest.mark.parametrize("upsample", ["nearest", "transposed"])
def test_any_frame_count_in_gives_the_same_count_out(generator, upsample):
    gen = Generator(PRESETS["tiny"].replace(generator=generator, upsample=upsample)).eval()
    for frames in (1, 2, 3, 5, 17, 64, 101):
        x = torch.randn(2, 1, 156, frames)
        assert gen(x).shape == x.shape


@pytest.mark.parametrize("kind, shape", [("full", (1, 1, 1, 8)), ("patch", (1, 1, 39, 8))])
def test_the_full_range_discriminator_scores_every_bin_at_once(kind, shape):
    assert Discriminator(PRESETS["tiny"].replace(discriminator=kind))(torch.randn(1, 1, 156, 32)).shape == shape


@pytest.mark.parametrize("generator", ["2d", "212d"])
def test_chunked_translation_equals_the_whole_and_has_no_seam(generator):
    torch.manual_seed(0)
    gen = Generator(PRESETS["tiny"].replace(generator=generator)).eval()
    x = torch.randn(1, 1, 156, 700)
    with torch.no_grad():
        whole = gen(x)
    chunked = translate_chunked(gen, x, chunk_frames=128, crossfade_frames=8)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-4)   # the context covers the receptive field
    # No seam: frame-to-frame change at the chunk boundaries is no larger than anywhere in the whole translation.
    step = (chunked[..., 1:] - chunked[..., :-1]).abs().amax(dim=(0, 1, 2))
    whole_step = (whole[..., 1:] - whole[..., :-1]).abs().amax(dim=(0, 1, 2))
    for boundary in range(128, 700, 128):
        assert step[boundary - 9: boundary + 9].max() <= whole_step.max() + 1e-4


def test_the_context_is_really_needed():
    """Without context, chunks differ from the whole at their edges: the equality above is not vacuous."""
    gen = Generator(PRESETS["tiny"]).eval()
    x = torch.randn(1, 1, 156, 256)
    with torch.no_grad():
        whole = gen(x)
        halves = torch.cat([gen(x[..., :128]), gen(x[..., 128:])], dim=-1)
    assert (halves - whole).abs()[..., 120:136].max() > 1e-3


# ----------------------------------------------------------------------------------------------- losses

class Identity(torch.nn.Module):
    def forward(self, x, mask=None):
        return x


def test_identity_generators_make_the_cycle_and_identity_losses_exactly_zero(tmp_path):
    module = CycleGANLightningModule(PRESETS["tiny"], config(tmp_path), None)
    module.model.a_to_b, module.model.b_to_a = Identity(), Identity()
    a, b = torch.randn(2, 1, 156, 16), torch.randn(2, 1, 156, 16)
    losses = module.generator_losses(a, b, step=0)
    assert losses["cycle"].item() == 0.0 and losses["identity"].item() == 0.0
    real = CycleGANLightningModule(PRESETS["tiny"], config(tmp_path), None).generator_losses(a, b, step=0)
    assert real["cycle"].item() > 0 and real["identity"].item() > 0


def test_the_identity_weight_decays_to_zero_or_stays_constant(tmp_path):
    loss = config(tmp_path).loss
    decaying = replace(loss, identity_weight=5.0, identity_decay_steps=100)
    assert [decaying.identity_at(s) for s in (0, 50, 100, 200)] == [5.0, 2.5, 0.0, 0.0]
    constant = replace(decaying, identity_schedule="constant")
    assert {constant.identity_at(s) for s in (0, 50, 100, 200)} == {5.0}


@pytest.mark.parametrize("adversarial", ["wgan_gp", "lsgan"])
@pytest.mark.parametrize("extra", [{}, {"two_step": True}, {"mask": True}])
def test_one_training_step_changes_all_four_networks(tmp_path, adversarial, extra):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    cfg = config(tmp_path, loss={"adversarial": adversarial, "two_step": extra.get("two_step", False)})
    module = CycleGANLightningModule(PRESETS["tiny"].replace(mask_input=extra.get("mask", False)), cfg, None)
    nets = {"a_to_b": module.model.a_to_b, "b_to_a": module.model.b_to_a, "d_a": module.d_a, "d_b": module.d_b}
    if cfg.loss.two_step:
        nets.update(d_a2=module.d_a2, d_b2=module.d_b2)
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()}
    batch = {"a": torch.randn(1, 1, 156, 16), "b": torch.randn(1, 1, 156, 16)}
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    for name, net in nets.items():
        moved = [not torch.equal(p0, p) for p0, p in zip(before[name], net.parameters())]
        assert all(moved), f"{name}: {moved.count(False)} of {len(moved)} parameter tensors did not move"


# ----------------------------------------------------------------------------------------------- training

def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def trained(features, tmp_path_factory) -> tuple[Path, dict, tuple]:
    """One uninterrupted tiny training logged to a temporary MLflow store: (its folder, its metrics, (client,
    run id))."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        run_id = client.create_run(client.create_experiment("timbrelab", (root / "art").as_uri())).info.run_id
        metrics = train(config(root), root / "out", features_root=features, mlflow_run_id=run_id, progress=False)
    return root, metrics, (client, run_id)


def test_every_loss_the_cqt_images_and_a_registry_version_land_in_the_stage_run(trained):
    _, metrics, (client, run_id) = trained
    for key in ("train/g_adv", "train/cycle", "train/identity", "train/d_loss", "val/cycle", "val/frechet_profile"):
        assert client.get_metric_history(run_id, key), key
    images = [f.path for f in client.list_artifacts(run_id, "cqt_images")]
    assert images == ["cqt_images/step_0000003.png", "cqt_images/step_0000006.png"]
    assert metrics["registered_model"] == "timbrelab-cyclegan-sine-cello/1"
    assert sorted(p.name for p in (trained[0] / "out").iterdir()) == ["curves.csv", "metrics.json", "model.pt",
                                                                      "untrained.pt"]


def test_training_writes_both_models_and_curves_and_resumes_after_a_kill_to_the_same_weights(
        features, trained, tmp_path, monkeypatch):
    whole_root, whole, _ = trained
    assert whole["steps"] == 6 and whole["best_step"] in (3, 6)
    rows = (whole_root / "out/curves.csv").read_text().splitlines()
    assert rows[0].startswith("step,train_g_adv,train_cycle") and [r.split(",")[0] for r in rows[1:]] == ["3", "6"]
    assert np.isfinite(whole["test/frechet_profile"]) and np.isfinite(whole["identity/test_frechet_profile"])
    untrained = _state(whole_root / "out/untrained.pt")
    assert any(not torch.equal(untrained[k], v) for k, v in _state(whole_root / "out/model.pt").items())

    from timbrelab.errors import Terminated

    step = CycleGANLightningModule.training_step

    def killed_at_batch_4(self, batch, batch_idx):
        if self.global_step == 2 * 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(CycleGANLightningModule, "training_step", killed_at_batch_4)
    with pytest.raises(Terminated, match="stopped by SIGTERM at step 5"):
        train(config(tmp_path / "killed"), tmp_path / "killed/out", features_root=features, progress=False)
    monkeypatch.setattr(CycleGANLightningModule, "training_step", step)
    resumed = train(config(tmp_path / "killed"), tmp_path / "killed/out", features_root=features, progress=False)
    assert resumed["steps"] == 6
    for name in ("out/model.pt", "out/untrained.pt", "last"):
        paths = [next((run / "cache").glob("*/last.ckpt")) if name == "last" else run / name
                 for run in (whole_root, tmp_path / "killed")]
        a, b = (_state(p) for p in paths)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name   # all four networks at 6
    assert (whole_root / "out/curves.csv").read_text() == (tmp_path / "killed/out/curves.csv").read_text()


def test_transfer_cli_renders_a_file_through_the_cyclegan(trained, tmp_path, capsys):
    from timbrelab import cli
    from timbrelab.audio import load_audio, save_wav

    t = np.arange(SR * 2) / SR
    save_wav(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    code = cli.main(["transfer", "--model", "cyclegan", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.wav"),
                     "--checkpoint", str(trained[0] / "out/model.pt")])
    out = capsys.readouterr().out
    assert code == 0 and "through cyclegan (cello" in out
    audio, sr = load_audio(tmp_path / "out.wav", sample_rate=None)
    assert sr == SR and audio.shape[0] == t.shape[0] and 0 < np.abs(audio).max() <= 1.0
    code = cli.main(["transfer", "--model", "cyclegan", str(tmp_path / "in.wav"), "-o", str(tmp_path / "o2.wav"),
                     "--checkpoint", str(trained[0] / "out/curves.csv")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "curves.csv" in err


def test_bad_domains_fail_in_one_line_before_training(features, tmp_path):
    with pytest.raises(ConfigError, match=r"crop_frames=400 is longer than the clips of 'sine' \(48 CQT frames\)"):
        check_domains(config(tmp_path, crop_frames=400), features)
    write_cqt_domain(tmp_path, "sine", harmonics=1)
    write_cqt_domain(tmp_path, "cello", harmonics=5, fmin_hz=32.7)
    with pytest.raises(ConfigError, match=r"different CQT settings \{'fmin_hz': \(65.406, 32.7\)\}"):
        check_domains(config(tmp_path), tmp_path)
    nan = tmp_path / "nan"
    write_cqt_domain(nan, "sine", harmonics=1)
    write_cqt_domain(nan, "cello", harmonics=5)
    cqt = np.load(nan / "cello/valid/cqt.npy")
    cqt[1, 3, 4] = np.nan
    np.save(nan / "cello/valid/cqt.npy", cqt)
    with pytest.raises(TimbrelabError, match=r"cello/valid/cqt.npy: clip row 1 holds NaN"):
        check_domains(config(tmp_path), nan)
    with pytest.raises(TimbrelabError, match="no such feature domain for train_cyclegan.domain_b"):
        check_domains(config(tmp_path, domain_b="violin"), features)
    with pytest.raises(ConfigError, match="train_cyclegan.loss.adversarial='wgan' is not one of"):
        config(tmp_path, loss={"adversarial": "wgan"})


def test_cqt_profiles_drop_pitch_and_level():
    """A harmonic spectrum moved by an octave and made quieter has the same profile: only timbre is left."""
    frame = np.full((48, 1), -10.0)
    frame[[5, 17, 24], 0] = [-1.0, -3.0, -4.0]
    moved = np.full((48, 1), -12.0)                  # an octave (12 bins) up, 2 nepers quieter throughout
    moved[[17, 29, 36], 0] = [-3.0, -5.0, -6.0]
    a, b = cqt_profiles(frame[None], threshold=-8.0), cqt_profiles(moved[None], threshold=-8.0)
    assert a.shape == (1, 60)
    np.testing.assert_allclose(a[:, 12:40], b[:, 12:40])


def test_pitch_kept_reads_the_lowest_strong_partial():
    """A sine's bin, with cello-like partials added above it, is kept; moved down an octave it is not."""
    source = np.full((1, 48, 10), -10.0)
    source[0, 10] = -1.0
    richer = source.copy()
    richer[0, [22, 29, 34]] = np.array([-0.5, -1.5, -2.0])[:, None]   # louder harmonics above the same fundamental
    lower = source.copy()
    lower[0, 10], lower[0, 0] = -10.0, -1.0                # the note an octave (12 bins here) and more lower
    assert pitch_kept(source, source, threshold=-5.0) == pitch_kept(source, richer, threshold=-5.0) == 1.0
    assert pitch_kept(source, lower, threshold=-5.0) == 0.0


def test_a_checkpoint_on_another_cqt_grid_is_refused_by_the_evaluation(trained):
    from timbrelab.config import FeaturesConfig, validate
    from timbrelab.inference.cyclegan_transfer import check_features_match

    payload = torch.load(trained[0] / "out/model.pt", weights_only=True)
    same = validate({"sample_rate": SR, "frame_hop": HOP, "cqt": CQT, "pitch": PITCH}, FeaturesConfig, "test")
    check_features_match(payload, same, "model.pt")
    inverted_longer = validate({"sample_rate": SR, "frame_hop": HOP, "cqt": {**CQT, "griffinlim_iters": 64},
                                "pitch": PITCH}, FeaturesConfig, "test")
    check_features_match(payload, inverted_longer, "model.pt")   # the inversion is not the grid
    other = validate({"sample_rate": SR, "frame_hop": HOP, "cqt": {**CQT, "bins_per_octave": 24, "n_bins": 96},
                      "pitch": PITCH}, FeaturesConfig, "test")
    with pytest.raises(ConfigError, match=r"^model.pt: trained on other CQT settings .*'n_bins': \(48, 96\).* `dvc repro"):
        check_features_match(payload, other, "model.pt")
