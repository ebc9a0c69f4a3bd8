"""README doc-tests: the workflow commands tests run are read from README.md, so the two cannot drift.

A block is marked by an HTML comment right above its fence::

    <!-- doctest: sweep-grid -->
    ```bash
    timbrelab-train -m stage=train_ddsp ...   # a comment
    ```

:func:`commands` splits each line as a shell would (``# comments`` dropped, leading ``NAME=value`` words
become the command's environment, ``$VAR`` expanded from the given environment). Placeholders such as
``<name>`` or ``/path/to/dvc-remote`` are replaced only through ``substitute``; a substitution that does not
occur in the block, or a ``<placeholder>`` left over, is an error, so a renamed placeholder fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^<!-- doctest: (?P<name>[\w-]+) -->\n```[a-z]*\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"<[a-z][a-z -]*>")


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def venv_argv(self) -> list[str]:
        """``argv`` with its program from the tests' virtual environment (``python``: this interpreter)."""
        program = sys.executable if self.argv[0] == "python" else str(Path(sys.executable).parent / self.argv[0])
        return [program, *self.argv[1:]]


def blocks() -> dict[str, str]:
    found: dict[str, str] = {}
    for match in _BLOCK.finditer(README.read_text(encoding="utf-8")):
        name = match["name"]
        assert name not in found, f"README.md: two doctest blocks named {name!r}"
        found[name] = match["body"]
    return found


def block(name: str, substitute: dict[str, str] | None = None, *, whole: bool = True) -> str:
    """The block's text with the substitutions made (each must occur in it); with ``whole``, no
    ``<placeholder>`` may be left anywhere in it."""
    body = blocks().get(name)
    assert body is not None, f"README.md has no block marked <!-- doctest: {name} -->"
    for old, new in (substitute or {}).items():
        assert old in body, f"README.md block {name!r} no longer contains {old!r}"
        body = body.replace(old, new)
    if whole:
        _check_placeholders(name, body)
    return body


def _check_placeholders(name: str, text: str) -> None:
    left = _PLACEHOLDER.findall(text)
    assert not left, f"README.md block {name!r}: placeholders {left} have no substitution in the test"


def commands(name: str, substitute: dict[str, str] | None = None,
             env: dict[str, str] | None = None) -> list[Command]:
    """Every command line of the block, split; ``env`` expands ``$VAR`` (default: this process's)."""
    found = _split(name, block(name, substitute), env)
    for command in found:
        _check_placeholders(name, command.text)
    return found


def _split(name: str, body: str, env: dict[str, str] | None) -> list[Command]:
    env = dict(os.environ if env is None else env)
    out = []
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assignments: dict[str, str] = {}
        while words and _ASSIGNMENT.match(words[0]):
            key, _, value = words.pop(0).partition("=")
            assignments[key] = value
        expand = {**env, **assignments}
        argv = [_expand(word, expand) for word in words]
        out.append(Command(argv, assignments, line.split("#", 1)[0].strip()))
    return out


def command(name: str, startswith: str, substitute: dict[str, str] | None = None,
            env: dict[str, str] | None = None) -> Command:
    """The one command of the block whose text starts with ``startswith`` (placeholders are checked in
    that line only)."""
    found = [c for c in _split(name, block(name, substitute, whole=False), env) if c.text.startswith(startswith)]
    assert len(found) == 1, f"README.md block {name!r}: {len(found)} commands start with {startswith!r}"
    _check_placeholders(name, found[0].text)
    return found[0]


def _expand(word: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m[1] or m[2], m[0]), word)
