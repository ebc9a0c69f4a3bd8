"""Shared fixtures. ``tiny_repo`` runs the real pipeline (`dvc repro`, tiny profile) once per session
in a temporary copy of this repository; end-to-end tests of every stage reuse it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool_env(repo: Path) -> dict[str, str]:
    """Environment for DVC/git in a test copy: this venv on PATH, the copy's own code importable,
    a git identity, and no tracking URI inherited from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "TIMBRELAB_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(repo / "src"),
        GIT_AUTHOR_NAME="timbrelab tests", GIT_AUTHOR_EMAIL="tests@timbrelab.invalid",
        GIT_COMMITTER_NAME="timbrelab tests", GIT_COMMITTER_EMAIL="tests@timbrelab.invalid",
        DVC_NO_ANALYTICS="1",
    )
    return env


def run(cmd: list[str], repo: Path, check: bool = True, timeout: float = 1800,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cmd`` in ``repo`` with :func:`tool_env` (plus ``extra_env``, e.g. an MLFLOW_TRACKING_URI)."""
    env = {**tool_env(repo), **(extra_env or {})}
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def copy_repository(dst: Path) -> Path:
    """Copy what a fresh clone would hold (tracked + untracked-but-not-ignored files) and commit it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    run(["git", "init", "-q", "-b", "main"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-q", "-m", "test copy"], dst)
    return dst


def set_default_profile(repo: Path, profile: str) -> None:
    """Make ``profile`` the default of conf/config.yaml in a test copy (so commands that compose conf/, such
    as timbrelab-train and the README's, run on it as written), regenerate params.yaml and commit both."""
    config = repo / "conf" / "config.yaml"
    text = config.read_text()
    assert "  - profile: demo\n" in text, "conf/config.yaml: the defaults list no longer starts with profile: demo"
    config.write_text(text.replace("  - profile: demo\n", f"  - profile: {profile}\n", 1))
    run([str(BIN / "timbrelab"), "params"], repo)
    run(["git", "commit", "-q", "-am", f"default profile: {profile}"], repo)


def stage_runs(repo: Path, stage: str) -> list:
    """The MLflow runs of ``stage`` in the repository's own store (none before its first run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("timbrelab")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.stage = '{stage}'")


@dataclass
class TinyRepo:
    path: Path
    repro_seconds: float
    repro_output: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(list(cmd), self.path, check=check)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([str(BIN / "dvc"), *args], self.path, check=check)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> TinyRepo:
    repo = copy_repository(tmp_path_factory.mktemp("pipeline") / "timbrelab")
    run([str(BIN / "timbrelab"), "params", "profile=tiny"], repo)
    run(["git", "commit", "-q", "-am", "tiny profile"], repo)
    started = time.perf_counter()
    result = run([str(BIN / "dvc"), "repro"], repo)
    return TinyRepo(repo, time.perf_counter() - started, result.stdout + result.stderr, tool_env(repo))
