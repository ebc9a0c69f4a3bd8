"""Train the CycleGAN on log-CQT (:mod:`timbrelab.models.cyclegan`) between two feature domains with Lightning.

* :class:`CycleGANLightningModule`: manual optimisation of two generators and two discriminators (four with
  the two-step adversarial loss): LSGAN or WGAN-GP, cycle and identity losses with the identity weight's
  schedule, filling in frames, an image pool of past fakes per domain, learning rates that decay linearly to 0,
  gradient-norm clipping. Every random draw (masks, pool, penalty mixes) comes from the module's own generator,
  whose state rides in the checkpoint with the pools, so a resumed run continues exactly.
* **Which checkpoint is kept**: the lowest ``val/frechet_profile`` — the Fréchet distance between the pitch- and
  level-aligned CQT profiles (:func:`cqt_profiles`) of the translated valid-split A clips and of the real
  valid-split B clips. It is hand-made (no network), so the
  generator cannot learn to fool it the way it can fool a CQT-patch CNN, and it is not the evaluation's judge;
  unlike the cycle loss it says whether the timbre moved. docs/cyclegan.md argues the choice.
* :func:`train`: checks the data (both domains on one CQT grid, enough frames for a crop, no NaN) before
  anything runs, fits through :class:`~timbrelab.training.loop.TrainingRun` (cache, resume, SIGTERM, MLflow),
  judges the kept model on the test split and writes ``model.pt`` (both generators), ``metrics.json``,
  ``curves.csv``. Validation logs CQT images (A, A->B, A->B->A, B, B->A) to the stage's MLflow run.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from timbrelab import tracking
from timbrelab.data.datamodules import CycleGANDataModule
from timbrelab.data.datasets import REPRO, FeatureSplit, cqt_normaliser, load_stats
from timbrelab.dsp.frechet import frechet_distance
from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.fsutil import sha256_file
from timbrelab.models.checkpoint import make_payload, save_checkpoint
from timbrelab.models.cyclegan import PRESETS, CycleGAN, CycleGANConfig, Discriminator
from timbrelab.models.registry import Example
from timbrelab.training.cyclegan_config import SECTION, CycleGANTrainConfig
from timbrelab.training.loop import TrainingRun, finite_or_none, log_to_run

STAGE = "train_cyclegan"
MODEL_TYPE = "cyclegan"
NOT_HASHED = ("max_steps", "val_every_steps", "num_workers", "checkpoint_root")
HASH_VERSION = 1
CQT_KEYS = ("hop_length", "fmin_hz", "bins_per_octave", "n_bins", "log_floor")
PROFILE_BELOW, PROFILE_ABOVE = 12, 48      # profile bins around each frame's peak (half an octave, two above)
SOUNDING_QUANTILE = 0.25                    # frames quieter than this quantile of real B's peaks are left out
IMAGE_CLIPS = 1                             # validation clips drawn to MLflow per validation


# ------------------------------------------------------------------------------------ selection criterion

def cqt_profiles(log_cqt: np.ndarray, threshold: float) -> np.ndarray:
    """Pitch-aligned spectral profiles of the sounding frames of ``(N, F, T)`` log-CQT (natural log):
    ``(frames, PROFILE_BELOW + PROFILE_ABOVE)``, each frame's log-CQT from ``PROFILE_BELOW`` bins under its
    loudest bin to ``PROFILE_ABOVE`` bins above it, minus that bin's level (so pitch and loudness drop out and
    what is left is the shape of the spectrum: the timbre). Frames whose loudest bin is under ``threshold``
    are left out; bins outside the CQT read as the quietest bin of the frame."""
    frames = np.moveaxis(np.asarray(log_cqt, dtype=np.float64), 1, 2).reshape(-1, log_cqt.shape[1])
    peaks = frames.max(axis=1)
    frames = frames[peaks >= threshold]
    if not len(frames):
        return np.zeros((0, PROFILE_BELOW + PROFILE_ABOVE))
    width = PROFILE_BELOW + PROFILE_ABOVE
    floor = frames.min(axis=1, keepdims=True)
    padded = np.concatenate([np.broadcast_to(floor, (len(frames), PROFILE_BELOW)), frames,
                             np.broadcast_to(floor, (len(frames), PROFILE_ABOVE))], axis=1)
    peak_bin = frames.argmax(axis=1)
    index = peak_bin[:, None] + np.arange(width)[None, :]
    return np.take_along_axis(padded, index, axis=1) - frames.max(axis=1, keepdims=True)


def profile_frechet(translated: np.ndarray, real: np.ndarray) -> float:
    """Fréchet distance between the :func:`cqt_profiles` of translated and real ``(N, F, T)`` log-CQT, sounding
    frames by real's peak levels; ``nan`` when either side has fewer than two sounding frames."""
    threshold = float(np.quantile(np.asarray(real).max(axis=1), SOUNDING_QUANTILE))
    a, b = cqt_profiles(translated, threshold), cqt_profiles(real, threshold)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return frechet_distance(a, b)


