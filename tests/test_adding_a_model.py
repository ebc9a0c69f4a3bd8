"""docs/adding-a-model.md, followed for a throwaway model ``echo`` (a gain and a bias learnt to reproduce its
input): its two modules written from the doc's steps 1 and 2, its registry entry (step 3), its params section
(step 4, given as the stage's params), and the generic train stage (step 5's command) run for real: the shared
loop trains it with a manually optimised step (no ``loss`` returned, curves from ``callback_metrics``), writes
the contract's model.pt, resumes from its cache, and the test matrix's checks apply to it."""

from __future__ import annotations

import csv
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from timbrelab.models import registry
from timbrelab.stages import stage_entry, stage_names
from timbrelab.stages.common import execute_stage

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-model.md"

MODEL = '''
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EchoConfig:
    channels: int = 1


class Echo(nn.Module):
    """(B, n) -> (B, n): gain * x + bias."""

    def __init__(self, cfg: EchoConfig, stats=None):
        super().__init__()
        self.cfg = cfg
        self.gain = nn.Parameter(torch.full((cfg.channels,), 0.5))
        self.bias = nn.Parameter(torch.zeros(cfg.channels))

    def forward(self, x):
        return self.gain * x + self.bias


def build(model_config, stats):
    return Echo(EchoConfig(**model_config), stats)
'''

TRAINING = '''
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset

from timbrelab import tracking
from timbrelab.models.checkpoint import make_payload
from timbrelab.models.registry import Example
from timbrelab.training.loop import TrainingRun, log_to_run
from timbrelab.training.trainer import TrainerConfig

from echo_models import Echo, EchoConfig


class EchoModule(LightningModule):
    monitor = "val/loss"
    curve_keys = ("train/loss", "val/loss")

    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.automatic_optimization = False      # manual, as a GAN's step is: returns nothing
        self.model, self.lr = Echo(EchoConfig()), lr

    def training_step(self, batch, batch_idx):
        (x,) = batch
        optimiser = self.optimizers()
        loss = torch.mean((self.model(x) - x) ** 2)
        optimiser.zero_grad()
        self.manual_backward(loss)
        optimiser.step()
        self.log("train/loss", loss, on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("val/loss", torch.mean((self.model(x) - x) ** 2), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.lr)

    def export_model(self):
        return self.model


class EchoData(LightningDataModule):
    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.train, self.valid = torch.randn(32, 8, generator=g), torch.randn(8, 8, generator=g)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.train), batch_size=4, shuffle=False)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.valid), batch_size=8)


@dataclass
class EchoTrainConfig:
    domain: str = "cello"
    lr: float = 0.1
    max_steps: int = 6
    val_every_steps: int = 3
    seed: int = 0
    checkpoint_root: str = "models/cache/echo"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def train(cfg, out_dir, *, features_root, mlflow_run_id=None, progress=True):
    torch.manual_seed(cfg.seed)
    operative = {"lr": cfg.lr, "seed": cfg.seed, "domain": cfg.domain}
    run = TrainingRun("train_echo", operative, cfg.checkpoint_root, trainer=cfg.trainer, max_steps=cfg.max_steps,
                      val_every_steps=cfg.val_every_steps, progress=progress)
    module = EchoModule(cfg.lr)
    fitted = run.fit(module, EchoData(cfg.seed), mlflow_run_id)
    if fitted.rank:
        return {"rank": fitted.rank}
    metrics = {"steps": fitted.steps, "val/loss_best": float(min(r[-1] for r in fitted.curves.rows)),
               "best_step": fitted.best_step}
    payload = make_payload("echo", module.export_model(), asdict(EchoConfig()), train_config=asdict(cfg),
                           stats=None, digest=run.digest)
    out_dir = Path(out_dir)
    run.write_outputs(out_dir, payload, metrics, fitted)
    registered = None
    if mlflow_run_id is not None:
        registered = log_to_run(tracking.StageRun(fitted.client, mlflow_run_id), "echo", cfg.domain, "train_echo",
                                out_dir / "model.pt", metrics, run.digest)
    return {**metrics, "registered_model": registered}


def example(size):
    module = EchoModule()
    batch = (torch.randn(4, 8, generator=torch.Generator().manual_seed(1)),)
    return Example(module.model, batch=batch, lightning_module=module,
                   payload=make_payload("echo", module.model, asdict(EchoConfig())))
'''


