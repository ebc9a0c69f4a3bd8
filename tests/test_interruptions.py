"""Stopped and damaged trainings (issue #19): SIGTERM mid-fit exits 143 saying so, keeps a checkpoint at the step
reached, marks the MLflow run KILLED, and a rerun resumes; a damaged last.ckpt is moved aside with a warning and
the training resumes from the checkpoint before it; hostile, text, empty and truncated files are refused in one
line that never suggests an unsafe load. Uses the throwaway ``echo`` model of test_adding_a_model."""

from __future__ import annotations

import csv
import os
import signal

import pytest
import torch
from test_adding_a_model import echo  # noqa: F401 - a fixture

from timbrelab.errors import run_main
from timbrelab.models.checkpoint import CheckpointError, load_payload, torch_load
from timbrelab.stages import stage_entry
from timbrelab.stages.common import execute_stage

PARAMS = {"train_echo": {"max_steps": 6, "val_every_steps": 3, "trainer": {"accelerator": "cpu"}}}


def _runs(stage: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("timbrelab")
    return client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'",
                              order_by=["attributes.start_time ASC"])


def test_sigterm_mid_fit_exits_143_keeps_a_checkpoint_and_resumes(echo, monkeypatch, capsys):
    import echo_training

    step = echo_training.EchoModule.training_step

    def terminated_at_step_4(self, batch, batch_idx):
        if self.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)       # as `kill`, SLURM's pre-emption or submitit would
        return step(self, batch, batch_idx)

    monkeypatch.setattr(echo_training.EchoModule, "training_step", terminated_at_step_4)
    stage = stage_entry("train_echo")
    code = run_main(lambda: execute_stage(stage.STAGE, stage.SCHEMAS, stage.run, params=PARAMS))
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM, err
    assert "timbrelab: terminated: train_echo was stopped by SIGTERM at step 5" in err and "rerun" in err
    assert [line for line in err.splitlines() if line.startswith("timbrelab:")] == [err.splitlines()[-1]]
    (last,) = (echo / "models/cache/echo").glob("*/last.ckpt")
    assert torch_load(last)["global_step"] == 5
    assert not (echo / "models/echo/model.pt").exists()
    assert _runs("train_echo")[-1].info.status == "KILLED"

    monkeypatch.setattr(echo_training.EchoModule, "training_step", step)
    execute_stage(stage.STAGE, stage.SCHEMAS, stage.run, params=PARAMS)
    rows = list(csv.reader((echo / "models/echo/curves.csv").open()))
    assert [r[0] for r in rows[1:]] == ["3", "6"] and _runs("train_echo")[-1].info.status == "FINISHED"


def test_a_damaged_last_checkpoint_is_moved_aside_and_the_one_before_resumes(echo):
    stage = stage_entry("train_echo")
    execute_stage(stage.STAGE, stage.SCHEMAS, stage.run, params=PARAMS)
    (last,) = (echo / "models/cache/echo").glob("*/last.ckpt")
    last.write_bytes(last.read_bytes()[:200])                  # a disk that filled up mid-write, say
    params = {"train_echo": {**PARAMS["train_echo"], "max_steps": 9}}
    with pytest.warns(RuntimeWarning, match=r"last\.ckpt: not a timbrelab checkpoint \(truncated.*moved it aside "
                                            r"to last\.ckpt\.damaged"):
        result = execute_stage(stage.STAGE, stage.SCHEMAS, stage.run, params=params)
    assert result.metrics["steps"] == 9
    assert (last.parent / "last.ckpt.damaged").is_file() and torch_load(last)["global_step"] == 9


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("write, needle", [
    (lambda p: torch.save({"model_type": "echo", "x": Hostile()}, p), "refused: it holds objects that a safe"),
    (lambda p: p.write_text("not a model\n"), "a torch checkpoint is a zip archive; this file is not one"),
    (lambda p: p.write_bytes(b""), "an empty file, not a checkpoint"),
    (lambda p: (torch.save({"a": torch.zeros(100)}, p), p.write_bytes(p.read_bytes()[:300])), "truncated"),
])
def test_bad_checkpoint_files_are_refused_in_one_safe_line(tmp_path, write, needle):
    path = tmp_path / "model.pt"
    write(path)
    with pytest.raises(CheckpointError) as info:
        load_payload(path, "ddsp")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message
    assert "weights_only" not in message and "will likely succeed" not in message
