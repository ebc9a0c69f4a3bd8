"""Benchmark: the evaluation's systems on two real recordings (prints markdown tables; record them in BENCHMARKS.md).

The recordings (``../shared/eval-audio`` beside the repository by default; the project never depends on
them, so this is a benchmark and not a test; see that folder's README.md for their sources and licences):

* ``trumpet-solo-sorohanro.ogg``: monophonic jazz trumpet (44.1 kHz stereo, 5.3 s);
* ``brahms-hungarian-dance-5-strings.ogg``: a string orchestra (polyphonic, 22.05 kHz, 45.8 s).

Each is read at the transfer set's rate, mono (:func:`timbrelab.audio.load_audio`), and cut into consecutive
4 s clips; a final part of at least 1 s is padded with silence to 4 s (``--last pad``, the default) or
dropped (``--last drop``); a final part under 1 s is always dropped. A clip whose loudness never rises above
``features.silence_db`` is left out, as the features stage does: both recordings end in near silence (the
trumpet plays for 3.6 s of its 5.3 s; both tails peak below -70 dBFS), so here the padded last clip is the one
left out, and the trumpet gives a single clip: its intervals are that clip's values. The systems: ``ddsp`` (the trained
``models/ddsp``), ``identity`` and ``cqt_griffinlim`` (settings from ``params.yaml`` ``evaluate.systems``;
Griffin-Lim 32 iterations where params has none), built by :func:`~timbrelab.evaluation.systems.load_system`
on the features config of ``data/transfer_set/manifest.json``. A clip the DDSP transfer refuses
(AudioError: silent or unpitched) is counted and listed, not scored.

Every output is scored by :func:`timbrelab.evaluation.scoring.score_output` and summarised by
:func:`~timbrelab.evaluation.scoring.summarise` with the ``evaluate.metrics`` settings, as the evaluate stage
does, except where real audio has no truth:

* **timbre** (both recordings): the classifier's (``models/classifier``) acceptance as the target (cello),
  and the Fréchet distance of the outputs' patch embeddings to the transfer set's real cello clips
  (``data/transfer_set/reference/``), next to those clips' own floor (two halves). The transfer set's
  ``target/`` cello clips are scored too, as the ceiling row.
* **pitch** (trumpet only): real recordings carry no true f0, so the reference is a *pseudo-truth: pyin on
  the source* (pYIN, the more accurate but slow estimator, on each source clip on the features' frame grid;
  voiced where its confidence >= ``features.pitch.voiced_threshold``). The outputs' f0 is estimated as the
  scoring does (the features' estimator, swift) and compared after undoing the system's octave shift, so
  the identity row measures swift against pyin. The strings are polyphonic: pitch is n/a (so is the
  transfer score, acceptance x raw pitch).
* **loudness** (both): L1 and correlation against the source clip's own loudness envelope.

Reconstruction needs no real recording (it re-renders the reference clips): it is left to the evaluate stage.
Wall time per system is that of ``System.transfer`` alone, summed over the clips; real-time factor (RTF) =
that time / the clips' duration (below 1: faster than real time); scoring wall = writing and re-reading the
WAVs and ``score_output`` (f0, loudness, CQT, classifier) of the outputs.

Writes ``benchmarks/out/eval_real_audio/``: the clips (``<recording>/source/``), each system's outputs
(``<recording>/<system>/``, the 16-bit WAVs that were scored), a few real cello clips, ``results.json``
(per-clip values, summaries, refusals) and ``index.html``, a listening page with log-CQT images
(:func:`timbrelab.evaluation.report.write_report`).

Needs the pipeline's outputs (``dvc repro``): models/ddsp, models/classifier, data/transfer_set.

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/eval_real_audio.py [--audio-dir DIR] [--max-clips N]
       (about 2 minutes on 2 cores; ``--max-clips 1`` for a smoke test)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

# benchmarks/ddsp.py: cpu model, cores, torch threads, load average
from ddsp import machine_info

DEFAULT_AUDIO = REPO.parent / "shared" / "eval-audio"
OUT = REPO / "benchmarks" / "out" / "eval_real_audio"
TRANSFER_SET = REPO / "data" / "transfer_set"
CLASSIFIER = REPO / "models" / "classifier" / "model.pt"
SYSTEMS = ("ddsp", "identity", "cqt_griffinlim")
DEFAULT_SYSTEM_PARAMS = {"cqt_griffinlim": {"iters": 32}}
CLIP_SECONDS = 4.0
MIN_LAST_SECONDS = 1.0
PSEUDO_TRUTH = "pseudo-truth: pyin on the source"
# The table's metrics (reconstruction does not apply here) and their decimals.
COLUMNS = {"transfer_score": 3, "raw_pitch": 3, "raw_chroma": 3, "f0_cents": 1, "loudness_l1": 2,
           "loudness_corr": 3, "acceptance": 3, "frechet": 2}


@dataclass(frozen=True)
class Recording:
    key: str
    file: str
    title: str
    pitched: bool      # monophonic: pitch is scored against pyin's pseudo-truth


RECORDINGS = (
    Recording("trumpet", "trumpet-solo-sorohanro.ogg", "jazz trumpet (monophonic)", True),
    Recording("strings", "brahms-hungarian-dance-5-strings.ogg", "string orchestra, Brahms (polyphonic)", False),
)


@dataclass
class Clip:
    id: str
    audio: np.ndarray
    seconds: float     # of the recording in it (the rest is padding)


# ------------------------------------------------------------------------------------------- helpers


def cut_clips(audio: np.ndarray, sample_rate: int, key: str, last: str) -> list[Clip]:
    """Consecutive CLIP_SECONDS clips; a final part >= MIN_LAST_SECONDS padded with silence or dropped."""
    n = round(CLIP_SECONDS * sample_rate)
    clips = []
    for index, start in enumerate(range(0, audio.shape[0], n)):
        part = audio[start:start + n]
        if part.shape[0] < n and (last == "drop" or part.shape[0] < MIN_LAST_SECONDS * sample_rate):
            break
        padded = np.pad(part, (0, n - part.shape[0])).astype(np.float32)
        clips.append(Clip(f"{key}-{index:02d}", padded, part.shape[0] / sample_rate))
    return clips


def write_and_read_back(path: Path, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """What is scored is the 16-bit WAV as written (as the evaluate stage does)."""
    from timbrelab.audio import load_audio, save_wav

    path.parent.mkdir(parents=True, exist_ok=True)
    save_wav(path, audio, sample_rate)
    return load_audio(path, sample_rate)[0]


def pyin_pseudo_truth(audio: np.ndarray, features) -> tuple[np.ndarray, np.ndarray]:
    """``(f0_hz, voiced)`` of the source by pyin on the features' grid (f0 0 where unvoiced)."""
    from timbrelab.dsp.pitch import estimate_f0

    p = features.pitch
    hz, confidence = estimate_f0(audio, features.sample_rate, features.frame_hop, estimator="pyin",
                                 fmin_hz=p.fmin_hz, fmax_hz=p.fmax_hz)
    voiced = confidence >= p.voiced_threshold
    return np.where(voiced, hz, 0.0).astype(np.float64), voiced


