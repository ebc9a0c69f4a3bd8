"""report: reports/eval/<system>/ (every evaluate@<system>) -> reports/metrics.json + reports/index.html.

The summary of the evaluation: all systems side by side, ranked (:mod:`timbrelab.evaluation.summary`), the
Fréchet floor, the classifier's held-out accuracy; as DVC metrics (``dvc metrics show`` / ``diff``) and as an
offline listening page. Its MLflow run logs every number, a self-contained copy of the page (audio and
images inlined: the artifact viewer does not follow relative links) and links to the runs that trained the
models it evaluated (``run.<stage>`` tags).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timbrelab import config as config_mod
from timbrelab import dvcfiles, paths, tracking
from timbrelab.audio import load_audio
from timbrelab.config import FeaturesConfig, validate
from timbrelab.errors import ConfigError, TimbrelabError, run_main
from timbrelab.evaluation.classifier import load_classifier
from timbrelab.evaluation.evaluate import RESULTS
from timbrelab.evaluation.report import inline_report, write_report
from timbrelab.evaluation.scoring import METRICS, cqt_kwargs, frechet_floor, reference_embeddings
from timbrelab.evaluation.summary import RANK_KEY, flat_metrics, metrics_document, rank_systems
from timbrelab.evaluation.transfer_set import TransferSet
from timbrelab.fsutil import atomic_write_json, read_json, round_floats
from timbrelab.stages.common import StageResult, execute_stage
from timbrelab.stages.evaluate import CLASSIFIER, OUT as EVAL, TRANSFER_SET, EvaluateConfig

STAGE = "report"
REPORTS = Path("reports")
METRICS_FILE = REPORTS / "metrics.json"
HTML = REPORTS / "index.html"


@dataclass
class ReportConfig:
    listening_clips: int = 12

    def __post_init__(self) -> None:
        if self.listening_clips < 1:
            raise ConfigError(f"report.listening_clips ({self.listening_clips}) must be at least 1")


SCHEMAS = ReportConfig


def _systems() -> tuple[list[str], EvaluateConfig]:
    evaluate = config_mod.load_stage_config("evaluate", EvaluateConfig)
    return list(evaluate.systems), evaluate


def _load_results(root: Path, names: list[str]) -> list[dict[str, Any]]:
    results = []
    for name in names:
        path = root / EVAL / name / RESULTS
        if not path.is_file():
            raise TimbrelabError(f"{path}: missing; evaluate the system first with `dvc repro evaluate_{name}`")
        results.append(read_json(path))
    return results


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to reports/ (where index.html lives), POSIX style."""
    return Path(os.path.relpath(root / path, root / REPORTS)).as_posix()


def _listening(ts: TransferSet, ranked: list[dict[str, Any]], n: int, root: Path) -> list[dict[str, Any]]:
    targets = ts.clips("target")
    blocks = []
    for i, clip in enumerate(ts.clips("source")[:n]):
        items = [{"label": f"source ({ts.source_domain})", "audio": _rel(clip.path.relative_to(root), root)}]
        for result in ranked:
            if not result.get("transfers", True):
                continue
            done = {c["id"]: c for c in result["clips"]}
            if clip.id in done:
                items.append({"label": result["label"], "audio": _rel(EVAL / result["system"] / done[clip.id]["audio"],
                                                                      root)})
        target = targets[i % len(targets)]
        items.append({"label": f"real {ts.target_domain} ({target.id})",
                      "audio": _rel(target.path.relative_to(root), root)})
        blocks.append({"id": clip.id, "items": items})
    return blocks


def _classifier_section(metrics: dict[str, Any], domains: list[str]) -> dict[str, Any]:
    return {"domains": domains, "accuracy": metrics["test/accuracy"],
            "balanced_accuracy": metrics["test/balanced_accuracy"],
            "per_domain": metrics["test/per_domain_accuracy"], "confusion": metrics["test/confusion"],
            "note": "held-out (test split) accuracy of the classifier behind the acceptance and Fréchet columns, "
                    "per 0.5 s patch; rows: true domain, columns: predicted"}


