"""What a trained DDSP model is judged by, and what it leaves in its MLflow run.

* :func:`load_test_batches`: the test split as whole clips (not crops), in row order, so every test frame counts
  once and the numbers do not depend on a crop rule.
* :func:`render` / :func:`mean_loss`: resynthesis of each clip from its own f0 and loudness with seeded
  noise, and the multi-scale spectral loss against the clip.
* :func:`pitch_agreement`: does the resynthesis keep the input's pitch? The output is read back with the
  estimator and settings the features were computed with (``stats["features_config"]["pitch"]``), so the
  test measures the model, not a disagreement between two estimators.
* :func:`log_resynthesis`: listening examples (input and resynthesis WAVs) and spectrogram PNGs of a few test
  clips, written to a temporary folder and logged to the stage's run (never into the DVC output).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from timbrelab.data.datasets import DDSPDataset
from timbrelab.dsp.pitch import VOICED_THRESHOLD, estimate_f0
from timbrelab.dsp.spectral import MultiScaleSpectralLoss, stft_magnitude
from timbrelab.errors import TimbrelabError

CENTS_TOLERANCE = 50.0       # the criterion: resynthesis f0 within 50 cents of the input's
LOGGED_CLIPS = 3             # test clips whose audio and spectrograms go to MLflow
SPECTROGRAM_FFT = 1024


# --------------------------------------------------------------------------------------- evaluation

def load_test_batches(features_root: Path, domain: str, batch_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """The test split of ``domain`` as whole clips in row order, batched; TimbrelabError naming the
    folder when the split is missing or empty (the stage's claim -- model beats baseline on held-out
    clips -- cannot be made without it)."""
    domain_dir = Path(features_root) / domain
    split_dir = domain_dir / "test"
    try:
        dataset = DDSPDataset(split_dir, domain_dir / "stats.json", crop_seconds=None, seed=seed, random_crop=False)
    except TimbrelabError as exc:
        raise TimbrelabError(f"train_ddsp needs a non-empty test split at {split_dir} (the model is judged on "
                             f"it): {exc}. Give prepare.split.test a fraction > 0 and enough recordings for "
                             "three splits") from exc
    return list(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0))


def split_ids(features_root: Path, domain: str, split: str = "test") -> list[str]:
    """Clip ids of a split in row order (its index.json), to name the listening examples."""
    import json

    entries = json.loads((Path(features_root) / domain / split / "index.json").read_text())
    return [str(entry["id"]) for entry in entries]


@torch.no_grad()
def render(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], seed_base: int) -> list[torch.Tensor]:
    """Resynthesis (B, n) of every batch from its own f0 / loudness; batch ``i`` draws its noise from a
    generator seeded ``seed_base - i``, so the numbers are reproducible and never touch the global RNG."""
    model.eval()
    preds = []
    for i, batch in enumerate(batches):
        gen = torch.Generator().manual_seed(seed_base - i)
        preds.append(model(batch["f0_hz"], batch["loudness_db"], batch["audio"].shape[-1], generator=gen))
    return preds


@torch.no_grad()
def mean_loss(preds: list[torch.Tensor], batches: list[dict[str, torch.Tensor]]) -> float:
    """Multi-scale spectral loss of ``preds`` against the batches' audio, averaged over clips."""
    loss_fn = MultiScaleSpectralLoss()
    total, count = 0.0, 0
    for pred, batch in zip(preds, batches, strict=True):
        total += float(loss_fn(pred, batch["audio"])) * len(pred)
        count += len(pred)
    return total / count


# ---------------------------------------------------------------------------------- pitch fidelity

def pitch_settings(stats: Mapping[str, Any]) -> dict[str, Any]:
    """How the features' f0 was estimated: ``features_config.pitch`` of stats.json, else the estimator's
    defaults."""
    pitch = (stats.get("features_config") or {}).get("pitch") or {}
    settings: dict[str, Any] = {
        "estimator": pitch.get("estimator", "swift"),
        "voiced_threshold": float(pitch.get("voiced_threshold", VOICED_THRESHOLD)),
    }
    for key in ("fmin_hz", "fmax_hz"):
        if key in pitch:
            settings[key] = float(pitch[key])
    return settings


@dataclass
class PitchTracks:
    """One clip's f0 frames: the input's (from the features) and the resynthesis' (re-estimated)."""

    f0_in: np.ndarray
    voiced_in: np.ndarray
    f0_out: np.ndarray
    voiced_out: np.ndarray

    @property
    def cents(self) -> np.ndarray:
        return 1200.0 * np.abs(np.log2(self.f0_out / self.f0_in))


def resynthesis_tracks(preds: list[torch.Tensor], batches: list[dict[str, torch.Tensor]],
                       stats: Mapping[str, Any]) -> list[PitchTracks]:
    """Per clip, the input's f0/voicing (features) and the f0/voicing of its resynthesis, on one frame grid."""
    settings = pitch_settings(stats)
    threshold = settings.pop("voiced_threshold")
    sample_rate, hop = int(stats["sample_rate"]), int(stats["frame_hop"])
    tracks = []
    for pred, batch in zip(preds, batches, strict=True):
        for row in range(len(pred)):
            f0_in = batch["f0_hz"][row].numpy().astype(np.float64)
            conf_in = batch["f0_confidence"][row].numpy()
            audio = pred[row].numpy().astype(np.float32)
            f0_out, conf_out = estimate_f0(audio, sample_rate, hop, **settings)
            frames = f0_in.shape[0]     # the estimator adds the frame at the clip's last sample
            tracks.append(PitchTracks(f0_in, conf_in >= threshold, f0_out[:frames].astype(np.float64),
                                      conf_out[:frames] >= threshold))
    return tracks