def cell(stat: dict[str, Any] | None, decimals: int) -> str:
    if not stat or stat.get("value") is None or not math.isfinite(stat["value"]):
        return "n/a"
    return f"{stat['value']:.{decimals}f} [{stat['low']:.{decimals}f}, {stat['high']:.{decimals}f}]"


def metric_header() -> str:
    from timbrelab.evaluation.scoring import METRICS

    info = {m.key: m for m in METRICS}
    arrow = {"higher": "↑", "lower": "↓"}
    return " | ".join(f"{info[k].label}{f' ({info[k].unit})' if info[k].unit else ''} {arrow[info[k].direction]}"
                      for k in COLUMNS)


def summary_row(label: str, summary: dict[str, Any], extra: list[str]) -> str:
    return "| " + " | ".join([label, *extra, *(cell(summary.get(k), d) for k, d in COLUMNS.items())]) + " |"


# ------------------------------------------------------------------------------------------- the run


class Evaluation:
    """The transfer set's features config, the classifier, the cello reference and the metrics settings."""

    def __init__(self) -> None:
        from timbrelab.audio import load_audio
        from timbrelab.config import (
            FeaturesConfig,
            load_params,
            load_stage_config,
            validate,
        )
        from timbrelab.evaluation.classifier import load_classifier
        from timbrelab.evaluation.evaluate import check_classifier_grid
        from timbrelab.evaluation.scoring import frechet_floor, reference_embeddings
        from timbrelab.evaluation.transfer_set import TransferSet
        from timbrelab.stages.evaluate import EvaluateConfig

        self.params = load_stage_config("evaluate", EvaluateConfig, load_params(REPO / "params.yaml"))
        self.cfg = self.params.metrics
        self.ts = TransferSet(TRANSFER_SET)
        self.features = validate(dict(self.ts.features_config), FeaturesConfig, f"{TRANSFER_SET}/manifest.json")
        self.classifier, _ = load_classifier(CLASSIFIER)
        check_classifier_grid(self.classifier, self.features, str(CLASSIFIER))
        self.target = self.ts.target_domain
        sr = self.features.sample_rate
        self.reference = reference_embeddings([load_audio(c.path, sr)[0] for c in self.ts.clips("reference")],
                                              self.features, self.classifier, self.cfg)
        self.floor = frechet_floor(self.reference, self.cfg)
        self.cello = [(c.id, load_audio(c.path, sr)[0]) for c in self.ts.clips("target")]

    def system(self, name: str):
        from timbrelab.evaluation.systems import load_system

        params = self.params.systems.get(name, DEFAULT_SYSTEM_PARAMS.get(name, {}))
        return load_system(name, params, REPO, self.features)

    def score(self, clip_id: str, output: np.ndarray, **kwargs):
        from timbrelab.evaluation.scoring import score_output

        return score_output(clip_id, output, self.features, self.classifier, self.target, self.cfg, **kwargs)

    def summarise(self, scores) -> dict[str, Any]:
        from timbrelab.evaluation.scoring import summarise

        return summarise(scores, None, self.reference, self.cfg)


