"""dvc.yaml lists precisely each stage's own code: every timbrelab module the stage imports (directly
or through other modules, function-level imports included), and nothing it does not import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# Modules that cannot change a stage's outputs: error types, MLflow tracking (and the dvc.yaml reading and
# repository discovery behind its tags), package markers.
NO_EFFECT_ON_OUTPUTS = {"timbrelab", "timbrelab.errors", "timbrelab.tracking", "timbrelab.dvcfiles", "timbrelab.paths",
                        "timbrelab.stages", "timbrelab.data", "timbrelab.models", "timbrelab.inference",
                        "timbrelab.training", "timbrelab.evaluation"}


def module_file(name: str) -> Path:
    path = SRC / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_timbrelab_modules(name: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if name in seen or not module_file(name).exists():
        return seen
    seen.add(name)
    tree = ast.parse(module_file(name).read_text())
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.startswith("timbrelab") and module_file(target).exists():
                imported_timbrelab_modules(target, seen)
    return seen


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_exactly_the_imported_modules(stage):
    spec = STAGES[stage]
    module, *args = spec["cmd"].split("-m ", 1)[1].split()
    # `python -m timbrelab.stages.X` first runs the package's __init__ (which pins the CPU code paths:
    # timbrelab.cpu), whether or not the stage's own modules import the package by name.
    seen = imported_timbrelab_modules(module, imported_timbrelab_modules("timbrelab"))
    if module == "timbrelab.stages.evaluate":
        # The evaluation imports the system named on its command line at run time (importlib).
        seen = imported_timbrelab_modules(f"timbrelab.evaluation.systems.{args[0]}", seen)
        from timbrelab.models.registry import MODELS

        if args[0] in MODELS:   # a system that is a registered model builds it through the registry (lazily)
            seen = imported_timbrelab_modules(MODELS[args[0]].build.partition(":")[0], seen)
    if module == "timbrelab.stages.train":
        # The generic train stage resolves the model's parts through the registry at run time (dotted paths).
        from timbrelab.models.registry import get

        model = get(args[0])
        for part in ("build", "lightning", "schema", "train", "summary"):
            if getattr(model, part):
                seen = imported_timbrelab_modules(getattr(model, part).partition(":")[0], seen)
    needed = {module_file(m).relative_to(REPO).as_posix() for m in seen - NO_EFFECT_ON_OUTPUTS}
    declared = {dep for dep in spec["deps"] if dep.startswith("src/")}
    assert needed - declared == set(), f"{stage}: imported but not a dvc.yaml dep"
    assert declared - needed == set(), f"{stage}: a dvc.yaml dep it does not import"
