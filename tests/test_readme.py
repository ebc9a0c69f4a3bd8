"""The README's doc-test blocks (tests/readme.py): each is run by some test, each workflow section has one,
and the harness splits and substitutes the way the tests rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import readme

TESTS = Path(__file__).resolve().parent
WORKFLOW_SECTIONS = ("## MLflow", "## Sweeps", "## Experiments and remotes", "## Scaling out")


def test_every_doctest_block_is_run_by_a_test():
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name)
    unused = [name for name in readme.blocks() if f'"{name}"' not in sources]
    assert not unused, f"README.md blocks no test reads: {unused}"


def test_every_workflow_section_has_doctest_blocks():
    text = readme.README.read_text()
    sections = re.split(r"^(?=## )", text, flags=re.MULTILINE)
    for title in WORKFLOW_SECTIONS:
        (section,) = [s for s in sections if s.startswith(title + "\n")]
        assert "<!-- doctest: " in section, f"README.md {title!r} has no doctest block"


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
