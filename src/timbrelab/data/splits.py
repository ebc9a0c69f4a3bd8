"""Split fractions and how many items each split gets: one rule for recordings and instruments."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from timbrelab.errors import ConfigError

SPLITS = ("train", "valid", "test")


def split_fractions(split: Any, where: str) -> dict[str, float]:
    """``split`` (SplitFractions or a mapping) as {split: fraction}; ConfigError naming ``where``
    unless every fraction is >= 0 and they sum to 1."""
    get = split.get if isinstance(split, Mapping) else (lambda key, default=None: getattr(split, key, default))
    fractions: dict[str, float] = {}
    for name in SPLITS:
        value = get(name, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}.{name} = {value!r}: expected a fraction >= 0")
        fractions[name] = float(value)
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"{where}: train + valid + test = {total:g}, they must sum to 1 "
                          f"(got {', '.join(f'{k}={v:g}' for k, v in fractions.items())})")
    return fractions


def split_counts(n: int, fractions: Mapping[str, float], *, at_least_one: bool = True) -> dict[str, int]:
    """How many of ``n`` items go to each split.

    Largest remainder on ``fraction * n``; then, with ``at_least_one``, every split with a positive
    fraction gets at least one item as far as ``n`` allows (train first, then valid, then test), taken
    from the largest split that has more than one.
    """
    raw = {name: fractions[name] * n for name in SPLITS}
    counts = {name: math.floor(raw[name] + 1e-9) for name in SPLITS}
    rest = n - sum(counts.values())
    by_remainder = sorted(SPLITS, key=lambda name: (-(raw[name] - counts[name]), SPLITS.index(name)))
    for name in by_remainder[:max(rest, 0)]:
        counts[name] += 1
    if not at_least_one:
        return counts
    for name in SPLITS:
        if fractions[name] > 0 and counts[name] == 0:
            donors = [d for d in SPLITS if counts[d] > 1]
            if not donors:
                break
            donor = max(donors, key=lambda d: (counts[d], -SPLITS.index(d)))
            counts[donor] -= 1
            counts[name] += 1
    return counts
