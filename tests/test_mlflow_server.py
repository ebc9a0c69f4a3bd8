"""A real MLflow tracking server (sqlite store, proxied artifacts) on 127.0.0.1, started and used with the
mlflow-server block of docs/experiments.md (tests/readme.py): the tiny pipeline up to train_ddsp and a second
training log to it over HTTP, and the runs are read back through the server's REST API with plain urllib; the
best-run block's command; and `make mlflow-ui` starts. Every server is started as its own process group and killed
at teardown."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import readme
from conftest import REPO, copy_repository, run, set_default_profile, tool_env

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
DOCUMENTED_PORT = "5000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the `mlflow` CLI, uvicorn and its workers), SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)


@contextlib.contextmanager
def serving(cmd: list[str], port: int, log: Path, cwd: Path, env: dict[str, str],
            timeout: float = 240) -> Iterator[str]:
    """Run ``cmd`` (a server on 127.0.0.1:``port``) until /health answers; yield its base URL; stop it."""
    base = f"http://{HOST}:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{shlex.join(cmd)} exited with {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"{base}/health did not answer within {timeout:.0f} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc)


def _request(base: str, path: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{'POST' if data else 'GET'} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc


def rest(base: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """GET ``/api/2.0/mlflow/<endpoint>?<query>`` (or POST ``body`` to it); the JSON answer."""
    url = f"/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    return json.loads(_request(base, url, body))


# ---------------------------------------------------------------------------------------------
# A tracking server with a database and proxied artifacts, and a tiny training logging to it


def _port_substitution(port: int) -> dict[str, str]:
    return {f"--port {DOCUMENTED_PORT}": f"--port {port}", f"{HOST}:{DOCUMENTED_PORT}": f"{HOST}:{port}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``(base URL, artifacts destination)`` of the README's `mlflow server` line, with HOME a temporary
    folder and a free port: a sqlite store whose clients upload and download artifacts through the server
    (``--artifacts-destination``: experiments get ``mlflow-artifacts:/``)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**tool_env(home), "HOME": str(home)}
    served = readme.command("mlflow-server", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server",
                            _port_substitution(port), env)
    assert served.env == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}   # no GenAI job runner processes
    with serving(served.venv_argv, port, home / "server.log", home, {**env, **served.env}) as base:
        yield base, home / "mlflow" / "artifacts"


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    """A copy of the repository on the tiny profile and the README's lines against the server: `export
    MLFLOW_TRACKING_URI=...`, `dvc repro train_ddsp` and a second training with timbrelab-train. Returns
    ``(repo, the second training's run, experiment, the pipeline's train_ddsp run)``."""
    base, _ = server
    port = base.rsplit(":", 1)[1]
    repo = copy_repository(tmp_path_factory.mktemp("served") / "timbrelab")
    set_default_profile(repo, "tiny")
    lines = readme.commands("mlflow-server", _port_substitution(int(port)))
    export = next(c for c in lines if c.argv[0] == "export")
    key, _, uri = export.argv[1].partition("=")
    assert (key, uri) == ("MLFLOW_TRACKING_URI", base)
    for command in lines:
        if command.argv[0] in ("dvc", "timbrelab-train"):
            run(command.venv_argv, repo, extra_env={key: uri})
    experiment = rest(base, "experiments/get-by-name", experiment_name="timbrelab")["experiment"]
    runs = rest(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                      "filter": "tags.stage = 'train_ddsp'",
                                      "order_by": ["attributes.start_time ASC"]}).get("runs", [])
    assert len(runs) == 2, runs
    return repo, runs[1], experiment, runs[0]


def _by_key(entries: list[dict]) -> dict[str, object]:
    return {entry["key"]: entry["value"] for entry in entries}


def test_training_logs_to_the_server(trained, server):
    base, _ = server
    repo, found, experiment, _ = trained
    # Created by timbrelab.tracking without a local artifact location: the server proxies artifacts.
    assert experiment["artifact_location"].startswith("mlflow-artifacts:/")
    assert found["info"]["status"] == "FINISHED"
    assert found["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    tags, params, metrics = (_by_key(found["data"].get(kind, [])) for kind in ("tags", "params", "metrics"))
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert tags["stage"] == "train_ddsp" and tags["git.commit"] == head and tags["git.dirty"] == "false"
    assert tags["hydra.overrides"] == "stage=train_ddsp train_ddsp.model.lr=3e-4"
    # `dvc repro train_ddsp` logged every stage to the server; both trainings link to the features run.
    features = rest(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                          "filter": "tags.stage = 'features'"})["runs"]
    assert [r["info"]["run_id"] for r in features] == [tags["run.features"]]
    assert _by_key(trained[3]["data"]["tags"])["run.features"] == tags["run.features"]
    assert _by_key(trained[3]["data"]["params"])["model.lr"] == "0.001" and params["model.lr"] == "0.0003"
    assert params["max_steps"] == "20" and params["model.preset"] == "tiny"
    local = json.loads((repo / "models/ddsp/metrics.json").read_text())
    assert metrics["steps"] == local["steps"] == 20
    assert metrics["val/loss_best"] == pytest.approx(local["val/loss_best"])
    assert "train/loss" in metrics  # logged by Lightning during the fit, through the same server


def test_model_round_trips_through_the_server(trained, server):
    import torch

    base, artifacts = server
    repo, found, experiment, _ = trained
    run_id, experiment_id = found["info"]["run_id"], experiment["experiment_id"]
    listed = rest(base, "artifacts/list", run_id=run_id, path="model")
    local = (repo / "models/ddsp/model.pt").read_bytes()
    assert {f["path"]: int(f["file_size"]) for f in listed["files"]} == {"model/model.pt": len(local)}
    top = {f["path"] for f in rest(base, "artifacts/list", run_id=run_id)["files"]}
    assert {"model", "resynthesis", "curves.csv"} <= top, top
    # Both download routes: the UI's, and the artifact proxy's (what clients of mlflow-artifacts:/ use).
    via_ui = _request(base, "/get-artifact?" + urllib.parse.urlencode({"path": "model/model.pt", "run_uuid": run_id}))
    via_proxy = _request(base, f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/model/model.pt")
    assert via_ui == via_proxy == local
    payload = torch.load(io.BytesIO(via_proxy), weights_only=True)
    assert payload["model_type"] == "ddsp" and payload["train_config"]["model"]["preset"] == "tiny"
    # Uploaded over HTTP into the server's destination; nothing went to a store in the repository.
    assert (artifacts / experiment_id / run_id / "artifacts/model/model.pt").read_bytes() == local
    assert not (repo / "mlartifacts").exists() and not (repo / "mlflow.db").exists() and not (repo / "mlruns").exists()
    registered = rest(base, "registered-models/get", name="timbrelab-ddsp-cello")["registered_model"]
    assert [v["run_id"] for v in registered["latest_versions"]] == [run_id]


def test_readme_best_run_command_and_transfer_by_run_id(trained, server, tmp_path):
    base, _ = server
    repo, second, _, first = trained
    env = {"MLFLOW_TRACKING_URI": base}
    best = readme.command("best-run", "python -c", {"<the printed run id>": "RUN_ID"})
    assert best.argv[0] == "python"
    out = run(best.venv_argv, repo, extra_env=env).stdout.split()
    loss = {r["info"]["run_id"]: _by_key(r["data"]["metrics"])["val/loss_best"] for r in (first, second)}
    run_id = min(loss, key=loss.get)
    assert out[0] == run_id and float(out[1]) == pytest.approx(loss[run_id])
    clip = min((repo / "data/raw/source").glob("*.wav"))
    wav = tmp_path / "out.wav"
    play = readme.command("best-run", "timbrelab transfer", {"<the printed run id>": run_id, "in.wav": str(clip),
                                                             "out.wav": str(wav)})
    run(play.venv_argv, repo, extra_env=env)
    import soundfile

    info = soundfile.info(str(wav))
    assert info.samplerate == 16000 and info.frames > 0


# ---------------------------------------------------------------------------------------------
# make mlflow-ui


def test_make_mlflow_ui_serves_on_localhost(tmp_path):
    """The command line `make mlflow-ui` runs (read with `make -n`, the venv assumed set up), on a free port."""
    port = free_port()
    venv = Path(sys.executable).parent.parent
    documented = readme.command("mlflow-ui", "make mlflow-ui").argv
    assert documented == ["make", "mlflow-ui"]
    printed = subprocess.run([documented[0], "--no-print-directory", "-s", "-n", "-f", str(REPO / "Makefile"),
                              "-o", str(venv / ".timbrelab-installed"), *documented[1:], f"VENV={venv}",
                              f"MLFLOW_PORT={port}"], cwd=tmp_path, capture_output=True, text=True, check=True)
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == 1, printed.stdout
    words = shlex.split(lines[0])
    env = dict(tool_env(tmp_path))
    while re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[words.index("--host") + 1] == HOST
    assert words[words.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    with serving(words, port, tmp_path / "ui.log", tmp_path, env) as base:
        found = rest(base, "experiments/search", {"max_results": 10})
    assert [e["name"] for e in found["experiments"]] == ["Default"]
    assert (tmp_path / "mlflow.db").is_file()
