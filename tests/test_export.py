"""`timbrelab export`: a tiny trained-model payload -> TorchScript stream, loaded and played in a virtual
environment that has torch but not timbrelab; its output equals the in-process stream's."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from timbrelab.cli import main
from timbrelab.models.ddsp import DDSP, PRESETS
from timbrelab.models.ddsp_stream import StreamingDDSP
from timbrelab.inference.streaming import EXPORT_METADATA, stream_controls
from timbrelab.models.checkpoint import FORMAT as CHECKPOINT_FORMAT

MODEL_TYPE = "ddsp"

STATS = {"loudness_db": {"mean": -33.0, "std": 11.9}}
HOP, BLOCK = 64, 128


def write_checkpoint(path: Path) -> DDSP:
    """A payload shaped like training/ddsp.py's ``train`` writes, around a tiny DDSP with reverb."""
    torch.manual_seed(0)
    cfg = PRESETS["tiny"].replace(reverb_seconds=0.05)
    model = DDSP(cfg, STATS).eval()
    with torch.no_grad():
        model.decoder.head.bias[0] += 4.0                        # loud enough for the comparison to mean something
    payload = {"model_type": MODEL_TYPE, "format": CHECKPOINT_FORMAT,
               "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
               "model_config": dataclasses.asdict(cfg), "train_config": {}, "stats": STATS, "hash": "0123abcd"}
    blob = io.BytesIO()
    torch.save(payload, blob)
    path.write_bytes(blob.getvalue())
    return model


def make_torch_only_venv(root: Path) -> Path:
    """A venv without pip whose only extra path is the directory holding torch (not timbrelab's src)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "torch_only.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    return python


PLAYER = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    assert importlib.util.find_spec("timbrelab") is None, "timbrelab must not be importable here"
    extra = {"timbrelab.json": ""}
    stream = torch.jit.load(sys.argv[1], _extra_files=extra)
    meta = json.loads(extra["timbrelab.json"])
    inputs = torch.load(sys.argv[2])
    f0, loudness, noise = inputs["f0"], inputs["loudness"], inputs["noise"]
    frames = meta["block_size"] // meta["hop"]
    stream.reset()
    outputs, used = [], 0
    for start in range(0, f0.shape[1], frames):
        block = slice(start, start + frames)
        length = stream.noise_length(f0[:, block].shape[1])
        outputs.append(stream.forward_with_noise(f0[:, block], loudness[:, block], noise[:, used:used + length]))
        used += length
    drawn = stream(f0[:, :frames], loudness[:, :frames])          # forward draws its own noise
    assert drawn.shape == (1, frames * meta["hop"]) and bool(torch.isfinite(drawn).all())
    torch.save({"audio": torch.cat(outputs, dim=1), "meta": meta}, sys.argv[3])
""")


def test_export_runs_without_timbrelab(tmp_path, capsys):
    model = write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "ddsp.ts"
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "-o", str(out), "--block-size", str(BLOCK)]) == 0
    assert "latency 3136 samples" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp file left

    g = torch.Generator().manual_seed(1)
    frames = 50
    f0 = 110.0 * 2.0 ** (3.0 * torch.rand(1, frames, generator=g))
    loudness = -50.0 + 40.0 * torch.rand(1, frames, generator=g)
    noise = 2.0 * torch.rand(1, frames * HOP + 256, generator=g) - 1.0
    torch.save({"f0": f0, "loudness": loudness, "noise": noise}, tmp_path / "inputs.pt")
    expected = stream_controls(StreamingDDSP(model), f0, loudness, BLOCK // HOP, noise=noise)

    python = make_torch_only_venv(tmp_path / "venv")
    (tmp_path / "player.py").write_text(PLAYER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run = subprocess.run([str(python), "player.py", str(out), "inputs.pt", "played.pt"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    played = torch.load(tmp_path / "played.pt")
    assert played["meta"]["sample_rate"] == 16000 and played["meta"]["hop"] == HOP
    assert played["meta"]["block_size"] == BLOCK and played["meta"]["synth_latency_samples"] == HOP
    assert played["meta"]["total_latency_samples"] == 3072 + HOP and played["meta"]["model_hash"] == "0123abcd"
    assert expected.abs().max() > 0.1
    assert float((played["audio"] - expected).abs().max()) < 1e-6


def test_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "ddsp.ts"
    cases = [(["--checkpoint", str(tmp_path / "model.pt"), "--block-size", "100"], "not a multiple of the hop"),
             (["--checkpoint", str(tmp_path / "model.pt"), "--block-size", "32"], "shorter than one hop"),
             (["--checkpoint", str(tmp_path / "missing.pt")], "missing.pt: no such checkpoint")]
    for args, message in cases:
        assert main(["export", *args, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
        assert not out.exists()
    torch.save({"model_type": "cyclegan", "format": 1, "state_dict": {}, "model_config": {}}, tmp_path / "other.pt")
    assert main(["export", "--checkpoint", str(tmp_path / "other.pt"), "-o", str(out)]) == 2
    assert "'cyclegan' checkpoint" in capsys.readouterr().err and not out.exists()


def test_exported_metadata_is_json_in_the_file(tmp_path):
    write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "ddsp.ts"
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "-o", str(out)]) == 0
    extra = {EXPORT_METADATA: ""}
    stream = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra[EXPORT_METADATA])
    assert meta["block_size"] == 512 and stream.block_frames == 8 and stream.sample_rate == 16000
    assert stream.latency_samples == HOP and stream.hop == HOP
