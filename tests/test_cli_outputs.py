"""`timbrelab params`, `cqt-resynth` and `export` never write an invalid or mislabelled file, nor over
their input (issue #19, items 10 and 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from timbrelab import cli

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------- params (item 10)


@pytest.mark.parametrize("override, key", [("prepare.sample_rate=abc", "prepare.sample_rate"),
                                           ("features.cqt.n_bins=many", "features.cqt.n_bins"),
                                           ("prepare.no_such_key=1", "prepare.no_such_key")])
def test_params_refuses_a_bad_value_naming_the_key_and_writes_nothing(override, key, tmp_path, capsys):
    target = tmp_path / "params.yaml"
    target.write_text("sentinel: 1\n")
    code, _, err = run(capsys, "params", override, "--out", str(target))
    assert code == 2 and err.count("\n") == 1 and key in err and "Traceback" not in err, err
    assert target.read_text() == "sentinel: 1\n" and list(tmp_path.iterdir()) == [target]


def test_params_accepts_good_overrides(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    code, _, err = run(capsys, "params", "prepare.sample_rate=22050", "--out", str(target))
    assert code == 0, err
    assert yaml.safe_load(target.read_text())["prepare"]["sample_rate"] == 22050


def test_write_params_validates_before_writing(tmp_path):
    from timbrelab import config
    from timbrelab.errors import ConfigError
    from timbrelab.stages import stage_entry, stage_names

    schemas = {stage_entry(n).STAGE: stage_entry(n).SCHEMAS for n in stage_names()}
    with pytest.raises(ConfigError, match="prepare.sample_rate"):
        config.write_params(tmp_path / "params.yaml", ["prepare.sample_rate=abc"], stage_schemas=schemas)
    assert not (tmp_path / "params.yaml").exists()


# ------------------------------------------------------------------------------- cqt-resynth (item 11)


def _tone(path: Path, seconds: float = 0.5) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    return path


def test_cqt_resynth_refuses_to_overwrite_its_input(tmp_path, capsys):
    source = _tone(tmp_path / "take.wav")
    before = source.read_bytes()
    code, _, err = run(capsys, "cqt-resynth", str(source), "-o", str(source), "--iters", "1")
    assert code == 2 and err.count("\n") == 1 and "is the input" in err, err
    assert source.read_bytes() == before


def test_cqt_resynth_writes_the_format_the_extension_names(tmp_path, capsys):
    source = _tone(tmp_path / "take.wav")
    code, _, err = run(capsys, "cqt-resynth", str(source), "-o", str(tmp_path / "out.flac"), "--iters", "1")
    assert code == 0, err
    assert sf.info(str(tmp_path / "out.flac")).format == "FLAC"
    code, _, err = run(capsys, "cqt-resynth", str(source), "-o", str(tmp_path / "out.aac"), "--iters", "1")
    assert code == 2 and ".wav, .flac" in err and not (tmp_path / "out.aac").exists()


def test_cqt_resynth_names_directories_and_empty_files(tmp_path, capsys):
    source = _tone(tmp_path / "take.wav")
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    for args, needle in [((str(tmp_path / "adir"), "-o", str(tmp_path / "o.wav")), "is a directory"),
                         ((str(source), "-o", str(tmp_path / "adir")), "output is a directory"),
                         ((str(tmp_path / "empty.wav"), "-o", str(tmp_path / "o.wav")), "empty file")]:
        code, _, err = run(capsys, "cqt-resynth", *args, "--iters", "1")
        assert code == 2 and err.count("\n") == 1 and needle in err and "unexpected" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "empty.wav", "take.wav"]


# ------------------------------------------------------------------------------------ export (item 11)


def test_export_refuses_a_directory_or_its_checkpoint_as_output(tmp_path, capsys):
    from test_export import write_checkpoint

    write_checkpoint(tmp_path / "model.pt")
    before = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "adir").mkdir()
    for output, needle in [(tmp_path / "adir", "output is a directory"), (tmp_path / "model.pt", "is the input")]:
        code, _, err = run(capsys, "export", "--checkpoint", str(tmp_path / "model.pt"), "-o", str(output))
        assert code == 2 and err.count("\n") == 1 and needle in err and "unexpected" not in err, err
    assert (tmp_path / "model.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "model.pt"]
    assert list((tmp_path / "adir").iterdir()) == []