def run(cfg: ReportConfig, root: Path) -> StageResult:
    names, evaluate = _systems()
    ts = TransferSet(root / TRANSFER_SET)
    features = validate(dict(ts.features_config), FeaturesConfig, f"{TRANSFER_SET}/manifest.json features_config")
    classifier, payload = load_classifier(root / CLASSIFIER)
    ranked = rank_systems(_load_results(root, names))
    reference = reference_embeddings([load_audio(c.path, features.sample_rate)[0] for c in ts.clips("reference")],
                                     features, classifier, evaluate.metrics)
    floor = frechet_floor(reference, evaluate.metrics)
    classifier_metrics = payload.get("metrics") or {}
    doc = round_floats(metrics_document(ranked, floor, classifier_metrics))
    atomic_write_json(root / METRICS_FILE, doc)

    data = {
        "title": f"timbrelab evaluation: {ts.source_domain} -> {ts.target_domain}",
        "source_domain": ts.source_domain, "target_domain": ts.target_domain,
        "ranking": f"Systems that transfer are ranked by the transfer score ({RANK_KEY}: per clip, target acceptance "
                   "x raw pitch accuracy, averaged over clips), higher first; ties go to the lower Fréchet distance. "
                   f"The real {ts.target_domain} row is the ceiling for timbre, not ranked.",
        "metrics": [info.__dict__ for info in METRICS],
        "systems": [{"name": r["system"], "label": r["label"], "description": r["description"], "rank": r["rank"],
                     "metrics": r["metrics"]} for r in ranked],
        "reference_rows": ([{"label": f"Fréchet floor (two halves of {floor['n'] * 2} real {ts.target_domain} "
                                      "reference clips)", "metrics": {"frechet": floor}}] if floor else []),
        "classifier": _classifier_section(classifier_metrics, list(classifier.domains)),
        "clips": _listening(ts, ranked, cfg.listening_clips, root),
        "notes": [f"Intervals: {100 * evaluate.metrics.confidence:g} % percentile bootstrap over clips "
                  f"({evaluate.metrics.n_resamples} resamples; Fréchet {evaluate.metrics.frechet_resamples}).",
                  f"Transfer set: {len(ts.clips('source'))} {ts.source_domain} clips, "
                  f"{len(ts.clips('target'))} real {ts.target_domain} clips (ceiling row), "
                  f"{len(ts.clips('reference'))} {ts.target_domain} reference clips (Fréchet reference, "
                  "reconstruction)."],
    }
    html = write_report(root / REPORTS, data, sample_rate=features.sample_rate, cqt=cqt_kwargs(features))
    artifacts = [root / METRICS_FILE]
    with tempfile.TemporaryDirectory() as tmp:
        standalone = Path(tmp) / "index.html"
        standalone.write_text(inline_report(html), encoding="utf-8")
        run_handle = tracking.active_run()
        if run_handle is not None:
            run_handle.log_artifact(standalone, "report")
    best = next((r for r in ranked if r["rank"] == 1), None)
    return StageResult(metrics=flat_metrics(doc), artifacts=artifacts, metrics_file=METRICS_FILE,
                       summary=f"ranked {len(ranked)} systems (best: {best['system'] if best else 'none'}); "
                               f"wrote {METRICS_FILE} and {HTML}")


def link_paths(root: Path) -> list[str]:
    """The outputs whose producing runs the report run links to: each system's evaluation and the models
    it loaded (the deps of its evaluate stage), the classifier."""
    names, _ = _systems()
    linked = [str(CLASSIFIER.parent)]
    for name in names:
        linked += [str(EVAL / name), *dvcfiles.stage_deps(root, f"evaluate_{name}")]
    return list(dict.fromkeys(linked))


def main() -> int:
    return run_main(lambda: execute_stage(STAGE, SCHEMAS, run, link_paths=link_paths(paths.repo_root())))


if __name__ == "__main__":
    sys.exit(main())
