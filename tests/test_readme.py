"""The doc-test blocks of README.md and docs/*.md (tests/readme.py): each is run by some test, each workflow
section has one, and the harness splits and substitutes the way the tests rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import readme

TESTS = Path(__file__).resolve().parent
WORKFLOW_SECTIONS = ("MLflow", "Sweeps", "Experiments and remotes", "Scaling out")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^(#+) (.+)$", re.MULTILINE)


def _sections(text: str) -> list[tuple[str, str]]:
    """``(title, text)`` of every heading's section, up to the next heading of the same or a higher level
    (headings inside code fences are not headings)."""
    unfenced = _FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), text)    # same offsets, no "# " lines
    headings = [(len(m[1]), m[2].strip(), m.start()) for m in _HEADING.finditer(unfenced)]
    out = []
    for i, (level, title, start) in enumerate(headings):
        end = next((s for lvl, _, s in headings[i + 1:] if lvl <= level), len(text))
        out.append((title, text[start:end]))
    return out


def test_every_doctest_block_is_run_by_a_test():
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name)
    unused = [f"{name} ({readme.where(name)})" for name in readme.blocks() if f'"{name}"' not in sources]
    assert not unused, f"doc-test blocks no test reads: {unused}"


def test_every_workflow_section_has_doctest_blocks():
    # Each section is found wherever it lives (README.md or a docs/ page), at any heading level.
    sections = [(path, *s) for path in readme.files() for s in _sections(path.read_text())]
    for title in WORKFLOW_SECTIONS:
        found = [(path, text) for path, heading, text in sections if heading == title]
        assert len(found) == 1, f"{title!r}: {len(found)} sections of README.md and docs/*.md have that title"
        ((path, section),) = found
        assert "<!-- doctest: " in section, f"{path.relative_to(readme.ROOT)} {title!r} has no doctest block"


def test_commands_split_like_a_shell_and_check_substitutions():
    (server,) = [c for c in readme.commands("mlflow-server", env={"HOME": "/h"}) if c.argv[0] == "mlflow"]
    assert server.env == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert server.argv[server.argv.index("--backend-store-uri") + 1] == "sqlite:////h/mlflow/mlflow.db"
    queue = readme.command("exp-queue", "dvc queue logs", {"<name>": "exp-1"})
    assert queue.argv == ["dvc", "queue", "logs", "exp-1"]            # the trailing comment is dropped
    with pytest.raises(AssertionError, match="placeholders"):
        readme.commands("exp-queue")                                   # <name> left without a value
    with pytest.raises(AssertionError, match="no longer contains"):
        readme.commands("exp-queue", {"<nmae>": "x"})
    with pytest.raises(AssertionError, match="no block"):
        readme.block("no-such-block")