@pytest.fixture
def echo(tmp_path, monkeypatch):
    """Steps 1-3: the two modules on sys.path and the registry entry."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "echo_models.py").write_text(textwrap.dedent(MODEL))
    (package / "echo_training.py").write_text(textwrap.dedent(TRAINING))
    monkeypatch.syspath_prepend(str(package))
    spec = registry.ModelSpec(
        name="echo", label="echo", build="echo_models:build", example="echo_training:example",
        stage="train_echo", output="models/echo", lightning="echo_training:EchoModule",
        schema="echo_training:EchoTrainConfig", train="echo_training:train", sizes=("tiny",))
    monkeypatch.setitem(registry.MODELS, "echo", spec)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    for key in list(os.environ):
        if key.startswith(("MLFLOW_", "DVC_", "TIMBRELAB_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(root)
    yield root
    for name in ("echo_models", "echo_training"):
        sys.modules.pop(name, None)


def test_the_doc_names_five_places():
    text = DOC.read_text()
    steps = [line for line in text.splitlines() if line[:3] in {f"{k}. " for k in range(1, 10)}]
    assert len(steps) == 5 and "**five places**" in text
    for place in ("src/timbrelab/models/<name>.py", "src/timbrelab/training/<name>.py",
                  "src/timbrelab/models/registry.py", "conf/", "dvc.yaml"):
        assert any(place in step for step in steps), place


def test_a_model_added_by_the_doc_trains_through_the_generic_stage(echo):
    assert "train_echo" in stage_names()                 # the stage table follows the registry
    stage = stage_entry("train_echo")
    # Step 4's section, as params.yaml would hold it (trainer: the top-level switch, interpolated).
    params = {"train_echo": {"max_steps": 6, "val_every_steps": 3, "trainer": {"accelerator": "cpu"}}}
    result = execute_stage(stage.STAGE, stage.SCHEMAS, stage.run, params=params)
    out = echo / "models/echo"
    assert result.metrics["steps"] == 6
    model, payload = registry.load(out / "model.pt", "echo")
    assert payload["model_type"] == "echo" and payload["hash"]
    assert float(model.gain) != 0.5                       # it learnt something
    rows = list(csv.reader((out / "curves.csv").open()))
    assert rows[0] == ["step", "train_loss", "val_loss"] and [r[0] for r in rows[1:]] == ["3", "6"]
    assert all(r[1] != "nan" for r in rows[1:])          # train means from callback_metrics, no returned loss
    assert (echo / "reports/metrics/train_echo.json").is_file()

    # Extending max_steps resumes from the cache (same hash: max_steps is not operative) and keeps the curve.
    params["train_echo"]["max_steps"] = 9
    execute_stage(stage.STAGE, stage.SCHEMAS, stage.run, params=params)
    rows = list(csv.reader((out / "curves.csv").open()))
    assert [r[0] for r in rows[1:]] == ["3", "6", "9"]

    # A foreign cache (another config under this hash) is refused, naming the stage.
    (config_json,) = (echo / "models/cache/echo").glob("*/config.json")
    config_json.write_text('{"lr": 1}')
    with pytest.raises(Exception, match="does not match this train_echo config"):
        execute_stage(stage.STAGE, stage.SCHEMAS, stage.run, params=params)


def test_the_matrix_checks_apply_to_the_new_model(echo):
    from test_models import one_step

    spec = registry.get("echo")
    example = spec.resolve("example")("tiny")
    before = {k: v.detach().clone() for k, v in example.model.named_parameters()}
    one_step(example)
    assert all(not torch.equal(v, dict(example.model.named_parameters())[k]) for k, v in before.items())
