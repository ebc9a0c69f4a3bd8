"""Evaluate one system on the transfer set: transfer every source clip, score it, reconstruct the reference.

Writes into ``out_dir``: ``audio/<clip>.wav`` (what the report plays and what was scored: the 16-bit WAV is
read back before scoring), ``recon/<clip>.wav`` (reconstructions, for systems that have them) and
``results.json`` (per-clip values, every metric with its bootstrap CI, skipped clips with the reason).
A clip the system cannot transfer (e.g. the DDSP transfer refusing an unpitched clip) is skipped and
recorded; the others are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from timbrelab.audio import load_audio, save_wav
from timbrelab.config import FeaturesConfig
from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.evaluation import metrics as m
from timbrelab.models.classifier import GRID_KEYS, TimbreClassifier
from timbrelab.evaluation.scoring import (ClipScore, MetricsConfig, analyse, frame_times, reconstruction_row,
                                          reference_embeddings, score_output, summarise)
from timbrelab.evaluation.systems import System
from timbrelab.evaluation.transfer_set import TransferSet

RESULTS = "results.json"


def check_classifier_grid(classifier: TimbreClassifier, features: FeaturesConfig, where: str) -> None:
    """The classifier must read CQTs computed as the features stage computes them."""
    c = features.cqt
    ours = {"sample_rate": features.sample_rate, "cqt_hop": c.hop_length, "n_bins": c.n_bins, "fmin_hz": c.fmin_hz,
            "bins_per_octave": c.bins_per_octave, "log_floor": c.log_floor}
    grid = getattr(classifier, "grid", {}) or {}
    differ = [key for key in GRID_KEYS if key in grid and float(grid[key]) != float(ours[key])]
    if differ:
        raise ConfigError(f"{where}: the classifier was trained on another CQT grid ({', '.join(differ)} differ from "
                          "the transfer set's features config); rerun `dvc repro train_classifier`")


def _read(path: Path, features: FeaturesConfig) -> np.ndarray:
    return load_audio(path, sample_rate=features.sample_rate)[0]


def _write_and_read_back(path: Path, audio: np.ndarray, features: FeaturesConfig) -> np.ndarray:
    save_wav(path, audio, features.sample_rate)
    return _read(path, features)


def evaluate_system(name: str, system: System, ts: TransferSet, features: FeaturesConfig,
                    classifier: TimbreClassifier, cfg: MetricsConfig, out_dir: Path, *,
                    progress: bool = True) -> dict[str, Any]:
    """Run ``system`` over the transfer set into ``out_dir`` and return (and write) its results."""
    target = ts.target_domain
    reference_audio = [_read(clip.path, features) for clip in ts.clips("reference")]
    reference = reference_embeddings(reference_audio, features, classifier, cfg)
    scores: list[ClipScore] = []
    failed: list[dict[str, str]] = []
    clips = ts.clips("source") if system.transfers else ts.clips("target")
    for index, clip in enumerate(tqdm(clips, desc=f"evaluate {name}", unit="clip", disable=not progress)):
        audio = _read(clip.path, features)
        path = out_dir / "audio" / f"{clip.id}.wav"
        if not system.transfers:
            output = _write_and_read_back(path, audio, features)
            scores.append(score_output(clip.id, output, features, classifier, target, cfg))
            continue
        try:
            result = system.transfer(audio, seed=cfg.seed + index)
        except TimbrelabError as exc:
            failed.append({"id": clip.id, "reason": str(exc).splitlines()[0]})
            continue
        if result.audio.shape != audio.shape:
            raise TimbrelabError(f"system {name!r} returned {result.audio.shape[0]} samples for the "
                                 f"{audio.shape[0]}-sample clip {clip.id}; outputs must keep the source's length")
        output = _write_and_read_back(path, result.audio, features)
        true_f0 = m.load_true_f0(clip.f0_path, frame_times(audio.shape[0], features))
        score = score_output(clip.id, output, features, classifier, target, cfg, source=analyse(audio, features),
                             true_f0=true_f0, octave_shift=result.octave_shift)
        score.warnings = list(result.warnings)
        scores.append(score)
    if not scores:
        reasons = "; ".join(f"{f['id']}: {f['reason']}" for f in failed[:3])
        raise TimbrelabError(f"system {name!r} produced no output for any of the {len(clips)} clips ({reasons})")

    reconstructions = []
    for index, (clip, audio) in enumerate(zip(ts.clips("reference"), reference_audio, strict=True)):
        rendered = system.reconstruct(audio, seed=cfg.seed + index)
        if rendered is None:
            break
        rendered = _write_and_read_back(out_dir / "recon" / f"{clip.id}.wav", rendered, features)
        reconstructions.append({"id": clip.id, **reconstruction_row(audio, rendered, features)})

    results = {
        "system": name, "label": system.label, "description": system.description, "transfers": system.transfers,
        "target_domain": target, "metrics": summarise(scores, reconstructions, reference, cfg),
        "clips": [{**score.row(), "audio": f"audio/{score.id}.wav"} for score in scores],
        "reconstructions": [{**row, "audio": f"recon/{row['id']}.wav"} for row in reconstructions],
        "failed": failed,
    }
    return results