def run_system(ev: Evaluation, name: str, system, rec: Recording, clips: list[Clip], sources: list[dict],
               truths: list, out: Path) -> dict[str, Any]:
    """Transfer and score every clip; refusals (TimbrelabError) are recorded, not scored."""
    from timbrelab.errors import TimbrelabError

    sr = ev.features.sample_rate
    scores, refused, rows, transfer_s, score_s = [], [], [], 0.0, 0.0
    for index, clip in enumerate(clips):
        started = time.perf_counter()
        try:
            result = system.transfer(clip.audio, seed=ev.cfg.seed + index)
        except TimbrelabError as exc:
            refused.append({"id": clip.id, "reason": str(exc).splitlines()[0]})
            continue
        finally:
            transfer_s += time.perf_counter() - started
        started = time.perf_counter()
        output = write_and_read_back(out / rec.key / name / f"{clip.id}.wav", result.audio, sr)
        score = ev.score(clip.id, output, source=sources[index], true_f0=truths[index],
                         octave_shift=result.octave_shift)
        score.warnings = list(result.warnings)
        score_s += time.perf_counter() - started
        scores.append(score)
        rows.append({**score.row(), "audio": f"{rec.key}/{name}/{clip.id}.wav"})
    audio_s = len(clips) * CLIP_SECONDS
    return {"system": name, "label": system.label, "description": system.description, "clips": rows,
            "refused": refused, "metrics": ev.summarise(scores) if scores else {}, "transfer_seconds": transfer_s,
            "score_seconds": score_s, "audio_seconds": audio_s, "rtf": transfer_s / audio_s}


def cello_ceiling(ev: Evaluation, out: Path) -> dict[str, Any]:
    """The transfer set's real cello clips (target/) scored as outputs: the timbre ceiling."""
    sr = ev.features.sample_rate
    scores = [ev.score(cid, write_and_read_back(out / "cello" / f"{cid}.wav", audio, sr)) for cid, audio in ev.cello]
    return {"system": "target", "label": f"real {ev.target} clips (transfer set target/)",
            "description": "recordings of the target instrument (the ceiling for timbre)",
            "clips": [{**s.row(), "audio": f"cello/{s.id}.wav"} for s in scores], "metrics": ev.summarise(scores)}


