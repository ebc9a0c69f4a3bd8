"""The evaluation on known-f0 audio: pitch metrics move in proportion to a detuning, the table is computed
from which system produced which clip, results are deterministic for a seed, bad clips are skipped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from timbrelab.audio import save_wav
from timbrelab.config import FeaturesConfig
from timbrelab.errors import AudioError, ConfigError, TimbrelabError
from timbrelab.models.classifier import TimbreClassifier
from timbrelab.evaluation.evaluate import evaluate_system
from timbrelab.evaluation.scoring import MetricsConfig, frame_times, score_output, summarise
from timbrelab.evaluation.summary import metrics_document, rank_systems
from timbrelab.evaluation.systems import Output, System, load_system
from timbrelab.evaluation.systems.identity import Identity
from timbrelab.evaluation.transfer_set import TransferSet, TransferSetConfig, build_transfer_set, choose
from timbrelab.f0track import format_f0_csv

SR = 16000
FEATURES = FeaturesConfig()


def tone(f0_per_sample: np.ndarray, harmonics: int = 1) -> np.ndarray:
    """Phase-continuous tone following a per-sample f0 (Hz), 1/k partials, 10 ms fades."""
    phase = 2 * np.pi * np.cumsum(f0_per_sample) / SR
    audio = sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))
    fade = np.minimum(1.0, np.minimum(np.arange(audio.size), np.arange(audio.size)[::-1]) / (0.01 * SR))
    return (0.5 * audio * fade / np.max(np.abs(audio))).astype(np.float32)


def steady(hz: float, seconds: float) -> np.ndarray:
    return np.full(int(seconds * SR), hz)


def truth_on_grid(f0_per_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The true f0 on the features' frame grid; the 10 ms fades at both ends count as unvoiced."""
    frames = np.arange(0, f0_per_sample.size + 1, FEATURES.frame_hop).clip(max=f0_per_sample.size - 1)
    hz = f0_per_sample[frames].astype(np.float64)
    times = frame_times(f0_per_sample.size, FEATURES)
    voiced = (times > 0.02) & (times < f0_per_sample.size / SR - 0.02)
    return np.where(voiced, hz, 0.0), voiced


@pytest.fixture(scope="module")
def classifier() -> TimbreClassifier:
    torch.manual_seed(0)
    return TimbreClassifier(["cello", "source"], n_bins=FEATURES.cqt.n_bins).eval()


# ------------------------------------------------------------------------------------------ pitch metrics

@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.75])
def test_detuning_part_of_a_clip_costs_that_part_of_raw_pitch(classifier, fraction):
    f0 = steady(220.0, 2.0)
    detuned = f0.copy()
    detuned[int((1 - fraction) * f0.size):] *= 2 ** (100 / 1200)     # a semitone: outside the 50-cent band
    score = score_output("c", tone(detuned, 3), FEATURES, classifier, "cello", MetricsConfig(),
                         true_f0=truth_on_grid(f0))
    assert score.pitch.raw_pitch == pytest.approx(1 - fraction, abs=0.04)
    # An octave-free error: chroma forgives nothing here, a semitone is not an octave.
    assert score.pitch.raw_chroma == pytest.approx(score.pitch.raw_pitch, abs=1e-9)


@pytest.mark.parametrize("cents", [10.0, 30.0, 80.0])
def test_f0_error_measures_the_detuning_in_cents(classifier, cents):
    f0 = steady(196.0, 1.5)
    score = score_output("c", tone(f0 * 2 ** (cents / 1200), 3), FEATURES, classifier, "cello", MetricsConfig(),
                         true_f0=truth_on_grid(f0))
    # swift itself reads pure tones a few cents off (the identity row measures it: ~6 cents median).
    assert score.f0_error.median_abs_cents == pytest.approx(cents, abs=7.0)
    assert score.pitch.raw_pitch == (pytest.approx(1.0, abs=0.03) if cents < 50 else pytest.approx(0.0, abs=0.03))