PITCH_RANGE = 2.3          # nepers (20 dB) under a frame's loudest bin: quieter bins are not its pitch
PITCH_TOLERANCE = 1        # bins (a 24-bin octave: 50 cents)


def cqt_pitch_bins(log_cqt: np.ndarray) -> np.ndarray:
    """``(N, F, T)`` -> ``(N, T)``: each frame's lowest bin that is a local maximum within ``PITCH_RANGE`` of the
    frame's loudest bin — a crude pitch read straight off the CQT (the lowest strong partial)."""
    x = np.asarray(log_cqt, dtype=np.float64)
    strong = x >= x.max(axis=1, keepdims=True) - PITCH_RANGE
    peak = np.ones_like(strong)
    peak[:, 1:] &= x[:, 1:] >= x[:, :-1]
    peak[:, :-1] &= x[:, :-1] >= x[:, 1:]
    return np.argmax(strong & peak, axis=1)


def pitch_kept(source: np.ndarray, translated: np.ndarray, threshold: float) -> float:
    """Share of the source's sounding frames (loudest bin >= ``threshold``) whose :func:`cqt_pitch_bins` the
    translation keeps within ``PITCH_TOLERANCE`` bins: does the translation leave the notes where they were?"""
    sounding = np.asarray(source).max(axis=1) >= threshold
    if not sounding.any():
        return float("nan")
    same = np.abs(cqt_pitch_bins(source) - cqt_pitch_bins(translated)) <= PITCH_TOLERANCE
    return float(same[sounding].mean())


# ------------------------------------------------------------------------------------------------ parts

