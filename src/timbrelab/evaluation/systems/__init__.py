"""The systems the evaluation compares: one module per system, each with a ``build`` function.

A system turns a source clip into an output clip at the features' sample rate (:meth:`System.transfer`)
and, where it has a model of the target, re-renders a real target clip from that clip's own features
(:meth:`System.reconstruct`; ``None`` where that means nothing, e.g. identity would score 0 by definition).

Adding a system (CycleGAN, the TimbreTron chain) is three small changes: write ``systems/<name>.py`` with
``build(params, root, features) -> System``; add its section under ``evaluate.systems`` in
``conf/config.yaml``; add a stage ``evaluate_<name>`` to dvc.yaml (a copy of ``evaluate_ddsp`` with the
system's own code and model as deps: ``tests/test_dvc_deps.py`` names any module it misses). ``dvc repro``
then evaluates that system alone and reruns the report; no other system is re-evaluated.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from timbrelab.config import FeaturesConfig
from timbrelab.errors import ConfigError

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class Output:
    """One transfer: audio (n,) float32 at the features' rate, and the octave shift the system applied to
    the pitch (the pitch metrics undo it before comparing with the source's true f0)."""

    audio: np.ndarray
    octave_shift: float = 0.0
    warnings: list[str] = field(default_factory=list)


class System:
    """Base: an identity-like system that knows its name, label and description."""

    label = ""
    description = ""
    transfers = True      # False: the outputs are real target clips (no source to keep pitch/loudness of)

    def transfer(self, audio: np.ndarray, seed: int) -> Output:
        raise NotImplementedError

    def reconstruct(self, audio: np.ndarray, seed: int) -> np.ndarray | None:
        return None


def load_system(name: str, params: Mapping[str, Any], root: Path, features: FeaturesConfig) -> System:
    """``timbrelab.evaluation.systems.<name>.build(params, root, features)``; ConfigError for an unknown name."""
    if not NAME.match(name):
        raise ConfigError(f"evaluate.systems: {name!r} is not a system name (lowercase letters, digits, _)")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        known = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem != "__init__")
        raise ConfigError(f"evaluate.systems.{name}: no module timbrelab/evaluation/systems/{name}.py "
                          f"(known systems: {', '.join(known)})") from None
    return module.build(dict(params), root, features)


def system_params(schema, params: Mapping[str, Any], name: str):
    """The system's section as its dataclass (unknown keys name the section)."""
    from timbrelab.config import from_known_keys

    return from_known_keys(schema, dict(params), f"params.yaml: evaluate.systems.{name}")
