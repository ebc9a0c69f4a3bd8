"""End-to-end: the real `dvc repro` on the tiny profile in a temporary copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from test_report_browser import browser_context, open_and_check  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

SYSTEMS = ("ddsp", "identity", "cqt_griffinlim", "target")
STAGES = ("acquire_cello", "acquire_nsynth", "acquire_source", "prepare", "features", "train_ddsp",
          "train_classifier", "transfer_set", *(f"evaluate_{s}" for s in SYSTEMS), "report")
# What each stage's MLflow run must hold among its artifacts (default: its manifest).
ARTIFACTS = {"train_ddsp": "model/model.pt", "train_classifier": "metrics.json", "report": "report/index.html",
             **{f"evaluate_{s}": "results.json" for s in SYSTEMS}}


def _lock(repo) -> dict:
    return yaml.safe_load((repo.path / "dvc.lock").read_text())


def test_repro_builds_every_stage(tiny_repo):
    out = tiny_repo.repro_output
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    cello = json.loads((tiny_repo.path / "data/raw/cello/manifest.json").read_text())
    assert len(cello["items"]) == 3 and not cello["failed"]
    for item in cello["items"]:
        assert (tiny_repo.path / "data/raw/cello" / item["file"]).is_file()
        assert item["license"].startswith("GPL")
    prepared = tiny_repo.path / "data/prepared"
    for domain in ("cello", "source"):
        index = json.loads((prepared / domain / "train" / "index.json").read_text())
        assert index, f"no {domain} train segments"
        info = sf.info(str(prepared / domain / "train" / index[0]["file"]))
        assert info.samplerate == 16000 and info.channels == 1 and abs(info.duration - 4.0) < 1e-3
    for split in ("train", "valid", "test"):
        assert (prepared / "nsynth" / split / "examples.json").is_file()
    metrics = json.loads((tiny_repo.path / "reports/metrics/prepare.json").read_text())
    assert metrics["cello.train.items"] > 0


def test_splits_are_by_recording(tiny_repo):
    prepared = tiny_repo.path / "data/prepared/cello"
    owners: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        for entry in json.loads((prepared / split / "index.json").read_text()):
            assert owners.setdefault(entry["recording"], split) == split, "a recording leaked across splits"
    assert set(owners.values()) == {"train", "valid", "test"}


def test_second_repro_is_a_noop(tiny_repo):
    result = tiny_repo.dvc("repro")
    text = result.stdout + result.stderr
    assert "Running stage" not in text
    assert "up to date" in text.lower()


def test_mlflow_runs_carry_provenance(tiny_repo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_repo.path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("timbrelab")
    assert experiment is not None and experiment.artifact_location.startswith("file://")
    head = tiny_repo.run("git", "rev-parse", "HEAD").stdout.strip()
    lock = _lock(tiny_repo)["stages"]
    for stage in STAGES:
        runs = client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'")
        assert runs, f"no MLflow run for {stage}"
        run = runs[0]
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["git.commit"] == head
        assert tags["git.dirty"] == "false"
        assert tags["lib.torch"].startswith("2.13.0")
        for dep in lock[stage]["deps"]:
            assert tags[f"dvc.dep.{dep['path']}"] == dep["md5"], dep["path"]
        assert run.data.params, "params not logged"
        assert "stage_seconds" in run.data.metrics
        expected = ARTIFACTS.get(stage, "manifest.json")
        folder = expected.rpartition("/")[0] or None
        assert expected in [a.path for a in client.list_artifacts(run.info.run_id, folder)]


def test_forced_repro_reproduces_dvc_lock(tiny_repo):
    before = (tiny_repo.path / "dvc.lock").read_text()
    tiny_repo.dvc("repro", "-f")
    assert (tiny_repo.path / "dvc.lock").read_text() == before


def test_evaluation_and_report_output(tiny_repo):
    """Every system evaluated on the same clips; the summary ranks them by the numbers it shows; the report
    run links to the training runs it evaluated and carries a self-contained page."""
    from mlflow.tracking import MlflowClient

    root = tiny_repo.path
    transfer_set = json.loads((root / "data/transfer_set/manifest.json").read_text())
    sources = [item["id"] for item in transfer_set["groups"]["source"]]
    assert sources and all(item["f0_file"] for item in transfer_set["groups"]["source"])
    for system in SYSTEMS:
        results = json.loads((root / "reports/eval" / system / "results.json").read_text())
        ids = [clip["id"] for clip in results["clips"]] + [f["id"] for f in results["failed"]]
        if system == "target":
            assert ids == [item["id"] for item in transfer_set["groups"]["target"]]
        else:
            assert sorted(ids) == sources
        for clip in results["clips"]:
            assert sf.info(str(root / "reports/eval" / system / clip["audio"])).samplerate == 16000

    doc = json.loads((root / "reports/metrics.json").read_text())
    assert set(SYSTEMS) <= set(doc) and "classifier" in doc
    ranked = sorted((s for s in SYSTEMS if "rank" in doc[s]), key=lambda s: doc[s]["rank"])
    assert ranked and "target" not in ranked
    scores = [doc[s]["transfer_score"] for s in ranked]
    assert scores == sorted(scores, reverse=True)
    for system in SYSTEMS:
        assert doc[system]["acceptance_low"] <= doc[system]["acceptance"] <= doc[system]["acceptance_high"]
    assert "raw_pitch" not in doc["target"] and "recon_spectral" in doc["ddsp"]
    assert "recon_spectral" not in doc["identity"]
    # The timbre metric means something only if the classifier separates the domains on these clips.
    assert doc["target"]["acceptance"] > doc["identity"]["acceptance"] + 0.3

    html = (root / "reports/index.html").read_text()
    for system in SYSTEMS:
        assert f"eval/{system}/" in html or system == "target"
    assert "http://" not in html and "https://" not in html

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("timbrelab")

    def latest(stage):
        return client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'",
                                  order_by=["attributes.start_time DESC"])[0]

    report = latest("report")
    for stage in ("train_ddsp", "train_classifier", *(f"evaluate_{s}" for s in SYSTEMS)):
        assert report.data.tags.get(f"run.{stage}") == latest(stage).info.run_id, stage
    assert latest("evaluate_ddsp").data.tags["run.train_ddsp"] == latest("train_ddsp").info.run_id
    assert report.data.metrics["ddsp.acceptance"] == pytest.approx(doc["ddsp"]["acceptance"])
    page = client.download_artifacts(report.info.run_id, "report/index.html", str(root / ".mlflow-page"))
    text = Path(page).read_text()
    assert "data:audio/wav;base64," in text and 'src="eval/' not in text

def test_report_plays_in_a_browser(tiny_repo, browser_context):
    import re

    html = tiny_repo.path / "reports/index.html"
    sources = re.findall(r'<audio[^>]*\bsrc="([^"]+)"', html.read_text())
    assert sources
    from urllib.parse import unquote

    durations = [sf.info(str((html.parent / unquote(src)).resolve())).duration for src in sources]
    open_and_check(browser_context, html, durations)

def test_adding_a_system_evaluates_only_that_system(tiny_repo):
    """The three steps of docs/evaluation.md ("Adding a system") on a copy of identity, then `dvc repro`:
    only the new system and the report run."""
    root = tiny_repo.path
    systems = root / "src/timbrelab/evaluation/systems"
    (systems / "echo.py").write_text((systems / "identity.py").read_text().replace('"identity"', '"echo"'))
    conf = (root / "conf/config.yaml").read_text()
    (root / "conf/config.yaml").write_text(conf.replace("    identity: {}\n", "    identity: {}\n    echo: {}\n"))
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    stage = json.loads(json.dumps(spec["stages"]["evaluate_identity"]).replace("identity", "echo"))
    spec["stages"]["evaluate_echo"] = stage
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    from conftest import BIN

    tiny_repo.run(str(BIN / "timbrelab"), "params", "profile=tiny")
    text = tiny_repo.dvc("repro").stdout
    assert "Running stage 'evaluate_echo'" in text and "Running stage 'report'" in text
    ran = {line.split("'")[1] for line in text.splitlines() if line.startswith("Running stage")}
    assert ran == {"evaluate_echo", "report"}, ran
    doc = json.loads((root / "reports/metrics.json").read_text())
    assert doc["echo"]["raw_pitch"] == doc["identity"]["raw_pitch"]

def test_one_system_param_reevaluates_only_that_system(tiny_repo):
    result = tiny_repo.dvc("exp", "run", "-S", "profile=tiny", "-S", "evaluate.systems.ddsp.octave_shift=0")
    text = result.stdout + result.stderr
    assert "Running stage 'evaluate_ddsp'" in text and "Running stage 'report'" in text
    for stage in ("train_ddsp", "train_classifier", "transfer_set", "evaluate_identity", "evaluate_cqt_griffinlim",
                  "evaluate_target"):
        assert f"Running stage '{stage}'" not in text
    results = json.loads((tiny_repo.path / "reports/eval/ddsp/results.json").read_text())
    assert {clip["octave_shift"] for clip in results["clips"]} == {0.0}
    shown = tiny_repo.dvc("metrics", "show", "--json")
    assert "ddsp" in json.dumps(json.loads(shown.stdout))
    # docs/evaluation.md's `dvc metrics diff`: the summary's numbers against the commit (the demo's, here).
    diff = json.loads(tiny_repo.dvc("metrics", "diff", "--json").stdout)
    assert "ddsp.acceptance" in diff["reports/metrics.json"]


def test_exp_run_reruns_only_what_depends_on_the_key(tiny_repo):
    result = tiny_repo.dvc("exp", "run", "-S", "profile=tiny", "-S", "prepare.segment_seconds=2",
                           "-S", "prepare.segment_hop_seconds=2")
    text = result.stdout + result.stderr
    assert "Running stage 'prepare'" in text
    for stage in ("acquire_cello", "acquire_nsynth", "acquire_source"):
        assert f"Running stage '{stage}'" not in text
    params = yaml.safe_load((tiny_repo.path / "params.yaml").read_text())
    assert params["prepare"]["segment_seconds"] == 2
    index = json.loads((tiny_repo.path / "data/prepared/cello/train/index.json").read_text())
    assert all(abs(entry["duration_s"] - 2.0) < 1e-6 for entry in index)
    # DVC composed params.yaml itself; timbrelab composes byte-identical text for the same overrides.
    from conftest import BIN

    tiny_repo.run(str(BIN / "timbrelab"), "params", "--check", "profile=tiny", "prepare.segment_seconds=2",
                  "prepare.segment_hop_seconds=2")


def test_committed_dvc_lock_is_reproduced_from_scratch(tmp_path):
    """The default (demo) pipeline, run from nothing in a copy, against the real repository's HEAD (never its
    working tree, which `make repro` may have rewritten): data stages byte for byte on any machine; model stages
    byte for byte where this machine's CPU fingerprint equals the committed dvc.lock.cpu.json, else their
    metrics within the tolerances of tests/lockcheck.py (docs/pipeline.md, "What reproduces where")."""
    import lockcheck
    from conftest import BIN, REPO, copy_repository, run

    repo = copy_repository(tmp_path / "timbrelab")
    run([str(BIN / "dvc"), "repro"], repo)
    # What `make repro` writes beside dvc.lock: the CPU and code paths the run above used.
    run([str(BIN / "python"), "-m", "timbrelab.cpu", "--write", lockcheck.FINGERPRINT_FILE], repo)
    result = lockcheck.compare_with_head(REPO, repo)
    if not result.ok:
        dirty = run(["git", "--no-optional-locks", "status", "--porcelain", "--", "src", "conf", "params.yaml",
                     "dvc.yaml", "data/local"], REPO).stdout
        if dirty:
            result.notes.append("the repository has uncommitted changes (the copy ran them, HEAD did not):\n" + dirty)
        result.notes.append("if you changed code or conf/ on purpose, run `make repro` and commit dvc.lock, "
                            f"{lockcheck.FINGERPRINT_FILE} and reports/metrics*.")
    assert result.ok, result.message()
    # The demo's evaluation, reproduced: the timbre classifier tells real cello from the untouched source
    # (else acceptance would mean nothing), and the table's order is the transfer score's.
    doc = json.loads((repo / "reports/metrics.json").read_text())
    assert doc["classifier"]["accuracy"] > 0.85
    assert doc["target"]["acceptance"] > 0.9 > 0.1 > doc["identity"]["acceptance"]
    assert doc["ddsp"]["acceptance"] > doc["identity"]["acceptance"] + 0.3
    assert doc["identity"]["raw_pitch"] > 0.95          # the f0 estimator on the source itself
    ranked = sorted((s for s in doc if "rank" in doc[s]), key=lambda s: doc[s]["rank"])
    scores = [doc[s]["transfer_score"] for s in ranked]
    assert ranked[0] == "ddsp" and scores == sorted(scores, reverse=True)


def test_features_stage_output(tiny_repo):
    from timbrelab.data.datasets import DDSPDataset, FeatureSplit, UnpairedCQTDataset, WaveNetDataset, load_stats

    features = tiny_repo.path / "data/features"
    for domain in ("cello", "source", "nsynth"):
        stats = load_stats(features / domain / "stats.json")
        assert stats["frame_hop"] == 64 and stats["cqt_hop"] == 256 and stats["computed_on"] == "train"
        assert len(stats["loudness_db"]["quantiles"]) == 101
        split = FeatureSplit(features / domain / "train", stats)
        assert len(split.entries) > 0
        png = tiny_repo.path / "reports/data" / f"{domain}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
    cello = load_stats(features / "cello/stats.json")
    assert 36 <= cello["f0"]["p01_midi"] < cello["f0"]["mean_midi"] < cello["f0"]["p99_midi"] <= 84
    item = DDSPDataset(features / "cello/train", cello, crop_seconds=1.0)[0]
    assert item["audio"].shape[0] == 250 * 64 and item["f0_hz"].shape[0] == 250
    source = load_stats(features / "source/stats.json")
    pair = UnpairedCQTDataset(features / "source/train", features / "cello/train", source, cello, crop_frames=32)[0]
    assert pair["a"].shape == pair["b"].shape == (1, cello["n_bins"], 32)
    wav = WaveNetDataset(features / "cello/train", cello, crop_frames=8)[0]
    assert wav["audio"].shape[0] == 8 * 256


def test_train_ddsp_stage_output(tiny_repo):
    import torch

    from timbrelab.models import registry

    out = tiny_repo.path / "models/ddsp"
    metrics = json.loads((tiny_repo.path / "reports/metrics/train_ddsp.json").read_text())
    assert metrics["steps"] == 20
    assert metrics["val/loss_best"] < metrics["val/loss_initial"]
    for key in ("gap", "baseline/val_loss", "margin"):
        assert key in metrics
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["train_config"]["model"]["preset"] == "tiny"
    model, _ = registry.load(out / "model.pt", "ddsp")
    audio = model(torch.full((1, 101), 220.0), torch.full((1, 101), -30.0), 6400)
    assert audio.shape == (1, 6400) and torch.isfinite(audio).all()
    rows = (out / "curves.csv").read_text().strip().splitlines()
    assert rows[0] == "step,train_loss,val_loss" and len(rows) == 3


def test_train_classifier_stage_output(tiny_repo):
    from timbrelab.evaluation.classifier import load_classifier

    out = tiny_repo.path / "models/classifier"
    metrics = json.loads((tiny_repo.path / "reports/metrics/train_classifier.json").read_text())
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    assert {f"test/accuracy.{d}" for d in ("cello", "source", "nsynth")} <= set(metrics)
    model, payload = load_classifier(out / "model.pt")
    assert list(model.domains) == ["cello", "source", "nsynth"] and payload["train_config"]["steps"] == 60
    full = json.loads((out / "metrics.json").read_text())
    confusion = full["test/confusion"]
    assert [sum(row) for row in confusion] == [full["test/patches"][d] for d in model.domains]



def test_the_cyclegan_trains_between_nsynth_and_cello_through_config(tiny_repo, tmp_path):
    """The default stage translates the glides; NSynth notes <-> cello is a config change (`domain_a: nsynth`)."""
    from timbrelab.training.cyclegan import train
    from timbrelab.training.cyclegan_config import CycleGANTrainConfig

    cfg = CycleGANTrainConfig(domain_a="nsynth", domain_b="cello", model={"preset": "tiny"}, crop_frames=32,
                              max_steps=2, val_every_steps=2, checkpoint_root=str(tmp_path / "cache"))
    metrics = train(cfg, tmp_path / "out", features_root=tiny_repo.path / "data/features", progress=False)
    assert metrics["steps"] == 2 and np.isfinite(metrics["identity/test_frechet_profile"])
    payload = torch.load(tmp_path / "out/model.pt", weights_only=True)
    assert payload["stats"]["domain_a"] == "nsynth" and payload["train_config"]["domain_b"] == "cello"
    # The default pipeline's own CycleGAN: both models, and its two rows in the report.
    doc = json.loads((tiny_repo.path / "reports/metrics.json").read_text())
    assert {"cyclegan", "cyclegan_untrained"} <= set(doc)
    assert (tiny_repo.path / "models/cyclegan/untrained.pt").is_file()
