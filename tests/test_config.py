"""conf/ is the source of truth; params.yaml is it composed; every stage validates its section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from timbrelab import config
from timbrelab.errors import ConfigError
from timbrelab.stages import stage_entry, stage_names

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (REPO / "conf/profile").glob("*.yaml"))
# Every stage's own schema (what `python -m timbrelab.stages.<name>` validates its section with).
STAGE_SCHEMAS = {name: stage_entry(name).SCHEMAS for name in stage_names()}


def test_committed_params_yaml_matches_composed_conf():
    committed = (REPO / "params.yaml").read_text()
    assert committed == config.composed_yaml(conf_dir=REPO / "conf"), (
        "params.yaml drifted from conf/: run `make params` and commit both")


def test_params_yaml_is_keyed_by_stage():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # Besides the stages: the profile's sizes and the one trainer switch every train stage interpolates.
    assert set(params) == {"profile", "trainer", *STAGE_SCHEMAS}
    dvc_stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    systems = params["evaluate"]["systems"]
    assert {name for name in dvc_stages if name.startswith("evaluate_")} == {f"evaluate_{s}" for s in systems}
    for name, stage in dvc_stages.items():
        if name.startswith("evaluate_"):
            # One stage per system: the shared metrics settings and that system's own section only.
            own = ["evaluate.metrics", f"evaluate.systems.{name.removeprefix('evaluate_')}"]
        elif name == "report":
            own = ["report", "evaluate"]       # the systems it summarises, the bootstrap settings
        else:
            own = [name]
        assert stage["params"] == own, f"stage {name} must depend on exactly its own section"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_validates_every_stage(profile):
    from omegaconf import OmegaConf

    cfg = config.compose([f"profile={profile}"], conf_dir=REPO / "conf")

    params = OmegaConf.to_container(cfg)
    for stage, schemas in STAGE_SCHEMAS.items():
        config.load_stage_config(stage, schemas, params)
    assert params["profile"]["name"] == profile


@pytest.mark.parametrize("group,stage,choice,schema", [
    ("cello", "acquire_cello", "youtube", config.YoutubeConfig),
    ("cello", "acquire_cello", "local", config.LocalFolderConfig),
    ("nsynth", "acquire_nsynth", "download", config.NSynthDownloadConfig),
    ("nsynth", "acquire_nsynth", "local", config.NSynthLocalConfig),
    ("source", "acquire_source", "local", config.LocalFolderConfig),
])
def test_group_choice_lands_in_the_stage_section(group, stage, choice, schema):
    from omegaconf import OmegaConf

    cfg = config.compose([f"{group}@{stage}={choice}"], conf_dir=REPO / "conf")
    params = OmegaConf.to_container(cfg)
    assert params[stage]["source"] == choice
    assert isinstance(config.load_stage_config(stage, STAGE_SCHEMAS[stage], params), schema)


def test_value_override_uses_the_params_key_path():
    from omegaconf import OmegaConf

    cfg = config.compose(["prepare.segment_seconds=2", "profile=tiny"], conf_dir=REPO / "conf")
    assert OmegaConf.to_container(cfg)["prepare"]["segment_seconds"] == 2


def test_profile_values_arrive_resolved():
    text = config.composed_yaml(["profile=tiny"], conf_dir=REPO / "conf")
    assert "${" not in text
    assert yaml.safe_load(text)["acquire_cello"]["n_recordings"] == 3


def test_conf_is_plain_yaml_without_schemas_or_resolvers():
    # DVC composes conf/ in its own process without importing timbrelab.
    for path in (REPO / "conf").rglob("*.yaml"):
        text = path.read_text()
        assert "${oc." not in text and "${timbrelab" not in text, path


def test_misspelt_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"prepare\.segmnet_seconds.*did you mean 'segment_seconds'"):
        config.validate({"segmnet_seconds": 2}, config.PrepareConfig, "prepare")


def test_nested_misspelt_key_names_the_full_path():
    with pytest.raises(ConfigError, match=r"prepare\.split\.trian.*did you mean 'train'"):
        config.validate({"split": {"trian": 0.5}}, config.PrepareConfig, "prepare")


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"acquire_cello\.n_recordings"):
        config.load_stage_config("acquire_cello", config.ACQUIRE_CELLO,
                                 {"acquire_cello": {"source": "offline", "n_recordings": "many"}})


def test_unknown_source_lists_the_choices():
    with pytest.raises(ConfigError, match=r"acquire_cello\.source is 'vinyl'.*local.*offline.*youtube"):
        config.load_stage_config("acquire_cello", config.ACQUIRE_CELLO, {"acquire_cello": {"source": "vinyl"}})


def test_missing_section_says_how_to_regenerate():
    with pytest.raises(ConfigError, match=r"no 'prepare' section.*make params"):
        config.stage_section("prepare", {"profile": {}})


def _stage(tmp_path: Path, params: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    env = {"TIMBRELAB_PARAMS": str(path), "PATH": str(Path(sys.executable).parent),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-m", "timbrelab.stages.prepare", *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stage_with_bad_params_exits_2_with_one_line(tmp_path):
    result = _stage(tmp_path, {"prepare": {"segment_secondz": 4}})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "prepare.segment_secondz" in lines[0] and "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    result = _stage(tmp_path, {"prepare": {"segment_secondz": 4}}, "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr
