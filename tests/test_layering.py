"""The import graph points one way (docs/models.md draws it): stages -> training -> models -> dsp;
inference -> models; evaluation -> inference; nothing but the CLI's stage runner and the Hydra app imports
stages; no module reaches into another's private names. Every import counts, function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "timbrelab"

# layer -> layers it must never import (a layer is the first part of the module path under timbrelab)
FORBIDDEN = {
    "dsp": {"models", "training", "inference", "evaluation", "stages", "tracking", "cli", "hydra_app"},
    "models": {"training", "inference", "evaluation", "stages", "tracking", "cli", "hydra_app", "data"},
    "inference": {"training", "evaluation", "stages", "cli", "hydra_app"},
    "training": {"stages", "inference", "evaluation", "cli", "hydra_app"},
    "evaluation": {"training", "stages", "cli", "hydra_app"},
    "data": {"models", "training", "inference", "evaluation", "stages", "cli", "hydra_app"},
    "config": {"tracking", "dvcfiles", "stages", "training", "models", "inference", "evaluation"},
    "paths": {"tracking", "dvcfiles", "config"},
}
STAGE_IMPORTERS = {"timbrelab.cli", "timbrelab.hydra_app"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every absolute timbrelab import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names if alias.name.startswith("timbrelab")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("timbrelab"):
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layering_violations(module: str, path: Path) -> list[str]:
    bad = []
    for target, names in imports(path):
        for t in [target, *(f"{target}.{n}" for n in names)]:
            if layer(t) in FORBIDDEN.get(layer(module), set()) and layer(t) != layer(module):
                bad.append(t)
            if layer(t) == "stages" and layer(module) != "stages" and module not in STAGE_IMPORTERS:
                bad.append(t)
    return sorted(set(bad))


def private_uses(module: str, path: Path, known: dict[str, Path]) -> list[str]:
    bad = [f"{target}.{n}" for target, names in imports(path) for n in names
           if n.startswith("_") and not n.startswith("__") and target != module]
    tree = ast.parse(path.read_text())
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("timbrelab") for alias in node.names
               if f"{node.module}.{alias.name}" in known}
    aliases |= {(alias.asname or alias.name) for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names if alias.name in known}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            bad.append(f"{node.value.id}.{node.attr}")
    return bad


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module):
    bad = layering_violations(module, MODULES[module])
    assert not bad, f"{module} imports {bad} against the layering"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    bad = private_uses(module, MODULES[module], MODULES)
    assert not bad, f"{module} uses private names of other modules: {bad}"


def test_the_rules_catch_a_violation(tmp_path):
    """The checks above can fail: a models module that imports training and stages, and one that reaches a
    private name of another module both ways."""
    bad = tmp_path / "bad.py"
    bad.write_text("from timbrelab.training.loop import fit\nfrom timbrelab.stages import common\n"
                   "from timbrelab.dsp import pitch\nfrom timbrelab.dsp.synth import _hidden\n"
                   "pitch._swift_detector()\n")
    assert layering_violations("timbrelab.models.bad", bad) == [
        "timbrelab.stages", "timbrelab.stages.common", "timbrelab.training.loop", "timbrelab.training.loop.fit"]
    assert private_uses("timbrelab.models.bad", bad, MODULES) == ["timbrelab.dsp.synth._hidden",
                                                                  "pitch._swift_detector"]
