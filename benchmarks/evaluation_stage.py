"""Benchmark: where the evaluation stages' time goes (prints a markdown table; record it in BENCHMARKS.md).

Runs the stage bodies themselves, in-process, one system at a time: :func:`timbrelab.stages.evaluate.run`
for every system of ``params.yaml`` ``evaluate.systems``, then :func:`timbrelab.stages.report.run`, on the
pipeline's demo outputs (``data/transfer_set``, ``models/classifier``, ``models/ddsp``). They run in a
scratch root (``benchmarks/out/evaluation_stage/root``) whose ``data/transfer_set`` and ``models/*`` are
links to the repository's (read only), so the repository's ``reports/`` is left alone. No DVC, no MLflow
run: process start, imports and tracking are not in these figures (the stage lines of ``dvc repro`` give
those).

Parts are timed by wrapping the library functions the stage bodies call (``time.perf_counter`` around each
call, exclusive of the wrapped calls nested inside it, so the parts add up to the total):

* (a) ``System.transfer`` over every source clip; (b) ``scoring.analyse`` (f0 + loudness + log-CQT) of each
  output, and of each source clip (for the loudness reference); (c) the classifier's acceptance and patch
  embeddings; (d) ``System.reconstruct`` of every reference clip and its metrics; (e) ``summarise``: the
  mean / pooled-ratio bootstraps (``n_resamples``) and the Fréchet bootstrap (``frechet_resamples``);
* the stage's other work: reading clips, writing and re-reading the 16-bit WAVs, the true f0 tracks, the
  reference clips' embeddings (recomputed by every evaluate stage), loading the classifier and the system;
* the report: the reference embeddings and the Fréchet floor, ``write_report`` (log-CQT PNG per listening
  item, its WAV read, the HTML) and ``inline_report`` (the self-contained copy for MLflow);
* "rest": the stage body's wall time minus all of the above (loop, pitch and loudness metrics, JSON).

A warm-up (one ``analyse`` and one classifier call on a source clip) runs first and is shown on its own:
numba compilation / cache load, the swift ONNX model load and torch's first call, which every stage process
pays once.

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/evaluation_stage.py [--systems ddsp identity]
       (about 2 minutes on 2 cores for the demo transfer set)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

# benchmarks/ddsp.py: cpu model, cores, torch threads, load average
from ddsp import machine_info

OUT = REPO / "benchmarks" / "out" / "evaluation_stage"
LINKED = ("data/transfer_set", "models/classifier", "models/ddsp")


class Tracer:
    """Exclusive wall time and clip counts per part. A call made inside a wrapped call with a ``prefix``
    (the reference clips' embeddings, scoring an output, ``summarise``...) is its own part, named
    ``prefix › part``, and its time is not counted in the enclosing part's."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.clips: dict[str, int] = defaultdict(int)
        self.order: list[str] = []                      # parts by first call
        self._stack: list[list[Any]] = []               # per active call: [prefix or None, nested seconds]

    def wrap(self, fn: Callable, part: str, clips: Callable[..., int] | None = None,
             prefix: str | None = None) -> Callable:
        """``fn`` timed into ``part``; ``clips(*args, **kwargs)`` counts its clips (default 1 per call)."""
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            outer = next((frame[0] for frame in reversed(self._stack) if frame[0]), None)
            own = f"{prefix}: {part}" if prefix else part
            name = f"{outer} › {own}" if outer else own
            if name not in self.seconds:
                self.order.append(name)
                self.seconds[name] = 0.0
            frame = [prefix, 0.0]
            self._stack.append(frame)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self._stack.pop()
                if self._stack:
                    self._stack[-1][1] += elapsed
                self.seconds[name] += elapsed - frame[1]
                self.clips[name] += clips(*args, **kwargs) if clips else 1
        return timed

    @contextlib.contextmanager
    def patched(self, targets: list[tuple]) -> Iterator[None]:
        """``(module, attribute, part, clip counter[, prefix])``: each attribute timed while the block runs."""
        with contextlib.ExitStack() as stack:
            for owner, attr, *how in targets:
                stack.enter_context(mock.patch.object(owner, attr, self.wrap(getattr(owner, attr), *how)))
            yield


def first_len(*args: Any, **kwargs: Any) -> int:
    return len(args[0])


def scratch_root(out: Path) -> Path:
    """A root whose inputs are links to the repository's outputs; its reports/ is the benchmark's own."""
    root = out / "root"
    shutil.rmtree(out, ignore_errors=True)
    for rel in LINKED:
        if not (REPO / rel).exists():
            raise SystemExit(f"{REPO / rel}: missing; run `dvc repro` first")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(REPO / rel, target_is_directory=True)
    return root


def library_targets() -> list[tuple]:
    """Every function the evaluate and report stage bodies call that this benchmark times, with its part."""
    from timbrelab import audio
    from timbrelab.evaluation import evaluate, metrics, report, scoring
    from timbrelab.stages import evaluate as evaluate_stage
    from timbrelab.stages import report as report_stage

    none = lambda *a, **k: 0  # a call that is not one clip (the enclosing part counts the clips)
    return [
        (evaluate_stage, "load_classifier", "load classifier", None),
        (evaluate_stage, "load_system", "load system", none),
        (evaluate, "_read", "read clip WAV", None),
        (evaluate, "reference_embeddings", "own time", first_len, "reference clips (embeddings)"),
        (scoring, "analyse", "analyse (f0 + loudness + CQT)", None),
        (scoring, "clip_acceptance", "classifier acceptance", None),
        (scoring, "clip_embeddings", "classifier embeddings", None),
        (evaluate, "_write_and_read_back", "write", None, "output WAV (written, then re-read)"),
        (metrics, "load_true_f0", "true f0 track (read + resample)", None),
        (evaluate, "analyse", "(b) analyse source clip (loudness reference)", None),
        (evaluate, "score_output", "pitch + loudness metrics (own time)", None, "(b, c) score output"),
        (evaluate, "reconstruction_row", "(d) reconstruction metrics", None),
        (evaluate, "summarise", "own time", first_len, "(e) summarise"),
        (metrics, "bootstrap_ci", "mean bootstraps", none),
        (metrics, "bootstrap_ratio_ci", "pooled-ratio bootstraps", none),
        (metrics, "bootstrap_frechet_ci", "Fréchet bootstrap", first_len),
        (report_stage, "reference_embeddings", "own time", first_len, "reference clips (embeddings)"),
        (report_stage, "frechet_floor", "Fréchet floor", first_len),
        (audio, "load_audio", "read WAV", None),
        (report, "load_audio", "read WAV", None),
        (report, "render_cqt_png", "render log-CQT PNG", None),
        (report_stage, "write_report", "HTML (own time)", none, "write_report"),
        (report_stage, "inline_report", "inline_report", none),
    ]


def timed_system(tracer: Tracer, load_system: Callable) -> Callable:
    """``load_system`` whose systems time their transfer and reconstruction."""
    def load(*args: Any, **kwargs: Any):
        system = load_system(*args, **kwargs)
        system.transfer = tracer.wrap(system.transfer, "(a) transfer")
        system.reconstruct = tracer.wrap(system.reconstruct, "(d) reconstruct reference clip")
        return system
    return load


def warm_up(root: Path) -> float:
    from timbrelab.audio import load_audio
    from timbrelab.config import FeaturesConfig, validate
    from timbrelab.evaluation.classifier import (
        clip_acceptance,
        clip_embeddings,
        load_classifier,
    )
    from timbrelab.evaluation.scoring import analyse
    from timbrelab.evaluation.transfer_set import TransferSet

    ts = TransferSet(root / "data/transfer_set")
    features = validate(dict(ts.features_config), FeaturesConfig, "manifest features_config")
    classifier, _ = load_classifier(root / "models/classifier/model.pt")
    audio = load_audio(ts.clips("source")[0].path, features.sample_rate)[0]
    started = time.perf_counter()
    cqt = analyse(audio, features)["cqt"]
    clip_acceptance(classifier, cqt, ts.target_domain)
    clip_embeddings(classifier, cqt, 8)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="*", default=None, help="default: every key of evaluate.systems")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ["TIMBRELAB_PARAMS"] = str(REPO / "params.yaml")   # the report stage reads evaluate.systems

    import torch

    from timbrelab.config import load_params, load_stage_config
    from timbrelab.evaluation.transfer_set import TransferSet
    from timbrelab.stages import evaluate as evaluate_stage
    from timbrelab.stages import report as report_stage

    params = load_params(REPO / "params.yaml")
    cfg = load_stage_config("evaluate", evaluate_stage.EvaluateConfig, params)
    names = args.systems or list(cfg.systems)
    root = scratch_root(args.out)
    ts = TransferSet(root / "data/transfer_set")
    m = cfg.metrics
    print(f"# evaluation stages benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
    print(machine_info(torch.get_num_threads()) + f", OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"ONNX threads {os.environ.get('TIMBRELAB_ONNX_THREADS', '1')}")
    print(f"\nDemo transfer set: {len(ts.clips('source'))} source, {len(ts.clips('target'))} target, "
          f"{len(ts.clips('reference'))} reference clips (4 s); bootstraps: n_resamples {m.n_resamples}, "
          f"frechet_resamples {m.frechet_resamples}; embedding_hop {m.embedding_hop}.")
    print(f"\nWarm-up (first analyse + classifier call in the process): {warm_up(root):.2f} s\n")

    rows: list[tuple[str, str, float, int]] = []
    totals: dict[str, float] = {}
    runs = [(name, lambda name=name: evaluate_stage.run(cfg, root, name)) for name in names]
    if set(names) == set(cfg.systems):  # the report reads every system's results
        runs.append(("report", lambda: report_stage.run(load_stage_config("report", report_stage.ReportConfig, params),
                                                        root)))
    for name, body in runs:
        tracer = Tracer()
        with tracer.patched(library_targets()), \
                mock.patch.object(evaluate_stage, "load_system", timed_system(tracer, evaluate_stage.load_system)):
            started = time.perf_counter()
            body()
            totals[name] = time.perf_counter() - started
        rest = totals[name] - sum(tracer.seconds.values())
        rows += [(name, part, tracer.seconds[part], tracer.clips[part]) for part in tracer.order]
        rows += [(name, "rest (loop, results.json)", rest, 0),
                 (name, "**total (stage body)**", totals[name], 0)]

    print("| system | part | seconds | clips | seconds / clip |\n| --- | --- | --- | --- | --- |")
    for name, part, seconds, clips in rows:
        per_clip = f"{seconds / clips:.3f}" if clips else ""
        print(f"| {name} | {part} | {seconds:.3f} | {clips or ''} | {per_clip} |")
    print(f"\nAll stage bodies: {sum(totals.values()):.1f} s; scratch outputs in {args.out}; "
          f"1-minute load average at the end {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
