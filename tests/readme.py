"""README doc-tests: the workflow commands tests run are read from README.md and docs/*.md, so the two
cannot drift.

A block is marked by an HTML comment right above its fence::

    <!-- doctest: sweep-grid -->
    ```bash
    timbrelab-train -m stage=train_ddsp ...   # a comment
    ```

:func:`commands` splits each line as a shell would (``# comments`` dropped, leading ``NAME=value`` words
become the command's environment, ``$VAR`` expanded from the given environment). Placeholders such as
``<name>`` or ``/path/to/dvc-remote`` are replaced only through ``substitute``; a substitution that does not
occur in the block, or a ``<placeholder>`` left over, is an error, so a renamed placeholder fails the test.
Block names are unique across all those files; errors name the file where a block lives.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
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


def files() -> list[Path]:
    """The files doc-test blocks are read from: README.md, then every docs/*.md."""
    return [README, *sorted(DOCS.glob("*.md"))]


def _located() -> dict[str, tuple[str, str]]:
    """``{name: (file relative to the repository, body)}`` of every block in :func:`files`."""
    found: dict[str, tuple[str, str]] = {}
    for path in files():
        where = path.relative_to(ROOT).as_posix()
        for match in _BLOCK.finditer(path.read_text(encoding="utf-8")):
            name = match["name"]
            if name in found:
                first = found[name][0]
                raise AssertionError(f"{where}: two doctest blocks named {name!r}" if first == where else
                                     f"{first} and {where}: two doctest blocks named {name!r}")
            found[name] = (where, match["body"])
    return found


def blocks() -> dict[str, str]:
    return {name: body for name, (_, body) in _located().items()}


def where(name: str) -> str:
    """The file (relative to the repository, e.g. ``docs/experiments.md``) that holds block ``name``."""
    located = _located().get(name)
    assert located is not None, f"README.md or docs/*.md has no block marked <!-- doctest: {name} -->"
    return located[0]


def block(name: str, substitute: dict[str, str] | None = None, *, whole: bool = True) -> str:
    """The block's text with the substitutions made (each must occur in it); with ``whole``, no
    ``<placeholder>`` may be left anywhere in it."""
    located = _located().get(name)
    assert located is not None, f"README.md or docs/*.md has no block marked <!-- doctest: {name} -->"
    path, body = located
    for old, new in (substitute or {}).items():
        assert old in body, f"{path} block {name!r} no longer contains {old!r}"
        body = body.replace(old, new)
    if whole:
        _check_placeholders(name, body)
    return body


def _check_placeholders(name: str, text: str) -> None:
    left = _PLACEHOLDER.findall(text)
    assert not left, f"{where(name)} block {name!r}: placeholders {left} have no substitution in the test"


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
    assert len(found) == 1, f"{where(name)} block {name!r}: {len(found)} commands start with {startswith!r}"
    _check_placeholders(name, found[0].text)
    return found[0]


def _expand(word: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m[1] or m[2], m[0]), word)
