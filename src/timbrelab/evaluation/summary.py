"""The evaluation's summary: every system's results side by side, ranked, as DVC metrics and report data.

Ranking: systems that transfer are ranked by the **transfer score** (per clip, target acceptance x raw
pitch accuracy, averaged over clips), higher first; ties (within rounding) are broken by the lower Fréchet
distance. The real-target row is a reference, not a competitor: it is listed last, unranked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from timbrelab.evaluation.scoring import METRICS

RANK_KEY = "transfer_score"
TIE_KEY = "frechet"


def _value(result: Mapping[str, Any], key: str) -> float | None:
    entry = (result.get("metrics") or {}).get(key)
    if entry is None or entry.get("value") is None or not math.isfinite(float(entry["value"])):
        return None
    return float(entry["value"])


def rank_systems(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Results in rank order, each with ``rank`` (1 = best; None for unranked rows)."""
    def key(result: Mapping[str, Any]) -> tuple[float, float, str]:
        score, tie = _value(result, RANK_KEY), _value(result, TIE_KEY)
        return (-round(score, 6) if score is not None else math.inf,
                tie if tie is not None else math.inf, str(result["system"]))

    ranked = sorted((r for r in results if r.get("transfers", True) and _value(r, RANK_KEY) is not None), key=key)
    unranked = [r for r in results if r not in ranked]
    rows = [{**r, "rank": i + 1} for i, r in enumerate(ranked)]
    return rows + [{**r, "rank": None} for r in sorted(unranked, key=lambda r: str(r["system"]))]


def metrics_document(ranked: Sequence[Mapping[str, Any]], floor: Mapping[str, Any] | None,
                     classifier: Mapping[str, Any]) -> dict[str, Any]:
    """``reports/metrics.json``: ``{system: {metric, metric_low, metric_high, rank}}``, the Fréchet floor and the
    classifier's held-out accuracy: numbers only, so `dvc metrics show/diff` can compare experiments."""
    doc: dict[str, Any] = {}
    for result in ranked:
        row: dict[str, Any] = {}
        for info in METRICS:
            entry = (result.get("metrics") or {}).get(info.key)
            if entry is None:
                continue
            row[info.key] = entry["value"]
            row[f"{info.key}_low"] = entry["low"]
            row[f"{info.key}_high"] = entry["high"]
        if result.get("rank") is not None:
            row["rank"] = result["rank"]
        row["clips"] = len(result.get("clips") or [])
        row["skipped"] = len(result.get("failed") or [])
        doc[str(result["system"])] = row
    if floor is not None:
        doc["frechet_floor"] = {"value": floor["value"], "low": floor["low"], "high": floor["high"]}
    doc["classifier"] = {"accuracy": classifier.get("test/accuracy"),
                         "balanced_accuracy": classifier.get("test/balanced_accuracy"),
                         **{f"accuracy_{d}": v for d, v in (classifier.get("test/per_domain_accuracy") or {}).items()}}
    return doc


def flat_metrics(doc: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{"ddsp": {"raw_pitch": 0.9}} -> {"ddsp.raw_pitch": 0.9} (numbers only), for MLflow."""
    flat: dict[str, float] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            flat[name] = float(value)
    return flat
