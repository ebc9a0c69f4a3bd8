"""Every registered model, at every size its entry names, through the same checks: build, one training step that
moves every parameter, a bit-identical save/load round trip through the one checkpoint contract, a wrong-kind
and a truncated checkpoint refused, and the streaming export where the model streams. Registering a model puts
it here; nothing in this file names a model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from timbrelab.errors import TimbrelabError
from timbrelab.models import registry
from timbrelab.models.checkpoint import FORMAT, CheckpointError, load_payload, save_checkpoint

CASES = [(name, size) for name, spec in registry.MODELS.items() for size in spec.sizes]


def one_step(example: registry.Example) -> None:
    """One optimiser step the way the model trains: its LightningModule through a Trainer, or its own step."""
    if example.lightning_module is None:
        example.step()
        return
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0)
    trainer.fit(example.lightning_module, train_dataloaders=DataLoader([example.batch], batch_size=None))


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{s}" for n, s in CASES])
def trained(request):
    """(spec, size, example) after one training step, with the parameters from before it."""
    name, size = request.param
    spec = registry.get(name)
    torch.manual_seed(0)
    example = spec.resolve("example")(size)
    before = {k: v.detach().clone() for k, v in example.model.named_parameters()}
    one_step(example)
    return spec, size, example, before


def test_a_training_step_changes_every_parameter(trained):
    spec, size, example, before = trained
    after = dict(example.model.named_parameters())
    assert before, f"{spec.name} ({size}) has no parameters"
    unchanged = [k for k, v in before.items() if torch.equal(v, after[k].detach())]
    assert not unchanged, f"{spec.name} ({size}): one training step left {unchanged} untouched"


def test_save_load_round_trip_is_bit_identical(trained, tmp_path):
    spec, size, example, _ = trained
    from timbrelab.models.checkpoint import make_payload

    model = example.model.eval()
    payload = make_payload(spec.name, model, example.payload["model_config"], stats=example.payload["stats"])
    path = tmp_path / "model.pt"
    save_checkpoint(path, payload)
    loaded, loaded_payload = registry.load(path, spec.name)
    assert not loaded.training and loaded_payload["format"] == FORMAT
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key
    save_checkpoint(tmp_path / "again.pt", make_payload(spec.name, loaded, loaded_payload["model_config"],
                                                        stats=loaded_payload["stats"]))
    assert (tmp_path / "again.pt").read_bytes() == path.read_bytes()


def test_wrong_kind_truncated_newer_and_foreign_files_are_refused(trained, tmp_path):
    spec, _, example, _ = trained
    path = tmp_path / "model.pt"
    save_checkpoint(path, example.payload)
    other = next((n for n in registry.MODELS if n != spec.name), "some_other_model")
    with pytest.raises(CheckpointError, match=f"a {spec.name!r} checkpoint, but a {other!r} model was asked for"):
        load_payload(path, other)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{truncated}: not a timbrelab checkpoint \\(truncated"):
        registry.load(truncated, spec.name)
    newer = tmp_path / "newer.pt"
    save_checkpoint(newer, {**example.payload, "format": FORMAT + 1})
    with pytest.raises(CheckpointError, match="newer than this timbrelab reads"):
        registry.load(newer, spec.name)
    foreign = tmp_path / "foreign.pt"
    torch.save({"epoch": 3, "state_dict": {}}, foreign)        # a Lightning .ckpt, say
    with pytest.raises(CheckpointError, match="not a timbrelab model checkpoint"):
        registry.load(foreign, spec.name)
    with pytest.raises(TimbrelabError, match="no such checkpoint"):
        registry.load(tmp_path / "missing.pt", spec.name)


def test_streaming_export_where_the_model_streams(trained, tmp_path):
    spec, size, example, _ = trained
    if spec.export is None:
        pytest.skip(f"{spec.name} does not stream")
    path = tmp_path / "model.pt"
    save_checkpoint(path, example.payload)
    meta = spec.resolve("export")(path, tmp_path / "stream.ts", example.stream_block)
    extra = {"timbrelab.json": ""}
    stream = torch.jit.load(str(tmp_path / "stream.ts"), _extra_files=extra)
    assert json.loads(extra["timbrelab.json"])["block_size"] == meta["block_size"] == example.stream_block
    frames = example.stream_block // meta["hop"]
    audio = stream(torch.full((1, frames), 220.0), torch.full((1, frames), -30.0))
    assert audio.shape == (1, example.stream_block) and torch.isfinite(audio).all()


def test_the_registry_resolves_every_part_and_keeps_models_and_inference_apart_from_training():
    for spec in registry.MODELS.values():
        for part in ("build", "example", "lightning", "schema", "train", "summary", "export"):
            if getattr(spec, part):
                assert spec.resolve(part) is not None
        if spec.lightning:
            module = spec.resolve("lightning")
            assert isinstance(module.monitor, str) and module.monitor in module.curve_keys, spec.name
        if spec.transfer:
            for attribute in ("check_payload", "transfer_file", "TransferWarning"):
                registry.resolve(f"{spec.transfer}:{attribute}")
        assert not (spec.build.startswith("timbrelab.training") or (spec.export or "").startswith("timbrelab.training"))


def test_a_deep_copy_of_an_example_trains_the_same(trained):
    """The step is deterministic: the same example built twice takes the same step (what the cache key assumes)."""
    spec, size, example, _ = trained
    torch.manual_seed(0)
    twin = spec.resolve("example")(size)
    one_step(twin)
    for (key, a), b in zip(example.model.state_dict().items(), twin.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert copy.deepcopy(example.payload["model_config"]) == twin.payload["model_config"]