def pitch_agreement(tracks: list[PitchTracks]) -> dict[str, float | int | None]:
    """The issue's criterion over all clips' frames voiced in the input.

    ``f0_within_50c``: fraction of input-voiced frames that are voiced in the resynthesis too AND whose f0
    there is within 50 cents (a frame the resynthesis loses counts as a miss, not as excluded);
    ``f0_output_voiced``: fraction of input-voiced frames voiced in the output; ``f0_median_cents``: median
    absolute error over frames voiced in both; ``f0_voiced_frames``: the denominator. None where undefined.
    """
    voiced_in = np.concatenate([t.voiced_in for t in tracks])
    both = np.concatenate([t.voiced_in & t.voiced_out for t in tracks])
    cents = np.concatenate([t.cents for t in tracks])
    n = int(voiced_in.sum())
    within = int((both & (cents < CENTS_TOLERANCE)).sum())
    return {
        "f0_within_50c": within / n if n else None,
        "f0_output_voiced": int(both.sum()) / n if n else None,
        "f0_median_cents": float(np.median(cents[both])) if both.any() else None,
        "f0_voiced_frames": n,
    }


# --------------------------------------------------------------------------------- MLflow artifacts

def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80] or "clip"


def _log_spectrogram(audio: np.ndarray) -> np.ndarray:
    """(n,) -> (bins, frames) STFT magnitude in dB (unnormalised, so input and output share one scale)."""
    mag = stft_magnitude(torch.from_numpy(np.ascontiguousarray(audio)), SPECTROGRAM_FFT).numpy().T
    return 20.0 * np.log10(np.maximum(mag, 1e-7))


def write_spectrogram_png(path: Path, clip_id: str, audio_in: np.ndarray, audio_out: np.ndarray,
                          tracks: PitchTracks, sample_rate: int, hop: int) -> None:
    """Input vs resynthesis spectrograms on one colour scale, and both f0 tracks (voiced frames only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec_in, spec_out = _log_spectrogram(audio_in), _log_spectrogram(audio_out)
    top = max(spec_in.max(), spec_out.max())
    seconds = audio_in.shape[0] / sample_rate
    extent = (0.0, seconds, 0.0, sample_rate / 2000.0)
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for ax, spec, title in ((axes[0], spec_in, "input"), (axes[1], spec_out, "resynthesis")):
        image = ax.imshow(spec, origin="lower", aspect="auto", extent=extent, vmin=top - 80.0, vmax=top,
                          cmap="magma")
        ax.set(title=f"{clip_id}: {title}", ylabel="kHz")
    fig.colorbar(image, ax=axes[:2], label="dB")
    t = np.arange(tracks.f0_in.shape[0]) * hop / sample_rate
    axes[2].plot(t, np.where(tracks.voiced_in, tracks.f0_in, np.nan), label="input f0 (features)")
    axes[2].plot(t, np.where(tracks.voiced_out, tracks.f0_out, np.nan), "--", label="resynthesis f0")
    axes[2].set(yscale="log", xlabel="seconds", ylabel="Hz", title="f0 on voiced frames")
    axes[2].legend(loc="upper right")
    fig.savefig(path, format="png", dpi=72)
    plt.close(fig)


def log_resynthesis(run, ids: list[str], batches: list[dict[str, torch.Tensor]], preds: list[torch.Tensor],
                    tracks: list[PitchTracks], sample_rate: int, hop: int, count: int = LOGGED_CLIPS) -> list[str]:
    """Log the first ``count`` test clips to ``run`` (a :class:`timbrelab.tracking.StageRun`) under
    ``resynthesis/``: ``NN_<id>_input.wav``, ``NN_<id>_resynthesis.wav``, ``NN_<id>.png``. Returns the
    artifact paths."""
    from timbrelab.audio import save_wav

    inputs = [a.numpy() for b in batches for a in b["audio"]]
    outputs = [p.numpy() for pred in preds for p in pred]
    logged = []
    with tempfile.TemporaryDirectory(prefix="timbrelab-resynthesis-") as tmp:
        for k in range(min(count, len(outputs))):
            stem = f"{k:02d}_{_safe_name(ids[k])}"
            save_wav(Path(tmp) / f"{stem}_input.wav", inputs[k], sample_rate)
            save_wav(Path(tmp) / f"{stem}_resynthesis.wav", outputs[k], sample_rate)
            write_spectrogram_png(Path(tmp) / f"{stem}.png", ids[k], inputs[k], outputs[k], tracks[k],
                                  sample_rate, hop)
            logged += [f"resynthesis/{stem}_input.wav", f"resynthesis/{stem}_resynthesis.wav",
                       f"resynthesis/{stem}.png"]
        run.log_artifacts(tmp, "resynthesis")
    return logged