def listening_data(ev: Evaluation, results: dict[str, list[dict]], clips: dict[str, list[Clip]],
                   ceiling: dict[str, Any], n_listen: int) -> dict[str, Any]:
    from timbrelab.evaluation.scoring import METRICS

    metrics = []
    for info in METRICS:
        if info.key in COLUMNS:
            entry = dict(info.__dict__)
            if info.group == "pitch" or info.key == "transfer_score":
                entry["description"] += f" (real recordings: {PSEUDO_TRUTH}; trumpet only)"
            metrics.append(entry)
    systems = [{"name": r["system"], "label": f"{rec.key}: {r['label']}", "description": r["description"],
                "rank": None, "metrics": r["metrics"]} for rec in RECORDINGS if rec.key in results
               for r in results[rec.key]]
    systems.append({"name": "target", "label": ceiling["label"], "description": ceiling["description"],
                    "rank": None, "metrics": ceiling["metrics"]})
    blocks = []
    for rec in RECORDINGS:
        for i, clip in enumerate(clips.get(rec.key, [])[:n_listen]):
            items = [{"label": f"source ({rec.key})", "audio": f"{rec.key}/source/{clip.id}.wav"}]
            for r in results[rec.key]:
                done = {c["id"]: c for c in r["clips"]}
                if clip.id in done:
                    items.append({"label": r["label"], "audio": done[clip.id]["audio"]})
            cello = ceiling["clips"][i % len(ceiling["clips"])]
            items.append({"label": f"real {ev.target} ({cello['id']})", "audio": cello["audio"]})
            blocks.append({"id": clip.id, "items": items})
    floor = ev.floor
    return {
        "title": f"timbrelab on real recordings -> {ev.target}",
        "source_domain": "real recordings (jazz trumpet; string orchestra)", "target_domain": ev.target,
        "ranking": "Not ranked: two recordings, few clips. Pitch is scored on the trumpet only, against a "
                   f"{PSEUDO_TRUTH} (no true f0 exists for a real recording); the strings are polyphonic.",
        "metrics": metrics, "systems": systems,
        "reference_rows": ([{"label": f"Fréchet floor (two halves of {floor['n'] * 2} real {ev.target} reference "
                                      "clips)", "metrics": {"frechet": floor}}] if floor else []),
        "clips": blocks,
        "notes": [f"Clips: consecutive {CLIP_SECONDS:g} s; see results.json for the per-clip values and refusals.",
                  (f"Intervals: {100 * ev.cfg.confidence:g} % percentile bootstrap over clips "
                   f"({ev.cfg.n_resamples} resamples; Fréchet {ev.cfg.frechet_resamples}); with this few clips "
                   "they say little.")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO, help="folder of the two recordings")
    parser.add_argument("--max-clips", type=int, default=None, help="at most this many clips per recording")
    parser.add_argument("--last", choices=("pad", "drop"), default="pad",
                        help=f"a final part of >= {MIN_LAST_SECONDS:g} s: pad it with silence (default) or drop it")
    parser.add_argument("--listening-clips", type=int, default=4, help="clips per recording on the listening page")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch

    from timbrelab.audio import load_audio
    from timbrelab.evaluation.report import write_report
    from timbrelab.evaluation.scoring import analyse

    begun = time.perf_counter()
    print(f"# evaluation on real recordings — {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
    print(machine_info(torch.get_num_threads()) + f", ONNX threads {os.environ.get('TIMBRELAB_ONNX_THREADS', '1')}")
    ev = Evaluation()
    sr = ev.features.sample_rate
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    names = list(SYSTEMS)
    systems = {name: ev.system(name) for name in names}
    iters = getattr(systems["cqt_griffinlim"], "iters", None)
    print(f"\nRecordings from {args.audio_dir}; {sr} Hz mono, consecutive {CLIP_SECONDS:g} s clips, a final part "
          f">= {MIN_LAST_SECONDS:g} s {'padded with silence' if args.last == 'pad' else 'dropped'} (shorter: dropped); "
          f"systems {', '.join(names)} (Griffin-Lim {iters} iterations); target {ev.target}, Fréchet reference: "
          f"{len(ev.reference)} real {ev.target} clips of {TRANSFER_SET.relative_to(REPO)}/reference/. "
          f"Pitch: trumpet only, {PSEUDO_TRUTH} (pYIN, voiced at confidence >= "
          f"{ev.features.pitch.voiced_threshold:g}), outputs' f0 by {ev.features.pitch.estimator}, after the "
          f"system's octave shift.")

    results: dict[str, list[dict]] = {}
    clips_of: dict[str, list[Clip]] = {}
    silent: list[Clip] = []
    pyin_s = 0.0
    for rec in RECORDINGS:
        audio = load_audio(args.audio_dir / rec.file, sr)[0]
        clips = cut_clips(audio, sr, rec.key, args.last)[:args.max_clips]
        for clip in clips:  # the systems get the 16-bit clip the page plays
            clip.audio = write_and_read_back(args.out / rec.key / "source" / f"{clip.id}.wav", clip.audio, sr)
        analysed = [(clip, analyse(clip.audio, ev.features)) for clip in clips]
        # As the features stage: a clip whose loudness never rises above silence_db is left out.
        sounding = [(c, a) for c, a in analysed if float(np.max(a["loudness_db"])) > ev.features.silence_db]
        silent += [c for c, a in analysed if all(c is not kept for kept, _ in sounding)]
        clips, sources = [c for c, _ in sounding], [a for _, a in sounding]
        clips_of[rec.key] = clips
        started = time.perf_counter()
        truths = [pyin_pseudo_truth(clip.audio, ev.features) if rec.pitched else None for clip in clips]
        pyin_s += time.perf_counter() - started
        results[rec.key] = [run_system(ev, name, systems[name], rec, clips, sources, truths, args.out)
                            for name in names]
    ceiling = cello_ceiling(ev, args.out)

    print(f"\n## Summary (value [{100 * ev.cfg.confidence:g} % bootstrap CI over clips])\n")
    print(f"| recording | system | clips scored / refused | transfer wall (s) | RTF | scoring wall (s) | "
          f"{metric_header()} |")
    print("| --- | --- | --- | --- | --- | --- |" + " --- |" * len(COLUMNS))
    for rec in RECORDINGS:
        for r in results[rec.key]:
            print(summary_row(rec.key, r["metrics"], [r["system"], f"{len(r['clips'])} / {len(r['refused'])}",
                                                      f"{r['transfer_seconds']:.2f}", f"{r['rtf']:.3f}",
                                                      f"{r['score_seconds']:.2f}"]))
    print(summary_row("(reference)", ceiling["metrics"],
                      [ceiling["label"], f"{len(ceiling['clips'])} / 0", "", "", ""]))
    if ev.floor:
        label = f"Fréchet floor: two halves of {ev.floor['n'] * 2} reference {ev.target} clips"
        print(summary_row("(reference)", {"frechet": ev.floor}, [label, "", "", "", ""]))

    print("\n## Per clip\n")
    print("| clip | recording s | system | octave shift | acceptance | raw pitch | f0 error (cents) | loudness L1 (dB) "
          "| loudness corr. | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"
    for rec in RECORDINGS:
        seconds = {c.id: c.seconds for c in clips_of[rec.key]}
        for r in results[rec.key]:
            for c in r["clips"]:
                note = "; ".join(c.get("warnings", []))
                print(f"| {c['id']} | {seconds[c['id']]:.2f} | {r['system']} | {c['octave_shift']:+g} | "
                      f"{c['acceptance']:.3f} | {fmt(c.get('raw_pitch'), 3)} | {fmt(c.get('f0_cents'), 1)} | "
                      f"{fmt(c.get('loudness_l1'), 2)} | {fmt(c.get('loudness_corr'), 3)} | {note} |")
            for f in r["refused"]:
                print(f"| {f['id']} | {seconds[f['id']]:.2f} | {r['system']} | | | | | | | refused: {f['reason']} |")

    refusals = {f"{rec.key}/{r['system']}": len(r["refused"]) for rec in RECORDINGS for r in results[rec.key]
                if r["refused"]}
    print(f"\nSilent clips left out before the systems (loudness never above features.silence_db = "
          f"{ev.features.silence_db:g} dB, the features stage's rule): "
          f"{', '.join(f'{c.id} ({c.seconds:.2f} s of recording)' for c in silent) or 'none'}. Refused clips: "
          f"{', '.join(f'{k} {v}' for k, v in refusals.items()) or 'none'}. pyin pseudo-truth: {pyin_s:.1f} s for "
          f"{len(clips_of['trumpet']) * CLIP_SECONDS:g} s of trumpet clips.")

    (args.out / "results.json").write_text(json.dumps(
        {"recordings": {rec.key: {"file": rec.file, "clips": [{"id": c.id, "seconds": c.seconds}
                                                              for c in clips_of[rec.key]],
                                  "systems": results[rec.key]} for rec in RECORDINGS},
         "silent": [{"id": c.id, "seconds": c.seconds} for c in silent],
         "ceiling": ceiling, "frechet_floor": ev.floor, "pitch_reference": PSEUDO_TRUTH}, indent=1, default=float))
    c = ev.features.cqt
    html = write_report(args.out, listening_data(ev, results, clips_of, ceiling, args.listening_clips),
                        sample_rate=sr, cqt={"hop_length": c.hop_length, "fmin_hz": c.fmin_hz,
                                             "bins_per_octave": c.bins_per_octave, "n_bins": c.n_bins,
                                             "log_floor": c.log_floor})
    print(f"\nListening page and WAVs: {html} (outputs in {args.out}/<recording>/<system>/). Benchmark total "
          f"{time.perf_counter() - begun:.0f} s; 1-minute load average at the end {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
