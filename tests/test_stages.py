"""Switching data sources works end to end through the real stage functions.

Every test composes its params from the real conf/ with Hydra overrides (so the conf/ variants
themselves are exercised), runs the stages through ``common.execute_stage`` in a temporary "repo"
(a ``dvc.yaml`` stub), and checks what lands in data/raw/, data/prepared/, reports/metrics/ and the
MLflow store. Network sources are local 127.0.0.1 servers (the fixtures of test_youtube/test_nsynth).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from omegaconf import OmegaConf
from test_nsynth import NOTES, make_archive, server  # noqa: F401 - server is a fixture
from test_nsynth import _ns as note_str
from test_youtube import http_server, write_feed, write_ogg, write_wav  # noqa: F401 - http_server is a fixture

from timbrelab import config, paths, tracking
from timbrelab.config import YoutubeConfig
from timbrelab.errors import ConfigError, TimbrelabError
from timbrelab.f0track import F0_HEADER, n_frames, read_f0_csv, write_f0_csv
from timbrelab.fsutil import round_floats
from timbrelab.stages import stage_entry
from timbrelab.stages.common import StageResult, execute_stage

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SR = 16000
HOP = 64
# tiny profile, 1 s segments: every recording of a few seconds gives a few segments
TINY = ["profile=tiny", "prepare.segment_seconds=1.0", "prepare.segment_hop_seconds=1.0"]
# conf/nsynth/*.yaml's default filter keeps these notes of test_nsynth's archives
NSYNTH_KEPT = sorted(note_str(n) for n in NOTES if n[0] in {"string", "vocal", "flute", "brass", "reed"}
                     and n[1] == "acoustic")


class Repo:
    """A temporary repository the stages run in (cwd, repo_root() and the MLflow store all point here)."""

    def __init__(self, root: Path):
        self.root = root

    def params(self, *overrides: str) -> dict:
        """conf/ composed with ``overrides`` on top of the tiny profile, as the params.yaml dict."""
        return OmegaConf.to_container(config.compose([*TINY, *overrides], conf_dir=CONF))

    def stage(self, name: str, params: dict) -> StageResult:
        module = stage_entry(name)
        return execute_stage(module.STAGE, module.SCHEMAS, module.run, params=params)

    def manifest(self, rel: str) -> dict:
        return json.loads((self.root / rel / "manifest.json").read_text(encoding="utf-8"))

    def metrics(self, stage: str) -> dict:
        return json.loads((self.root / "reports/metrics" / f"{stage}.json").read_text(encoding="utf-8"))

    def runs(self, stage: str):
        """MLflow runs tagged with ``stage``, newest first."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
        assert experiment is not None, "no stage has logged to the MLflow store"
        return client.search_runs([experiment.experiment_id], filter_string=f"tags.stage = '{stage}'",
                                  order_by=["attributes.start_time DESC"])

    def assert_tracked(self, stage: str, result: StageResult, n_runs: int = 1) -> None:
        """The stage logged one FINISHED MLflow run per call, and wrote its DVC metrics file."""
        runs = self.runs(stage)
        assert len(runs) == n_runs
        run = runs[0]
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == stage
        for key, value in result.metrics.items():
            assert run.data.metrics[key] == pytest.approx(float(value))
        assert self.metrics(stage) == round_floats(result.metrics)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Repo:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")
    for key in list(os.environ):
        if key.startswith(("MLFLOW_", "DVC_", "TIMBRELAB_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(root)
    assert paths.repo_root() == root.resolve()
    return Repo(root)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def prepared_index(root: Path, domain: str) -> dict[str, list[dict]]:
    base = root / "data/prepared" / domain
    return {split: json.loads((base / split / "index.json").read_text()) for split in ("train", "valid", "test")}


def cello_folder(tmp_path: Path) -> Path:
    """Your own recordings: a 44.1 kHz stereo wav, a flac, and a text file that is no audio."""
    folder = tmp_path / "my cello"
    (folder / "Suite 1").mkdir(parents=True)
    write_wav(folder / "Suite 1", "Prélude.WAV", 3.2, 220.0)
    write_wav(folder, "allemande.flac", 2.4, 330.0)
    (folder / "notes.txt").write_text("recorded in the kitchen\n", encoding="utf-8")
    assert sf.info(str(folder / "Suite 1/Prélude.WAV")).samplerate == 44100
    assert sf.info(str(folder / "Suite 1/Prélude.WAV")).channels == 2
    assert sf.info(str(folder / "allemande.flac")).format == "FLAC"
    return folder


def source_folder(tmp_path: Path, seconds: float = 3.1) -> tuple[Path, Path]:
    """One 44.1 kHz recording with its true f0 track (a 4 ms = 64-samples-at-16-kHz grid) beside it."""
    folder = tmp_path / "my source"
    folder.mkdir()
    write_wav(folder, "glide.wav", seconds, 440.0)
    rows = n_frames(round(seconds * SR), HOP)
    times = np.arange(rows) * (HOP / SR)
    voiced = times < seconds / 2  # voiced first half, so the segments' f0 files differ
    sidecar = folder / "glide.f0.csv"
    write_f0_csv(sidecar, times, np.full(rows, 440.0), voiced)
    assert sidecar.read_text().splitlines()[0] == F0_HEADER
    return folder, sidecar


def nsynth_archives(tmp_path: Path, splits=("valid", "test")) -> Path:
    folder = tmp_path / "my nsynth"
    folder.mkdir()
    for i, split in enumerate(splits):
        make_archive(folder, split=split, seed=i)
    return folder


# --------------------------------------------------------------------------------------------------
# 1. cello: local folder -> prepare


def test_local_cello_folder_through_prepare(repo, tmp_path):
    folder = cello_folder(tmp_path)
    archives = nsynth_archives(tmp_path, ("valid",))
    cello = repo.stage("acquire_cello", repo.params("cello@acquire_cello=local", f"acquire_cello.path={folder}"))
    repo.assert_tracked("acquire_cello", cello)
    source = repo.stage("acquire_source", repo.params())  # glides, tiny profile (the default variant)
    nsynth = repo.stage("acquire_nsynth", repo.params("nsynth@acquire_nsynth=local",
                                                      f"acquire_nsynth.path={archives}", "acquire_nsynth.splits=[valid]"))

    manifest = repo.manifest("data/raw/cello")
    assert manifest["stage"] == "acquire_cello" and manifest["domain"] == "cello"
    assert manifest["config"]["source"] == "local" and manifest["config"]["path"] == str(folder)
    items = {item["id"]: item for item in manifest["items"]}
    assert sorted(items) == ["allemande", "suite-1__prelude"]
    assert items["suite-1__prelude"]["file"] == "suite-1__prelude.wav"
    assert (items["suite-1__prelude"]["sample_rate"], items["suite-1__prelude"]["channels"]) == (44100, 2)
    assert items["suite-1__prelude"]["provenance"] == {"source": "local", "relpath": "Suite 1/Prélude.WAV"}
    assert items["allemande"]["file"] == "allemande.flac"
    assert items["suite-1__prelude"]["duration_s"] == pytest.approx(3.2, abs=1e-3)
    assert (repo.root / "data/raw/cello/allemande.flac").read_bytes() == (folder / "allemande.flac").read_bytes()
    assert [(f["file"], f["status"]) for f in manifest["failed"]] == [("notes.txt", "skipped")]
    assert "not an audio file" in manifest["failed"][0]["reason"]
    assert cello.metrics == {"recordings": 2, "failed": 1, "seconds": pytest.approx(5.6, abs=1e-3)}

    repo.assert_tracked("acquire_source", source)
    repo.assert_tracked("acquire_nsynth", nsynth)

    prepared = repo.stage("prepare", repo.params())
    repo.assert_tracked("prepare", prepared)
    index = prepared_index(repo.root, "cello")
    split_of: dict[str, set[str]] = {}
    segments: dict[str, int] = {}
    for split, entries in index.items():
        for entry in entries:
            split_of.setdefault(entry["recording"], set()).add(split)
            segments[entry["recording"]] = segments.get(entry["recording"], 0) + 1
            info = sf.info(str(repo.root / "data/prepared/cello" / split / entry["file"]))
            assert (info.samplerate, info.channels, info.frames) == (SR, 1, SR)
    # split by recording: each recording lies wholly in one split; 2 recordings -> one train, one valid
    assert sorted(split_of) == ["allemande", "suite-1__prelude"]
    assert all(len(splits) == 1 for splits in split_of.values())
    assert sorted(next(iter(splits)) for splits in split_of.values()) == ["train", "valid"]
    assert segments == {"suite-1__prelude": 3, "allemande": 2}
    domains = repo.manifest("data/prepared")["domains"]
    assert domains["cello"]["recordings"] == {rid: next(iter(s)) for rid, s in split_of.items()}
    assert prepared.metrics["cello.train.items"] + prepared.metrics["cello.valid.items"] == 5
    assert prepared.metrics["cello.test.items"] == 0
    assert prepared.metrics["nsynth.valid.items"] == len(NSYNTH_KEPT)
    assert prepared.metrics["source.train.items"] > 0 and source.metrics["with_true_f0"] == 3
    assert nsynth.metrics["notes"] == len(NSYNTH_KEPT)


# --------------------------------------------------------------------------------------------------
# 2. source: local folder with f0 sidecars -> prepare keeps a frame-exact f0 per segment


def test_local_source_with_f0_sidecar_through_prepare(repo, tmp_path):
    folder, sidecar = source_folder(tmp_path)
    source = repo.stage("acquire_source", repo.params("source@acquire_source=local", f"acquire_source.path={folder}"))
    repo.assert_tracked("acquire_source", source)
    repo.stage("acquire_cello", repo.params())   # offline, tiny profile
    repo.stage("acquire_nsynth", repo.params())  # offline, tiny profile

    raw = repo.root / "data/raw/source"
    manifest = repo.manifest("data/raw/source")
    assert [item["id"] for item in manifest["items"]] == ["glide"] and manifest["failed"] == []
    assert sorted(p.name for p in raw.iterdir()) == ["glide.f0.csv", "glide.wav", "manifest.json"]
    assert (raw / "glide.f0.csv").read_bytes() == sidecar.read_bytes()  # carried into raw unchanged

    repo.stage("prepare", repo.params())
    index = prepared_index(repo.root, "source")
    entries = [(split, entry) for split, split_entries in index.items() for entry in split_entries]
    assert [entry["id"] for _, entry in entries] == ["glide_0000", "glide_0001", "glide_0002"]
    _, raw_f0, raw_voiced = read_f0_csv(sidecar)
    for split, entry in entries:
        wav = repo.root / "data/prepared/source" / split / entry["file"]
        f0_file = wav.parent / entry["f0_file"]
        n_samples = sf.info(str(wav)).frames
        assert (n_samples, sf.info(str(wav)).samplerate) == (SR, SR)
        assert f0_file.read_text().splitlines()[0] == F0_HEADER
        times, f0, voiced = read_f0_csv(f0_file)
        assert times.size == n_frames(n_samples, HOP) == 1 + n_samples // HOP
        np.testing.assert_allclose(times, np.arange(times.size) * HOP / SR, atol=1e-6)
        # the rows are exactly the raw rows from the segment's start (start_s lies on the 4 ms grid)
        first = round(entry["start_s"] * SR / HOP)
        np.testing.assert_array_equal(voiced, raw_voiced[first:first + times.size])
        np.testing.assert_array_equal(f0, raw_f0[first:first + times.size])


def test_local_source_counts_its_true_f0_tracks(repo, tmp_path):
    folder, _ = source_folder(tmp_path, seconds=1.2)
    source = repo.stage("acquire_source", repo.params("source@acquire_source=local", f"acquire_source.path={folder}"))
    assert repo.manifest("data/raw/source")["items"][0].get("f0_file") == "glide.f0.csv"
    assert source.metrics["with_true_f0"] == 1


# --------------------------------------------------------------------------------------------------
# 3. nsynth: local archives, download from a Range server, partial and total failure


def test_nsynth_local_and_download_give_the_same_raw_data(repo, tmp_path, server):  # noqa: F811
    archives = nsynth_archives(tmp_path, ("valid", "test"))
    local = repo.stage("acquire_nsynth", repo.params("nsynth@acquire_nsynth=local", f"acquire_nsynth.path={archives}",
                                                     "acquire_nsynth.splits=[valid,test]"))
    repo.assert_tracked("acquire_nsynth", local)
    raw = repo.root / "data/raw/nsynth"
    assert sorted(p.name for p in raw.iterdir()) == ["manifest.json", "test", "valid"]
    for split in ("valid", "test"):  # NSynth's layout: <split>/examples.json + <split>/audio/<note_str>.wav
        examples = json.loads((raw / split / "examples.json").read_text())
        assert sorted(examples) == NSYNTH_KEPT
        assert sorted(p.name for p in (raw / split / "audio").iterdir()) == [f"{n}.wav" for n in NSYNTH_KEPT]
        assert all(record["note_str"] == note for note, record in examples.items())
    manifest = repo.manifest("data/raw/nsynth")
    assert manifest["failed"] == [] and len(manifest["items"]) == 2 * len(NSYNTH_KEPT)
    assert {item["url"] for item in manifest["items"]} == {"local:nsynth-valid.jsonwav.tar.gz",
                                                          "local:nsynth-test.jsonwav.tar.gz"}
    assert local.metrics == {"notes": 2 * len(NSYNTH_KEPT), "failed": 0, "notes_test": len(NSYNTH_KEPT),
                             "notes_valid": len(NSYNTH_KEPT)}
    local_valid = tree(raw / "valid")

    # the same archive over HTTP (only valid is on the server)
    server.state.files["/nsynth-valid.jsonwav.tar.gz"] = (archives / "nsynth-valid.jsonwav.tar.gz").read_bytes()
    template = f"{server.url}/nsynth-{{split}}.jsonwav.tar.gz"
    download = ["nsynth@acquire_nsynth=download", f"acquire_nsynth.url_template='{template}'",
                "acquire_nsynth.retries=1", "acquire_nsynth.timeout_s=5"]
    valid_only = repo.stage("acquire_nsynth", repo.params(*download, "acquire_nsynth.splits=[valid]"))
    repo.assert_tracked("acquire_nsynth", valid_only, n_runs=2)
    assert sorted(p.name for p in raw.iterdir()) == ["manifest.json", "valid"]  # replaced as a whole: the local test/ is gone
    assert tree(raw / "valid") == local_valid
    manifest = repo.manifest("data/raw/nsynth")
    assert manifest["config"]["url_template"] == template and manifest["failed"] == []
    assert [item["id"] for item in manifest["items"]] == NSYNTH_KEPT
    assert {item["url"] for item in manifest["items"]} == {template.format(split="valid")}
    assert (repo.root / "data/cache/nsynth/nsynth-valid.jsonwav.tar.gz").is_file()  # cache under the repo root

    # a split that 404s is recorded as failed; the others land
    partial = repo.stage("acquire_nsynth", repo.params(*download, "acquire_nsynth.splits=[test,valid]"))
    manifest = repo.manifest("data/raw/nsynth")
    assert [(f["split"], f["url"]) for f in manifest["failed"]] == [("test", template.format(split="test"))]
    assert "404" in manifest["failed"][0]["reason"]
    assert sorted(p.name for p in raw.iterdir()) == ["manifest.json", "valid"]
    assert tree(raw / "valid") == local_valid
    assert partial.metrics == {"notes": len(NSYNTH_KEPT), "failed": 1, "notes_valid": len(NSYNTH_KEPT)}
    repo.assert_tracked("acquire_nsynth", partial, n_runs=3)

    # every split fails: the stage fails, and the previous data/raw/nsynth and metrics stay as they were
    before, metrics_before = tree(raw), repo.metrics("acquire_nsynth")
    with pytest.raises(TimbrelabError, match=r"acquire_nsynth produced no items; failures: test: .*404"):
        repo.stage("acquire_nsynth", repo.params(*download, "acquire_nsynth.splits=[test]"))
    assert tree(raw) == before
    assert repo.metrics("acquire_nsynth") == metrics_before
    assert sorted(p.name for p in raw.parent.iterdir()) == ["nsynth"]  # no temp dir left beside it
    runs = repo.runs("acquire_nsynth")
    assert len(runs) == 4 and runs[0].info.status == "FAILED"


# --------------------------------------------------------------------------------------------------
# 4. cello: YouTube (yt-dlp's generic extractor against a local server)


def test_youtube_cello_with_committed_videos(repo, http_server):  # noqa: F811
    s = http_server
    write_wav(s.root, "yt_prelude.wav", 2.0, 220.0)
    write_ogg(s.root, "yt_gigue.ogg", 1.5, 330.0)
    videos = ",".join(f"{{id:{vid},url:'{s.url(name)}',title:'{title}'}}" for vid, name, title in [
        ("yt_prelude", "yt_prelude.wav", "Prelude"), ("yt_gone", "yt_gone.wav", "Gone"),
        ("yt_gigue", "yt_gigue.ogg", "Gigue")])
    overrides = ["cello@acquire_cello=youtube", "acquire_cello.min_duration_s=0", "acquire_cello.retries=1",
                 "acquire_cello.socket_timeout_s=5"]
    result = repo.stage("acquire_cello", repo.params(*overrides, f"acquire_cello.videos=[{videos}]"))
    repo.assert_tracked("acquire_cello", result)

    manifest = repo.manifest("data/raw/cello")
    assert manifest["config"]["source"] == "youtube" and len(manifest["config"]["videos"]) == 3
    assert [(i["id"], i["title"], i["status"]) for i in manifest["items"]] == [
        ("yt_prelude", "Prelude", "ok"), ("yt_gigue", "Gigue", "ok")]
    for item, seconds in zip(manifest["items"], (2.0, 1.5)):
        info = sf.info(str(repo.root / "data/raw/cello" / item["file"]))
        assert (info.samplerate, info.channels) == (SR, 1)
        assert item["duration_s"] == pytest.approx(seconds, abs=0.01)
    assert [(f["id"], f["status"]) for f in manifest["failed"]] == [("yt_gone", "failed")]
    assert "404" in manifest["failed"][0]["reason"]
    assert sorted(p.name for p in (repo.root / "data/raw/cello").iterdir()) == [
        "manifest.json", "yt_gigue.wav", "yt_prelude.wav"]
    assert (repo.root / "data/cache/youtube").is_dir()  # cache_dir is relative to the repo root
    assert result.metrics == {"recordings": 2, "failed": 1, "seconds": pytest.approx(3.5, abs=0.02)}

    # conf/cello/youtube.yaml as committed (videos: []) says how to fill it, and changes nothing
    before = tree(repo.root / "data/raw/cello")
    with pytest.raises(ConfigError, match=r"acquire_cello\.videos is empty.*`timbrelab youtube-resolve"):
        repo.stage("acquire_cello", repo.params("cello@acquire_cello=youtube"))
    assert tree(repo.root / "data/raw/cello") == before
    runs = repo.runs("acquire_cello")
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]


# --------------------------------------------------------------------------------------------------
# The `timbrelab youtube-resolve` command (a subprocess, as a user runs it)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "TIMBRELAB_"))}
    return subprocess.run([sys.executable, "-m", "timbrelab.cli", *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_youtube_resolve_command_writes_the_videos_list(http_server, tmp_path):  # noqa: F811
    s = http_server
    write_feed(s.root, "suites.xml", [
        {"title": f"Suite {i}", "guid": f"bwv100{6 + i}", "url": s.url(f"suite{i}.wav"), "duration": "120"}
        for i in (1, 2, 3)])
    out = tmp_path / "youtube.yaml"
    out.write_text((CONF / "cello/youtube.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    result = _cli("youtube-resolve", s.url("suites.xml"), "--out", str(out), "--max-items", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resolved 2 videos from 1 queries" in result.stdout
    written = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert written["queries"] == [s.url("suites.xml")]
    assert [(v["id"], v["url"], v["title"]) for v in written["videos"]] == [
        ("bwv1007", s.url("suite1.wav"), "Suite 1"), ("bwv1008", s.url("suite2.wav"), "Suite 2")]
    assert written["min_duration_s"] == 60.0 and written["source"] == "youtube"  # other keys kept
    assert out.read_text(encoding="utf-8").startswith("# Bach cello suites")     # leading comment kept
    cfg = config.validate(written, YoutubeConfig, "acquire_cello")  # still a valid variant of the stage
    assert [v.id for v in cfg.videos] == ["bwv1007", "bwv1008"]

    # a query that cannot be resolved: exit 2, one line naming it, no traceback, the file untouched
    text = out.read_text(encoding="utf-8")
    bad = _cli("youtube-resolve", s.url("no_such_feed.xml"), "--out", str(out), cwd=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("timbrelab: error: ") and s.url("no_such_feed.xml") in lines[0] and "404" in lines[0]
    assert "Traceback" not in bad.stderr
    assert out.read_text(encoding="utf-8") == text