def test_the_octave_shift_a_system_applied_is_undone(classifier):
    f0 = steady(330.0, 1.0)
    out = tone(f0 / 2, 3)
    truth = truth_on_grid(f0)
    unshifted = score_output("c", out, FEATURES, classifier, "cello", MetricsConfig(), true_f0=truth)
    shifted = score_output("c", out, FEATURES, classifier, "cello", MetricsConfig(), true_f0=truth,
                           octave_shift=-1)
    assert unshifted.pitch.raw_pitch < 0.05 and unshifted.pitch.raw_chroma > 0.95
    assert shifted.pitch.raw_pitch > 0.95


def test_loudness_metrics_follow_a_gain_and_a_flattened_envelope(classifier):
    from timbrelab.evaluation.scoring import analyse

    f0 = steady(262.0, 2.0)
    swell = np.interp(np.arange(f0.size), [0, f0.size // 2, f0.size - 1], [0.1, 1.0, 0.1])
    source = (tone(f0, 3) * swell).astype(np.float32)
    src = analyse(source, FEATURES)
    quieter = score_output("c", (source * 10 ** (-6 / 20)).astype(np.float32), FEATURES, classifier, "cello",
                           MetricsConfig(), source=src)
    flat = score_output("c", tone(f0, 3) * 0.3, FEATURES, classifier, "cello", MetricsConfig(), source=src)
    assert quieter.loudness_l1 == pytest.approx(6.0, abs=0.3)
    assert quieter.loudness_corr > 0.99
    assert flat.loudness_corr < 0.5


# ------------------------------------------------------------------------------------ a small transfer set

def write_clip(folder: Path, clip_id: str, f0: np.ndarray, harmonics: int, with_truth: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    save_wav(folder / f"{clip_id}.wav", tone(f0, harmonics), SR)
    item = {"id": clip_id, "file": f"{clip_id}.wav", "recording": clip_id, "duration_s": f0.size / SR}
    if with_truth:
        hz, voiced = truth_on_grid(f0)
        times = frame_times(f0.size, FEATURES)
        (folder / f"{clip_id}.f0.csv").write_text(format_f0_csv(times, hz, voiced))
        item["f0_file"] = f"{clip_id}.f0.csv"
    return item


@pytest.fixture(scope="module")
def transfer_set(tmp_path_factory) -> TransferSet:
    root = tmp_path_factory.mktemp("transfer_set")
    rng = np.random.default_rng(0)
    groups = {"source": [], "target": [], "reference": []}
    for i in range(4):
        glide = np.geomspace(*rng.uniform(150, 400, size=2), num=int(1.0 * SR))
        groups["source"].append(write_clip(root / "source", f"src_{i}", glide, 1, True))
        groups["target"].append(write_clip(root / "target", f"tgt_{i}", steady(rng.uniform(80, 300), 1.0), 8, False))
    for i in range(5):
        groups["reference"].append(write_clip(root / "reference", f"ref_{i}", steady(rng.uniform(80, 300), 1.0), 8,
                                              False))
    manifest = {"config": {"source_domain": "source", "target_domain": "cello"},
                "features_config": dataclasses.asdict(FEATURES), "groups": groups}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return TransferSet(root)


class SemitoneUp(System):
    """A deliberately detuned 'transfer': the source pitch-shifted up 100 cents (duration kept)."""

    label = "semitone up"

    def transfer(self, audio: np.ndarray, seed: int) -> Output:
        import librosa

        return Output(librosa.effects.pitch_shift(audio, sr=SR, n_steps=1.0).astype(np.float32))


class PerClip(System):
    """Each clip's output taken from the system assigned to it (clip order = call order)."""

    label = "mixed"

    def __init__(self, systems: list[System]):
        self.systems, self.calls = systems, 0

    def transfer(self, audio: np.ndarray, seed: int) -> Output:
        system = self.systems[self.calls]
        self.calls += 1
        return system.transfer(audio, seed)


def evaluate(system: System, ts: TransferSet, classifier, out: Path, **metrics) -> dict:
    return evaluate_system("x", system, ts, FEATURES, classifier, MetricsConfig(n_resamples=200,
                           frechet_resamples=20, **metrics), out, progress=False)


def test_the_table_follows_which_system_produced_which_clip(transfer_set, classifier, tmp_path):
    identity = evaluate(Identity(), transfer_set, classifier, tmp_path / "a")
    detuned = evaluate(SemitoneUp(), transfer_set, classifier, tmp_path / "b")
    mixed = evaluate(PerClip([Identity(), SemitoneUp(), Identity(), SemitoneUp()]), transfer_set, classifier,
                     tmp_path / "c")
    rpa = {name: r["metrics"]["raw_pitch"]["value"] for name, r in
           (("identity", identity), ("detuned", detuned), ("mixed", mixed))}
    assert rpa["identity"] > 0.9 and rpa["detuned"] < 0.1
    assert rpa["detuned"] + 0.3 < rpa["mixed"] < rpa["identity"] - 0.3
    per_clip = [c["raw_pitch"] for c in mixed["clips"]]
    assert per_clip[0] > 0.9 and per_clip[1] < 0.1 and per_clip[2] > 0.9 and per_clip[3] < 0.1
    # The interval is over clips: the mixed system's spans both kinds of clip.
    interval = mixed["metrics"]["raw_pitch"]
    assert interval["low"] < 0.45 < 0.55 < interval["high"]
    # What was scored is what was written: the output WAVs exist for every clip.
    assert sorted(p.name for p in (tmp_path / "c" / "audio").iterdir()) == [f"src_{i}.wav" for i in range(4)]


def test_results_are_deterministic_for_a_seed(transfer_set, classifier, tmp_path):
    first = evaluate(Identity(), transfer_set, classifier, tmp_path / "a")
    second = evaluate(Identity(), transfer_set, classifier, tmp_path / "b")
    reseeded = evaluate(Identity(), transfer_set, classifier, tmp_path / "c", seed=7)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    a, c = first["metrics"]["f0_cents"], reseeded["metrics"]["f0_cents"]
    assert a["value"] == c["value"] and (a["low"], a["high"]) != (c["low"], c["high"])


def test_real_target_row_has_no_pitch_or_loudness(transfer_set, classifier, tmp_path):
    target = load_system("target", {}, tmp_path, FEATURES)
    result = evaluate(target, transfer_set, classifier, tmp_path / "t")
    metrics = result["metrics"]
    assert [c["id"] for c in result["clips"]] == [f"tgt_{i}" for i in range(4)]
    for key in ("raw_pitch", "raw_chroma", "f0_cents", "loudness_l1", "loudness_corr", "transfer_score"):
        assert metrics[key] is None
    assert metrics["acceptance"] is not None and metrics["frechet"] is not None


def test_griffinlim_reconstructs_the_reference(transfer_set, classifier, tmp_path):
    system = load_system("cqt_griffinlim", {"iters": 4}, tmp_path, FEATURES)
    result = evaluate(system, transfer_set, classifier, tmp_path / "g")
    assert [r["id"] for r in result["reconstructions"]] == [f"ref_{i}" for i in range(5)]
    assert result["metrics"]["recon_spectral"]["value"] > 0
    assert (tmp_path / "g" / "recon" / "ref_0.wav").is_file()


class Refuses(System):
    label = "refuses the second clip"

    def __init__(self):
        self.calls = 0

    def transfer(self, audio, seed):
        self.calls += 1
        if self.calls == 2:
            raise AudioError("no pitch found")
        return Output(audio.copy())


def test_a_clip_the_system_refuses_is_skipped_and_recorded(transfer_set, classifier, tmp_path):
    result = evaluate(Refuses(), transfer_set, classifier, tmp_path / "r")
    assert result["failed"] == [{"id": "src_1", "reason": "no pitch found"}]
    assert [c["id"] for c in result["clips"]] == ["src_0", "src_2", "src_3"]
    assert result["metrics"]["raw_pitch"]["n"] == 3


def test_a_system_that_changes_the_length_is_an_error(transfer_set, classifier, tmp_path):
    class Short(System):
        def transfer(self, audio, seed):
            return Output(audio[:-10])

    with pytest.raises(TimbrelabError, match="keep the source's length"):
        evaluate(Short(), transfer_set, classifier, tmp_path / "s")


def test_unknown_system_and_unknown_keys_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="known systems: .*identity"):
        load_system("nope", {}, tmp_path, FEATURES)
    with pytest.raises(ConfigError, match="evaluate.systems.cqt_griffinlim"):
        load_system("cqt_griffinlim", {"itres": 3}, tmp_path, FEATURES)


# ----------------------------------------------------------------------------------------------- ranking

def _result(name: str, score: float | None, frechet: float, transfers: bool = True) -> dict:
    entry = lambda v: None if v is None else {"value": v, "low": v, "high": v, "n": 3}  # noqa: E731
    return {"system": name, "transfers": transfers, "clips": [], "failed": [],
            "metrics": {"transfer_score": entry(score), "frechet": entry(frechet)}}


def test_ranking_by_transfer_score_with_the_real_target_unranked():
    ranked = rank_systems([_result("identity", 0.0, 600.0), _result("target", None, 20.0, transfers=False),
                           _result("ddsp", 0.6, 25.0), _result("griffinlim", 0.0, 400.0)])
    assert [(r["system"], r["rank"]) for r in ranked] == [("ddsp", 1), ("griffinlim", 2), ("identity", 3),
                                                          ("target", None)]
    doc = metrics_document(ranked, {"value": 5.0, "low": 4.0, "high": 6.0, "n": 2},
                           {"test/accuracy": 0.9, "test/balanced_accuracy": 0.9, "test/per_domain_accuracy": {"cello": 1.0}})
    assert doc["ddsp"]["rank"] == 1 and "rank" not in doc["target"]
    assert doc["frechet_floor"]["value"] == 5.0 and doc["classifier"]["accuracy_cello"] == 1.0


def test_summary_of_no_pitched_clips_is_not_applicable():
    assert summarise([], None, [np.zeros((3, 2))], MetricsConfig())["raw_pitch"] is None


# ---------------------------------------------------------------------------------------- transfer set

def test_choice_is_seeded_sorted_and_capped():
    ids = [f"c{i:02d}" for i in range(30)]
    picked = choose(list(reversed(ids)), 5, seed=3)
    assert picked == sorted(picked) and len(set(picked)) == 5
    assert picked == choose(ids, 5, seed=3) and picked != choose(ids, 5, seed=4)
    assert choose(ids[:3], 5, seed=0) == ids[:3]


def _prepared(root: Path, domain: str, split: str, n: int, with_truth: bool) -> None:
    folder = root / domain / split
    items = [write_clip(folder, f"{domain}_{split}_{i}", steady(220.0, 0.5), 1, with_truth) for i in range(n)]
    (folder / "index.json").write_text(json.dumps(items))


def test_build_transfer_set_skips_sources_without_truth(tmp_path):
    prepared = tmp_path / "prepared"
    _prepared(prepared, "source", "test", 3, True)
    (prepared / "source" / "test" / "index.json").write_text(json.dumps(
        json.loads((prepared / "source" / "test" / "index.json").read_text())
        + [{"id": "no_truth", "file": "source_test_0.wav", "recording": "x"}]))
    _prepared(prepared, "cello", "valid", 4, False)
    _prepared(prepared, "cello", "test", 5, False)
    built = build_transfer_set(prepared, tmp_path / "out", TransferSetConfig(n_clips=2))
    assert [len(built["groups"][g]) for g in ("source", "target", "reference")] == [2, 2, 5]
    assert built["failed"][0]["id"] == "no_truth" and "true f0" in built["failed"][0]["reason"]
    assert all((tmp_path / "out" / "source" / item["f0_file"]).is_file() for item in built["groups"]["source"])


def test_transfer_set_config_refuses_scoring_the_target_against_itself():
    with pytest.raises(ConfigError, match="target_split and reference_split"):
        TransferSetConfig(target_split="test", reference_split="test")
    with pytest.raises(TimbrelabError, match="index.json"):
        build_transfer_set(Path("/nonexistent"), Path("/tmp/x"), TransferSetConfig())