class ImagePool:
    """Past generated spectrograms (Shrivastava et al.; CycleGAN): the discriminator sees a fake from the pool
    half the time once it is full, so it does not chase the generator's latest move. Draws from ``generator``."""

    def __init__(self, size: int):
        self.size = int(size)
        self.images: list[Tensor] = []

    def query(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        if self.size == 0:
            return batch
        out = []
        for image in batch.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if float(torch.rand((), generator=generator)) < 0.5:
                k = int(torch.randint(len(self.images), (), generator=generator))
                out.append(self.images[k].clone())
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state(self) -> Tensor | None:
        return torch.stack(self.images).cpu() if self.images else None

    def load(self, state: Tensor | None, device: torch.device) -> None:
        self.images = [] if state is None else [image.to(device) for image in state]


def frame_mask(batch: int, frames: int, max_frames: int, generator: torch.Generator) -> Tensor:
    """``(batch, 1, 1, frames)``: ones with one run of up to ``max_frames`` zeros per item (filling in frames)."""
    mask = torch.ones(batch, 1, 1, frames)
    for i in range(batch):
        length = int(torch.randint(min(max_frames, frames) + 1, (), generator=generator))
        start = int(torch.randint(frames - length + 1, (), generator=generator))
        mask[i, ..., start:start + length] = 0.0
    return mask


def cqt_panel_png(path: Path, panels: list[tuple[str, np.ndarray]], title: str) -> None:
    """One row of normalised log-CQT images ``(F, T)`` side by side, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3), sharey=True, constrained_layout=True)
    for ax, (label, image) in zip(axes, panels):
        ax.imshow(image, origin="lower", aspect="auto", cmap="magma", vmin=-3, vmax=3, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("frame")
    axes[0].set_ylabel("CQT bin")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- lightning

class CycleGANLightningModule(LightningModule):
    """Two generators (``model.a_to_b``, ``model.b_to_a``) against discriminators ``d_a`` / ``d_b`` (and
    ``d_a2`` / ``d_b2`` on cycled spectrograms with the two-step loss); two optimiser steps per batch."""

    monitor = "val/frechet_profile"
    curve_keys = ("train/g_adv", "train/cycle", "train/identity", "train/d_loss", "val/cycle",
                  "val/frechet_profile", "val/pitch_kept")
    steps_per_batch = 2   # the generators' and the discriminators' optimiser steps (Lightning counts both)

    def __init__(self, model_cfg: CycleGANConfig, cfg: CycleGANTrainConfig, stats: dict[str, Any] | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.loss_cfg = cfg, cfg.loss
        self.model = CycleGAN(model_cfg, stats)
        self.d_a, self.d_b = Discriminator(model_cfg), Discriminator(model_cfg)
        self.two_step = bool(cfg.loss.two_step)
        if self.two_step:
            self.d_a2, self.d_b2 = Discriminator(model_cfg), Discriminator(model_cfg)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size), ImagePool(cfg.pool_size)
        self.rng = torch.Generator().manual_seed(int(cfg.seed))
        self._val: list[tuple[Tensor, ...]] = []
        self.norms = self._norms(stats)
        self.reference_b: np.ndarray | None = None   # valid-split B log-CQT (N, F, T), set by train()

    @staticmethod
    def _norms(stats: dict[str, Any] | None) -> tuple[tuple[float, float], tuple[float, float]]:
        if not stats:
            return (0.0, 1.0), (0.0, 1.0)
        return cqt_normaliser(stats["a"]), cqt_normaliser(stats["b"])

    # -- losses
    def discriminators(self) -> list[nn.Module]:
        return [self.d_a, self.d_b] + ([self.d_a2, self.d_b2] if self.two_step else [])

    def _adv_g(self, disc: nn.Module, fake: Tensor) -> Tensor:
        score = disc(fake)
        return -score.mean() if self.loss_cfg.adversarial == "wgan_gp" else F.mse_loss(score, torch.ones_like(score))

    def _adv_d(self, disc: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        real_score, fake_score = disc(real), disc(fake)
        if self.loss_cfg.adversarial == "lsgan":
            return 0.5 * (F.mse_loss(real_score, torch.ones_like(real_score))
                          + F.mse_loss(fake_score, torch.zeros_like(fake_score)))
        alpha = torch.rand(real.shape[0], 1, 1, 1, generator=self.rng).to(real)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(disc(mixed).sum(), mixed, create_graph=True)
        penalty = ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
        return fake_score.mean() - real_score.mean() + self.loss_cfg.gp_weight * penalty

    def generator_losses(self, a: Tensor, b: Tensor, step: int, mask_a: Tensor | None = None,
                         mask_b: Tensor | None = None) -> dict[str, Tensor]:
        """Cycle, identity (weighted by the schedule at ``step``) and adversarial terms, and the fakes."""
        g_ab, g_ba = self.model.a_to_b, self.model.b_to_a
        fake_b, fake_a = g_ab(a, mask_a), g_ba(b, mask_b)
        cyc_a, cyc_b = g_ba(fake_b), g_ab(fake_a)
        cycle = F.l1_loss(cyc_a, a) + F.l1_loss(cyc_b, b)
        id_weight = self.loss_cfg.identity_at(step)
        identity = (F.l1_loss(g_ab(b), b) + F.l1_loss(g_ba(a), a)) if id_weight > 0 else a.new_zeros(())
        adv = self._adv_g(self.d_b, fake_b) + self._adv_g(self.d_a, fake_a)
        if self.two_step:
            adv = adv + self._adv_g(self.d_a2, cyc_a) + self._adv_g(self.d_b2, cyc_b)
        total = adv + self.loss_cfg.cycle_weight * cycle + id_weight * identity
        return {"total": total, "adv": adv, "cycle": cycle, "identity": identity, "fake_a": fake_a,
                "fake_b": fake_b, "cyc_a": cyc_a, "cyc_b": cyc_b}

    def discriminator_loss(self, a: Tensor, b: Tensor, fakes: dict[str, Tensor]) -> Tensor:
        fake_b = self.pool_b.query(fakes["fake_b"], self.rng)
        fake_a = self.pool_a.query(fakes["fake_a"], self.rng)
        loss = self._adv_d(self.d_b, b, fake_b) + self._adv_d(self.d_a, a, fake_a)
        if self.two_step:
            loss = loss + self._adv_d(self.d_a2, a, fakes["cyc_a"].detach()) \
                + self._adv_d(self.d_b2, b, fakes["cyc_b"].detach())
        return loss

    # -- steps
    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        a, b = batch["a"], batch["b"]
        step = self.global_step // self.steps_per_batch
        mask_a = mask_b = None
        if self.model.cfg.mask_input:
            mask_a = frame_mask(a.shape[0], a.shape[-1], self.loss_cfg.mask_max_frames, self.rng).to(a)
            mask_b = frame_mask(b.shape[0], b.shape[-1], self.loss_cfg.mask_max_frames, self.rng).to(b)
        discs = self.discriminators()
        for disc in discs:
            disc.requires_grad_(False)
        losses = self.generator_losses(a, b, step, mask_a, mask_b)
        opt_g.zero_grad()
        self.manual_backward(losses["total"])
        if self.cfg.grad_clip:
            self.clip_gradients(opt_g, gradient_clip_val=self.cfg.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        for disc in discs:
            disc.requires_grad_(True)
        d_loss = self.discriminator_loss(a, b, {k: v.detach() for k, v in losses.items()})
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        if self.cfg.grad_clip:
            self.clip_gradients(opt_d, gradient_clip_val=self.cfg.grad_clip, gradient_clip_algorithm="norm")
        opt_d.step()
        for scheduler in self.lr_schedulers():
            scheduler.step()
        n = a.shape[0]
        self.log_dict({"train/g_adv": losses["adv"].detach(), "train/cycle": losses["cycle"].detach(),
                       "train/identity": losses["identity"].detach(), "train/d_loss": d_loss.detach(),
                       "train/g_loss": losses["total"].detach()},
                      on_step=True, on_epoch=False, batch_size=n, prog_bar=False)

    def validation_step(self, batch, batch_idx):
        a, b = batch["a"], batch["b"]
        fake_b, fake_a = self.model.a_to_b(a), self.model.b_to_a(b)
        cyc_a, cyc_b = self.model.b_to_a(fake_b), self.model.a_to_b(fake_a)
        cycle = 0.5 * (F.l1_loss(cyc_a, a) + F.l1_loss(cyc_b, b))
        self.log("val/cycle", cycle, on_epoch=True, batch_size=a.shape[0], sync_dist=True)
        self._val.append(tuple(t.detach().cpu() for t in (a, fake_b, cyc_a, b, fake_a)))

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        mean_b, std_b = self.norms[1]
        fake_b = torch.cat([v[1] for v in self._val])[:, 0].numpy() * std_b + mean_b
        # The valid B clips once each (the loader pairs some twice when A has more clips than B).
        real_b = self.reference_b if self.reference_b is not None else \
            torch.cat([v[3] for v in self._val])[:, 0].numpy() * std_b + mean_b
        value = profile_frechet(fake_b, real_b)
        self.log("val/frechet_profile", value if math.isfinite(value) else float("inf"), sync_dist=False)
        mean_a, std_a = self.norms[0]
        real_a = torch.cat([v[0] for v in self._val])[:, 0].numpy() * std_a + mean_a
        kept = pitch_kept(real_a, fake_b, float(np.quantile(real_a.max(axis=1), SOUNDING_QUANTILE)))
        self.log("val/pitch_kept", kept if math.isfinite(kept) else 0.0, sync_dist=False)
        if not self.trainer.sanity_checking and self.logger and self.trainer.is_global_zero:
            self._log_images()

    def _log_images(self) -> None:
        a, fake_b, cyc_a, b, fake_a = (v[0, 0].numpy() for v in self._val[0])
        step = self.global_step // self.steps_per_batch
        with tempfile.TemporaryDirectory(prefix="timbrelab-cyclegan-") as tmp:
            path = Path(tmp) / f"step_{step:07d}.png"
            cqt_panel_png(path, [("A", a), ("A -> B", fake_b), ("A -> B -> A", cyc_a), ("B", b), ("B -> A", fake_a)],
                          title=f"CycleGAN at step {step}")
            self.logger.experiment.log_artifact(self.logger.run_id, str(path), "cqt_images")

    def configure_optimizers(self):
        betas = (0.5, 0.999)
        opt_g = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr_g, betas=betas)
        opt_d = torch.optim.Adam([p for d in self.discriminators() for p in d.parameters()], lr=self.cfg.lr_d,
                                 betas=betas)
        factor = self.cfg.lr_factor
        return [opt_g, opt_d], [torch.optim.lr_scheduler.LambdaLR(opt_g, factor),
                                torch.optim.lr_scheduler.LambdaLR(opt_d, factor)]

    # -- what a resume needs beyond Lightning's own state (weights, optimisers, schedulers, loops)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cyclegan"] = {"pool_a": self.pool_a.state(), "pool_b": self.pool_b.state(),
                                  "rng": self.rng.get_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("cyclegan")
        if state is None:
            return
        self.pool_a.load(state["pool_a"], self.device)
        self.pool_b.load(state["pool_b"], self.device)
        self.rng.set_state(state["rng"])

    def export_model(self) -> CycleGAN:
        return self.model


# ------------------------------------------------------------------------------------------- data checks

def _split(features_root: Path, domain: str, split: str, stats_path: Path) -> FeatureSplit:
    return FeatureSplit(features_root / domain / split, stats_path)


def check_domains(cfg: CycleGANTrainConfig, features_root: Path) -> dict[str, Any]:
    """Both domains' stats, checked before anything trains: the features exist, both domains are on one CQT
    grid, every split has enough frames for a crop and no NaN in its CQT. Returns ``{"a", "b", names}``."""
    stats: dict[str, Any] = {"domain_a": cfg.domain_a, "domain_b": cfg.domain_b}
    for side, domain in (("a", cfg.domain_a), ("b", cfg.domain_b)):
        path = features_root / domain / "stats.json"
        if not path.is_file():
            raise TimbrelabError(f"{features_root / domain}: no such feature domain for {SECTION}.domain_{side}; "
                                 f"add it to features.domains and {REPRO}")
        stats[side] = load_stats(path)
    grid = [{k: (s.get("features_config") or {}).get("cqt", {}).get(k) for k in CQT_KEYS}
            | {"sample_rate": s["sample_rate"], "cqt_hop": s["cqt_hop"]} for s in (stats["a"], stats["b"])]
    if grid[0] != grid[1]:
        diff = {k: (grid[0][k], grid[1][k]) for k in grid[0] if grid[0][k] != grid[1][k]}
        raise ConfigError(f"{SECTION}: domains {cfg.domain_a!r} and {cfg.domain_b!r} have different CQT settings "
                          f"{diff}; compute both with one features.cqt and {REPRO}")
    for side, domain in (("a", cfg.domain_a), ("b", cfg.domain_b)):
        for split in ("train", "valid", "test"):
            data = _split(features_root, domain, split, features_root / domain / "stats.json")
            if len(data) == 0:
                raise TimbrelabError(f"{data.path}: no clips; {SECTION} needs train, valid and test clips of "
                                     f"{domain!r}")
            if split == "train" and data.n_cqt_frames < cfg.crop_frames:
                raise ConfigError(f"{SECTION}.crop_frames={cfg.crop_frames} is longer than the clips of {domain!r} "
                                  f"({data.n_cqt_frames} CQT frames); lower it or use longer segments")
            cqt = data.array("cqt")
            bad = ~np.isfinite(cqt).all(axis=(1, 2))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise TimbrelabError(f"{data.path / 'cqt.npy'}: clip row {row} holds NaN or infinite values "
                                     f"({int(bad.sum())} clips); {REPRO}")
    return stats


def data_fingerprint(features_root: Path, cfg: CycleGANTrainConfig) -> str:
    digest = hashlib.sha256()
    for domain in (cfg.domain_a, cfg.domain_b):
        for rel in ("stats.json", "train/index.json", "valid/index.json"):
            path = features_root / domain / rel
            digest.update(f"{domain}/{rel}".encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return digest.hexdigest()


def operative_config(cfg: CycleGANTrainConfig, model_cfg: CycleGANConfig, data: str | None) -> dict[str, Any]:
    train = {k: v for k, v in asdict(cfg).items() if k not in (*NOT_HASHED, "model", "trainer")}
    operative = {"version": HASH_VERSION, "train": train, "model": asdict(model_cfg), "data": data,
                 "lr_schedule_steps": cfg.max_steps}   # the decay depends on max_steps: it changes the weights
    if cfg.trainer.operative():
        operative["trainer"] = cfg.trainer.operative()
    return operative


# ------------------------------------------------------------------------------------------- train

@torch.no_grad()
def judge(model: CycleGAN, features_root: Path, cfg: CycleGANTrainConfig, stats: dict[str, Any],
          split: str = "test") -> dict[str, float]:
    """The kept model on whole ``split`` clips: the profile Fréchet distance of A->B to real B (and of
    untranslated A to real B, the identity baseline), the cycle loss of A->B->A."""
    model.eval()
    (mean_a, std_a), (mean_b, std_b) = cqt_normaliser(stats["a"]), cqt_normaliser(stats["b"])
    a_split = _split(features_root, cfg.domain_a, split, features_root / cfg.domain_a / "stats.json")
    b_split = _split(features_root, cfg.domain_b, split, features_root / cfg.domain_b / "stats.json")
    real_a = np.asarray(a_split.array("cqt"), dtype=np.float32)
    real_b = np.asarray(b_split.array("cqt"), dtype=np.float32)
    norm_a = torch.from_numpy((real_a - mean_a) / std_a)[:, None]
    fake_b = torch.cat([model.a_to_b(x[None]) for x in norm_a])
    cyc_a = torch.cat([model.b_to_a(x[None]) for x in fake_b])
    translated = fake_b[:, 0].numpy() * std_b + mean_b
    return {f"{split}/frechet_profile": profile_frechet(translated, real_b),
            f"{split}/pitch_kept": pitch_kept(real_a, translated, float(np.quantile(real_a.max(axis=1),
                                                                                    SOUNDING_QUANTILE))),
            f"identity/{split}_frechet_profile": profile_frechet(real_a, real_b),
            f"{split}/cycle": float(F.l1_loss(cyc_a, norm_a))}


def train(cfg: CycleGANTrainConfig, out_dir: str | os.PathLike, *,
          features_root: str | os.PathLike = Path("data/features"), mlflow_run_id: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train (or resume / extend) and write ``model.pt``, ``untrained.pt`` (the same networks at step 0, the
    report's comparison row), ``metrics.json`` and ``curves.csv`` to ``out_dir``."""
    out_dir, features_root = Path(out_dir), Path(features_root)
    stats = check_domains(cfg, features_root)
    lightning.seed_everything(cfg.seed, workers=True, verbose=False)
    model_cfg = cfg.model_config(stats["a"]["n_bins"])
    dm = CycleGANDataModule(features_root, cfg.domain_a, cfg.domain_b, cfg.batch_size, cfg.crop_frames,
                            cfg.num_workers, cfg.seed)
    training = TrainingRun(STAGE, operative_config(cfg, model_cfg, data_fingerprint(features_root, cfg)),
                           cfg.checkpoint_root, trainer=cfg.trainer, max_steps=cfg.max_steps,
                           val_every_steps=cfg.val_every_steps, progress=progress)
    module = CycleGANLightningModule(model_cfg, cfg, stats)
    module.reference_b = np.asarray(_split(features_root, cfg.domain_b, "valid", features_root / cfg.domain_b /
                                           "stats.json").array("cqt"), dtype=np.float32)
    untrained = make_payload(MODEL_TYPE, module.export_model(), asdict(model_cfg), train_config=asdict(cfg),
                             stats=stats, digest=training.digest, steps=0)
    initial = judge(module.export_model(), features_root, cfg, stats, "valid")
    module.model.train()
    fitted = training.fit(module, dm, mlflow_run_id)
    if fitted.rank:
        return {"rank": fitted.rank}
    export = module.export_model().cpu().eval()
    metrics = finite_or_none({
        "steps": fitted.steps,
        "best_step": fitted.best_step,
        "val/frechet_profile_initial": initial["valid/frechet_profile"],
        **{k: v for k, v in judge(export, features_root, cfg, stats, "valid").items() if k.startswith("valid/")},
        **judge(export, features_root, cfg, stats, "test"),
        "trainer/world_size": fitted.world_size,
        **fitted.shards,
    })
    metrics["val/frechet_profile_best"] = metrics.pop("valid/frechet_profile")
    metrics["val/cycle_best"] = metrics.pop("valid/cycle")
    metrics["val/pitch_kept_best"] = metrics.pop("valid/pitch_kept")
    payload = make_payload(MODEL_TYPE, export, asdict(model_cfg), train_config=asdict(cfg), stats=stats,
                           digest=training.digest, steps=fitted.best_step)
    training.write_outputs(out_dir, payload, metrics, fitted)
    save_checkpoint(out_dir / "untrained.pt", untrained)
    registered = None
    if mlflow_run_id is not None:
        run = tracking.StageRun(fitted.client, mlflow_run_id)
        registered = log_to_run(run, MODEL_TYPE, f"{cfg.domain_a}-{cfg.domain_b}", STAGE, out_dir / "model.pt",
                                metrics, training.digest)
    return {**metrics, "hash": training.digest, "checkpoint_dir": str(training.ckpt_dir),
            "registered_model": registered}


def summary(cfg: CycleGANTrainConfig, metrics: dict[str, Any]) -> str:
    def num(key: str) -> str:
        value = metrics.get(key)
        return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"

    registered = metrics.get("registered_model")
    return (f"trained CycleGAN ({cfg.model.preset}, {cfg.loss.adversarial}) {cfg.domain_a} <-> {cfg.domain_b} for "
            f"{metrics.get('steps', '?')} steps, kept step {metrics.get('best_step', '?')}: test profile Fréchet "
            f"A->B {num('test/frechet_profile')} (untranslated {num('identity/test_frechet_profile')}), test cycle "
            f"L1 {num('test/cycle')}" + (f"; registered as {registered}" if registered else ""))


def example(size: str) -> Example:
    """The test matrix's CycleGAN at preset ``size``: one pair of 32-frame crops, its LightningModule's step."""
    model_cfg = PRESETS[size]
    cfg = CycleGANTrainConfig(model={"preset": size}, batch_size=1, crop_frames=32, max_steps=10)
    module = CycleGANLightningModule(model_cfg, cfg, None)
    generator = torch.Generator().manual_seed(0)
    batch = {"a": torch.randn(1, 1, model_cfg.n_bins, 32, generator=generator),
             "b": torch.randn(1, 1, model_cfg.n_bins, 32, generator=generator)}
    return Example(module.model, lightning_module=module, batch=batch,
                   payload=make_payload(MODEL_TYPE, module.model, asdict(model_cfg), stats=None))
