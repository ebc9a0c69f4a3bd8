"""Hostile inputs (issue #19): nothing lost, nothing silently wrong, nothing path-dependent in manifests.

Cached archives keyed by URL, every skipped NSynth note in the manifest, truncated and damaged audio
skipped with a reason, DC removed before normalisation, clipped recordings skipped, failure reasons
free of absolute paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_nsynth import FILTER, KEPT, make_archive, server  # noqa: F401 - server is a fixture
from test_prepare import CFG, SR, all_segments, tone, write_domain
from test_youtube import KW, http_server, write_wav  # noqa: F401 - http_server is a fixture

from timbrelab.audio import load_audio, rms_db
from timbrelab.config import LocalFolderConfig, NSynthDownloadConfig, NSynthLocalConfig
from timbrelab.data import nsynth, youtube
from timbrelab.data import prepare as prepare_mod
from timbrelab.data.local import acquire_local
from timbrelab.data.prepare import prepare_recordings
from timbrelab.errors import AudioError, DownloadError


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(nsynth, "RETRY_BACKOFF_S", 0.0)


# --------------------------------------------------------------------------------------------------
# 3. the NSynth download cache is keyed by URL


def _download_cfg(server, tmp_path: Path, prefix: str) -> NSynthDownloadConfig:
    return NSynthDownloadConfig(url_template=f"{server.url}/{prefix}/nsynth-{{split}}.jsonwav.tar.gz",
                                splits=["valid"], filter=FILTER, retries=1, timeout_s=5,
                                cache_dir=str(tmp_path / "cache"))


def test_changed_url_template_downloads_again_and_credits_the_new_url(tmp_path, server):
    old, new = make_archive(tmp_path / "a", seed=0), make_archive(tmp_path / "b", seed=1)
    server.state.files["/old/nsynth-valid.jsonwav.tar.gz"] = old.data
    server.state.files["/new/nsynth-valid.jsonwav.tar.gz"] = new.data
    first = nsynth.acquire_download(_download_cfg(server, tmp_path, "old"), tmp_path / "out", progress=False)
    assert first["failed"] == [] and first["items"]
    second = nsynth.acquire_download(_download_cfg(server, tmp_path, "new"), tmp_path / "out", progress=False)
    assert [r[0] for r in server.state.requests] == ["/old/nsynth-valid.jsonwav.tar.gz",
                                                     "/new/nsynth-valid.jsonwav.tar.gz"]
    for item in second["items"]:  # the new URL's bytes, credited to the new URL
        assert item["url"].startswith(f"{server.url}/new/")
        assert item["sha256"] == nsynth.sha256_file(tmp_path / "out" / item["file"])
        assert (tmp_path / "out" / item["file"]).read_bytes() == new.wavs[item["id"]]


def test_bad_cached_archive_is_not_reused_after_the_url_is_fixed(tmp_path, server):
    good = make_archive(tmp_path / "a")
    server.state.files["/bad/nsynth-valid.jsonwav.tar.gz"] = b"<html>a proxy's error page</html>"
    server.state.files["/good/nsynth-valid.jsonwav.tar.gz"] = good.data
    bad = nsynth.acquire_download(_download_cfg(server, tmp_path, "bad"), tmp_path / "out", progress=False)
    assert "corrupt or truncated" in bad["failed"][0]["reason"]
    fixed = nsynth.acquire_download(_download_cfg(server, tmp_path, "good"), tmp_path / "out", progress=False)
    assert fixed["failed"] == [] and sorted(i["id"] for i in fixed["items"]) == sorted(KEPT)


def test_partial_download_of_another_url_is_not_resumed(tmp_path, server):
    a, b = make_archive(tmp_path / "a", seed=0), make_archive(tmp_path / "b", seed=1)
    server.state.files["/a.tar.gz"], server.state.files["/b.tar.gz"] = a.data, b.data
    server.state.drop_after, server.state.drop_requests = len(a.data) // 2, 99
    dest = tmp_path / "cache" / "x.tar.gz"
    with pytest.raises(DownloadError, match="rerun to resume"):
        nsynth.download(server.url + "/a.tar.gz", dest, retries=0, timeout_s=5, progress=False)
    server.state.drop_after = None
    nsynth.download(server.url + "/b.tar.gz", dest, retries=0, timeout_s=5, progress=False)
    assert server.state.requests[-1] == ("/b.tar.gz", None)  # started from 0, not spliced onto a's bytes
    assert dest.read_bytes() == b.data
    # the same URL still resumes
    server.state.drop_after, server.state.drop_requests = len(a.data) // 3, len(server.state.requests) + 1
    other = tmp_path / "cache" / "y.tar.gz"
    nsynth.download(server.url + "/a.tar.gz", other, retries=2, timeout_s=5, progress=False)
    assert server.state.requests[-1] == ("/a.tar.gz", f"bytes={len(a.data) // 3}-")
    assert other.read_bytes() == a.data


# --------------------------------------------------------------------------------------------------
# 4. every skipped NSynth note reaches the manifest and the metrics


def test_skipped_nsynth_notes_reach_the_manifest_and_metrics(tmp_path):
    from timbrelab.stages import acquire_nsynth

    archives = tmp_path / "archives"
    archives.mkdir()
    make_archive(archives, strays=True)  # a wav without an entry, an entry without a wav, a bad name
    cfg = NSynthLocalConfig(path=str(archives), splits=["valid"], filter=FILTER)
    result = acquire_nsynth.run(cfg, tmp_path)
    manifest = json.loads((tmp_path / acquire_nsynth.OUT / "manifest.json").read_text())
    reasons = {entry["id"]: entry["reason"] for entry in manifest["failed"]}
    assert set(reasons) == {"string_acoustic_000-064-100", "flute_acoustic_003-076-100",
                            "nsynth-valid/audio/README_take2.wav"}
    assert "no audio in the archive" in reasons["flute_acoustic_003-076-100"]
    assert "without an entry" in reasons["string_acoustic_000-064-100"]
    assert "not an NSynth note_str" in reasons["nsynth-valid/audio/README_take2.wav"]
    assert all(entry["split"] == "valid" for entry in manifest["failed"])
    assert result.metrics["failed"] == 3 and result.metrics["notes"] == len(KEPT)


# --------------------------------------------------------------------------------------------------
# 5. truncated and damaged audio


def _truncate(path: Path, keep_s: float, total_s: float) -> None:
    data = path.read_bytes()
    header = len(data) - int(round(total_s * SR)) * 2  # mono PCM_16
    path.write_bytes(data[: header + int(round(keep_s * SR)) * 2])


def test_truncated_wav_is_skipped_by_the_local_source_naming_both_durations(tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    sf.write(str(src / "whole.wav"), tone(6.0), SR, subtype="PCM_16")
    sf.write(str(src / "cut.wav"), tone(6.0), SR, subtype="PCM_16")
    _truncate(src / "cut.wav", 2.0, 6.0)
    items, failed = acquire_local(LocalFolderConfig(path=str(src)), tmp_path / "out", progress=False)
    assert [item["file"] for item in items] == ["whole.wav"]
    assert [entry["file"] for entry in failed] == ["cut.wav"]
    assert "truncated" in failed[0]["reason"] and "6.00 s" in failed[0]["reason"]
    assert "2.00 s" in failed[0]["reason"] and str(tmp_path) not in failed[0]["reason"]


def test_truncated_wav_and_flac_are_skipped_by_prepare(tmp_path):
    raw = write_domain(tmp_path / "raw", {"good": (tone(6.0), SR), "cut": (tone(6.0), SR)})
    _truncate(raw / "cut.wav", 2.0, 6.0)
    sf.write(str(raw / "cutflac.flac"), tone(6.0), SR)
    data = (raw / "cutflac.flac").read_bytes()
    (raw / "cutflac.flac").write_bytes(data[: len(data) // 3])
    manifest = json.loads((raw / "manifest.json").read_text())
    manifest["items"].append({"id": "cutflac", "file": "cutflac.flac"})
    (raw / "manifest.json").write_text(json.dumps(manifest))
    summary = prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    reasons = {entry["id"]: entry["reason"] for entry in summary["skipped"]}
    assert set(reasons) == {"cut", "cutflac"}
    assert not any(str(tmp_path) in reason for reason in reasons.values())  # issue 8: path-free
    assert "truncated" in reasons["cut"] and "6.00 s" in reasons["cut"] and "2.00 s" in reasons["cut"]
    assert "truncated" in reasons["cutflac"] and "6.00 s" in reasons["cutflac"]
    assert summary["recordings"] == {"good": "train"}


def test_load_audio_refuses_a_truncated_wav(tmp_path):
    sf.write(str(tmp_path / "cut.wav"), tone(6.0), SR, subtype="PCM_16")
    _truncate(tmp_path / "cut.wav", 2.0, 6.0)
    with pytest.raises(AudioError, match=r"cut\.wav: truncated.*6\.00 s.*2\.00 s"):
        load_audio(tmp_path / "cut.wav")


def test_damaged_ogg_is_skipped_by_the_local_source(tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    sf.write(str(src / "bad.ogg"), tone(6.0), SR, format="OGG", subtype="VORBIS")
    data = bytearray((src / "bad.ogg").read_bytes())
    data[len(data) // 2: len(data) // 2 + 300] = bytes(300)  # a damaged page mid-file
    (src / "bad.ogg").write_bytes(bytes(data))
    sf.write(str(src / "good.ogg"), tone(2.0), SR, format="OGG", subtype="VORBIS")
    items, failed = acquire_local(LocalFolderConfig(path=str(src)), tmp_path / "out", progress=False)
    assert [item["file"] for item in items] == ["good.ogg"]
    assert [entry["file"] for entry in failed] == ["bad.ogg"] and "damaged" in failed[0]["reason"]


# --------------------------------------------------------------------------------------------------
# 6. DC offset and clipping


def test_dc_offset_is_removed_before_normalisation(tmp_path):
    audio = tone(3.0, rms_dbfs=-20) + np.float32(0.1)  # the DC holds half the power
    raw = write_domain(tmp_path / "raw", {"dc": (audio, SR)})
    summary = prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    assert summary["skipped"] == []
    for split, entry in all_segments(tmp_path / "out"):
        seg, _ = sf.read(str(tmp_path / "out" / split / entry["file"]), dtype="float32")
        assert abs(float(np.mean(seg))) < 1e-3
        assert abs(rms_db(seg) - CFG.target_rms_db) < 0.5


def test_clipping_fraction_of_a_clean_and_a_clipped_sine():
    clean = tone(2.0, freq=65.4, rms_dbfs=-3.01)  # full-scale low C: the worst case of a clean signal
    assert prepare_mod.clipped_fraction(clean) < prepare_mod.CLIP_FRACTION_MAX
    for ceiling in (0.9, 0.5):
        clipped = np.clip(tone(2.0, freq=220.0, rms_dbfs=-3.01), -ceiling, ceiling)
        assert prepare_mod.clipped_fraction(clipped) > prepare_mod.CLIP_FRACTION_MAX


def test_hard_clipped_recordings_are_skipped_with_the_reason(tmp_path):
    sine = tone(3.0, freq=220.0, rms_dbfs=-3.01)
    raw = write_domain(tmp_path / "raw", {"square": (0.9 * np.sign(sine).astype(np.float32), SR),
                                          "clipped": (np.clip(2.0 * sine, -0.95, 0.95), SR),
                                          "clean": (tone(3.0, rms_dbfs=-12), SR)})
    summary = prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    reasons = {entry["id"]: entry["reason"] for entry in summary["skipped"]}
    assert set(reasons) == {"square", "clipped"}
    assert all("clipped" in reason and "%" in reason for reason in reasons.values())
    assert summary["recordings"] == {"clean": "train"}


# --------------------------------------------------------------------------------------------------
# 8. failure reasons free of absolute paths


def test_nsynth_failure_reasons_name_no_absolute_path(tmp_path, server):
    archives = tmp_path / "archives"
    archives.mkdir()
    make_archive(archives)
    (archives / nsynth.archive_name("test")).write_bytes(b"not a gzip file")
    local = nsynth.acquire_local(NSynthLocalConfig(path=str(archives), splits=["valid", "test"], filter=FILTER),
                                 tmp_path / "out")
    assert [f["split"] for f in local["failed"]] == ["test"]
    server.state.files["/nsynth-test.jsonwav.tar.gz"] = b"not a gzip file"
    cfg = NSynthDownloadConfig(url_template=server.url + "/nsynth-{split}.jsonwav.tar.gz", splits=["test"],
                               filter=FILTER, retries=1, timeout_s=5, cache_dir=str(tmp_path / "cache"))
    download = nsynth.acquire_download(cfg, tmp_path / "out2", progress=False)
    for entry in local["failed"] + download["failed"]:
        assert "nsynth-test.jsonwav.tar.gz: corrupt" in entry["reason"]
        assert str(tmp_path) not in entry["reason"]


def test_prepare_skip_reasons_name_no_absolute_path(tmp_path):
    raw = write_domain(tmp_path / "raw", {"good": (tone(2.0), SR)})
    manifest = json.loads((raw / "manifest.json").read_text())
    manifest["items"] += [{"id": "gone", "file": "gone.wav"}, {"id": "good", "file": "good.wav"}]
    (raw / "manifest.json").write_text(json.dumps(manifest))
    summary = prepare_recordings(raw, tmp_path / "out", CFG, domain="cello", progress=False)
    reasons = {entry["id"]: entry["reason"] for entry in summary["skipped"]}
    assert "missing from raw" in reasons["gone"] and "duplicate id in raw/manifest.json" in reasons["good"]
    assert not any(str(tmp_path) in reason for reason in reasons.values())


def test_youtube_failure_reasons_name_no_absolute_path(http_server, tmp_path):
    (http_server.root / "noise.wav").write_bytes(np.random.default_rng(0).bytes(8000))
    write_wav(http_server.root, "sine.wav", 1.0)
    videos = [{"id": "noise", "url": http_server.url("noise.wav")}, {"id": "sine", "url": http_server.url("sine.wav")}]
    items, failed = youtube.acquire(videos, tmp_path / "out", cache_dir=tmp_path / "cache", **KW)
    assert [item["id"] for item in items] == ["sine"]
    assert [entry["id"] for entry in failed] == ["noise"] and "not decodable" in failed[0]["reason"]
    assert str(tmp_path) not in failed[0]["reason"] and "noise.wav" in failed[0]["reason"]
