"""NSynth archives: resumable download from a real local HTTP server and safe, filtered extraction.

Everything runs offline on small archives in NSynth's real layout built in tmp_path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from timbrelab.config import NSynthDownloadConfig, NSynthFilter, NSynthLocalConfig
from timbrelab.data import nsynth
from timbrelab.data import nsynth_schema as schema
from timbrelab.errors import ConfigError, DownloadError, TimbrelabError
from timbrelab.fsutil import read_json, sha256_file

SPLIT = "valid"

# (family, source, instrument index, pitch, velocity, qualities)
NOTES = [
    ("string", "acoustic", 0, 60, 100, ("bright",)),
    ("string", "acoustic", 0, 62, 50, ()),
    ("string", "acoustic", 1, 30, 100, ()),
    ("string", "electronic", 2, 60, 100, ()),
    ("flute", "acoustic", 3, 72, 100, ("reverb", "dark")),
    ("flute", "acoustic", 3, 74, 75, ()),
    ("flute", "synthetic", 4, 72, 100, ()),
    ("guitar", "acoustic", 5, 60, 100, ()),
]
AUDIO_ONLY = "string_acoustic_000-064-100"      # a wav with no examples.json entry
EXAMPLES_ONLY = ("flute", "acoustic", 3, 76, 100)  # an examples.json entry with no wav
NOT_A_NOTE = "README_take2"                      # a wav whose name is not a note_str

# families string+flute, acoustic, pitch 40..80, velocity 75/100, no reverb
FILTER = NSynthFilter(families=["string", "flute"], sources=["acoustic"], pitch_min=40, pitch_max=80,
                      velocities=[75, 100], exclude_qualities=["reverb"])
KEPT = {"string_acoustic_000-060-100", "flute_acoustic_003-074-075"}


def _ns(note: tuple) -> str:
    return schema.note_str(*note[:5])


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(nsynth, "RETRY_BACKOFF_S", 0.0)


# --------------------------------------------------------------------------------------------------
# Archives in NSynth's layout


@dataclass
class Archive:
    path: Path
    wavs: dict[str, bytes]          # note_str (stem) -> bytes as stored in the archive
    examples: dict[str, dict]
    members: int

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def build_tree(root: Path, split: str = SPLIT, seed: int = 0, strays: bool = False
               ) -> tuple[Path, dict[str, bytes], dict]:
    """NOTES in NSynth's layout; ``strays`` adds AUDIO_ONLY, EXAMPLES_ONLY and NOT_A_NOTE."""
    rng = np.random.default_rng(seed)
    top = root / f"nsynth-{split}"
    (top / "audio").mkdir(parents=True)
    examples = {}
    for i, note in enumerate(NOTES):
        fam, src, idx, pitch, vel, quals = note
        examples[_ns(note)] = schema.example_record(fam, src, idx, pitch, vel, instrument=100 + idx,
                                                    note=1000 + i, qualities=quals)
    if strays:
        fam, src, idx, pitch, vel = EXAMPLES_ONLY
        examples[schema.note_str(*EXAMPLES_ONLY)] = schema.example_record(fam, src, idx, pitch, vel,
                                                                         instrument=103, note=2000)
    wavs = {}
    for stem in [_ns(n) for n in NOTES] + ([AUDIO_ONLY, NOT_A_NOTE] if strays else []):
        audio = (0.3 * rng.standard_normal(800)).astype(np.float32)  # 50 ms of 16 kHz noise
        path = top / "audio" / f"{stem}.wav"
        sf.write(str(path), audio, schema.SAMPLE_RATE, subtype="PCM_16")
        wavs[stem] = path.read_bytes()
    (top / "examples.json").write_text(__import__("json").dumps(examples), encoding="utf-8")
    return top, wavs, examples


def make_archive(tmp_path: Path, split: str = SPLIT, extra: list[tuple[tarfile.TarInfo, bytes]] = (),
                 name: str | None = None, seed: int = 0, strays: bool = False) -> Archive:
    """An archive of NOTES; ``strays``: plus the notes extraction must skip (each one a manifest failure)."""
    src = tmp_path / f"src-{split}-{seed}-{len(extra)}-{strays}"
    top, wavs, examples = build_tree(src, split, seed, strays)
    path = tmp_path / (name or nsynth.archive_name(split))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(top, arcname=top.name)  # dirs + files, sorted, like `tar czf`
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return Archive(path, wavs, examples, members=2 + len(wavs) + 1 + len(extra))


@pytest.fixture
def archive(tmp_path) -> Archive:
    return make_archive(tmp_path, strays=True)


# --------------------------------------------------------------------------------------------------
# A real HTTP server on 127.0.0.1 with Range support and scripted failures


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    drop_after: int | None = None   # send only this many body bytes, then close the connection ...
    drop_requests: int = 1          # ... on the first this-many requests
    stall: bool = False             # instead of closing, hold the connection open (client times out)
    ignore_range: bool = False      # always answer 200 with the whole file
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        state: ServerState = self.server.state
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((self.path, range_header))
            number = len(state.requests)
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start, status = 0, 200
        if range_header and not state.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, range_header
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if state.drop_after is not None and number <= state.drop_requests:
            self.wfile.write(body[: state.drop_after])
            self.wfile.flush()
            if state.stall:
                state.release.wait(10)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield httpd
    finally:
        httpd.state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _serve(server, archive: Archive, path: str = "/nsynth-valid.jsonwav.tar.gz") -> str:
    server.state.files[path] = archive.data
    return server.url + path


# --------------------------------------------------------------------------------------------------
# download


def test_interrupted_download_resumes_with_range(tmp_path, server, archive):
    size = len(archive.data)
    cut = size // 2
    url = _serve(server, archive)
    server.state.drop_after = cut
    dest = tmp_path / "cache" / "nsynth-valid.jsonwav.tar.gz"
    got = nsynth.download(url, dest, retries=3, timeout_s=5, expected_sha256=archive.sha256, progress=False)
    assert got == dest
    assert [r[1] for r in server.state.requests] == [None, f"bytes={cut}-"]
    assert sha256_file(dest) == archive.sha256
    assert not dest.with_suffix(".gz.part").exists()
    # the archive and the URL it came from (the cache is keyed by URL); no .part left
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name, dest.name + ".url"]
    assert (dest.parent / (dest.name + ".url")).read_text() == url


def test_stalled_connection_times_out_and_resumes(tmp_path, server, archive):
    cut = len(archive.data) // 3
    url = _serve(server, archive)
    server.state.drop_after, server.state.stall = cut, True
    dest = tmp_path / "a.tar.gz"
    nsynth.download(url, dest, retries=2, timeout_s=0.3, progress=False)
    assert server.state.requests[1][1] == f"bytes={cut}-"
    assert sha256_file(dest) == archive.sha256


def test_server_that_ignores_range_still_gives_the_right_file(tmp_path, server, archive):
    url = _serve(server, archive)
    server.state.drop_after, server.state.ignore_range = len(archive.data) // 2, True
    dest = tmp_path / "a.tar.gz"
    nsynth.download(url, dest, retries=3, timeout_s=5, progress=False)
    # The client asked to resume; the server answered 200 with the whole file and the client restarted.
    assert server.state.requests[1][1] == f"bytes={len(archive.data) // 2}-"
    assert dest.read_bytes() == archive.data
    assert not (tmp_path / "a.tar.gz.part").exists()


def test_complete_part_and_416_finishes_without_downloading_again(tmp_path, server, archive):
    url = _serve(server, archive)
    dest = tmp_path / "a.tar.gz"
    (tmp_path / "a.tar.gz.part").write_bytes(archive.data)
    (tmp_path / "a.tar.gz.part.url").write_text(url)  # a .part of this URL is resumed
    nsynth.download(url, dest, expected_sha256=archive.sha256, progress=False)
    assert server.state.requests == [("/nsynth-valid.jsonwav.tar.gz", f"bytes={len(archive.data)}-")]
    assert dest.read_bytes() == archive.data


def test_existing_dest_returns_without_a_request(tmp_path, server, archive):
    url = _serve(server, archive)
    dest = tmp_path / "a.tar.gz"
    dest.write_bytes(archive.data)
    # the sha256 proves the content; after that the file is known to come from url
    assert nsynth.download(url, dest, expected_sha256=archive.sha256.upper(), progress=False) == dest
    assert nsynth.download(url, dest, progress=False) == dest
    assert server.state.requests == []


def test_existing_dest_with_wrong_sha_is_downloaded_again(tmp_path, server, archive):
    url = _serve(server, archive)
    dest = tmp_path / "a.tar.gz"
    dest.write_bytes(b"stale")
    nsynth.download(url, dest, expected_sha256=archive.sha256, progress=False)
    assert dest.read_bytes() == archive.data
    assert len(server.state.requests) == 1


def test_wrong_expected_sha256_raises_and_leaves_no_file(tmp_path, server, archive):
    url = _serve(server, archive)
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(DownloadError, match=re.escape(url) + ".*sha256 mismatch"):
        nsynth.download(url, dest, expected_sha256="0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "a.tar.gz.part").exists()


def test_404_fails_at_once_naming_the_url(tmp_path, server):
    url = server.url + "/missing.tar.gz"
    with pytest.raises(DownloadError, match=re.escape(url) + ".*404.*check the URL"):
        nsynth.download(url, tmp_path / "m.tar.gz", retries=5, progress=False)
    assert len(server.state.requests) == 1  # a 404 is not retried
    assert not (tmp_path / "m.tar.gz").exists()


def test_retries_exhausted_keeps_the_part_and_says_how_to_resume(tmp_path, server, archive):
    cut = len(archive.data) // 4
    url = _serve(server, archive)
    server.state.drop_after, server.state.drop_requests, server.state.ignore_range = cut, 99, True
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(DownloadError, match=rf"{re.escape(url)}.*rerun to resume from {cut} bytes"):
        nsynth.download(url, dest, retries=2, timeout_s=5, progress=False)
    # the first try makes progress; after it, 1 + retries tries in a row make none
    assert len(server.state.requests) == 3
    assert (tmp_path / "a.tar.gz.part").stat().st_size == cut
    assert not dest.exists()


def test_connection_refused_is_retried_then_reported(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    with pytest.raises(DownloadError, match=re.escape(url) + ".*after 2 attempts.*check the URL or your"):
        nsynth.download(url, tmp_path / "x.tar.gz", retries=1, timeout_s=2, progress=False)


# --------------------------------------------------------------------------------------------------
# extract_split


def test_filter_keeps_exactly_the_expected_notes(tmp_path, archive):
    out = tmp_path / "out"
    stats = nsynth.extract_split(archive.path, out, SPLIT, FILTER)
    assert stats["split"] == SPLIT
    assert stats["members_seen"] == archive.members
    assert stats["notes_kept"] == len(KEPT)
    # velocity 50, pitch 30, electronic, reverb, synthetic, guitar
    assert stats["notes_filtered"] == 6
    assert {s["id"]: s["reason"] for s in stats["skipped"]} == {
        AUDIO_ONLY: "audio without an entry in examples.json",
        schema.note_str(*EXAMPLES_ONLY): "in examples.json but no audio in the archive",
        f"nsynth-{SPLIT}/audio/{NOT_A_NOTE}.wav": "not an NSynth note_str",
    }
    written = read_json(out / SPLIT / "examples.json")
    assert set(written) == KEPT
    assert written == {k: archive.examples[k] for k in KEPT}  # full schema, values untouched
    for record in written.values():
        assert set(record) == set(schema.example_record("string", "acoustic", 0, 60, 100, instrument=0, note=0))
    assert {p.stem for p in (out / SPLIT / "audio").iterdir()} == KEPT
    for note in KEPT:
        assert (out / SPLIT / "audio" / f"{note}.wav").read_bytes() == archive.wavs[note]
    assert sorted(p.name for p in out.iterdir()) == [SPLIT]  # no temp dirs left
    # canonical JSON (sorted keys, trailing newline): same notes -> same bytes
    text = (out / SPLIT / "examples.json").read_text()
    assert text.endswith("\n") and text.index(sorted(KEPT)[0]) < text.index(sorted(KEPT)[1])


def test_empty_filter_keeps_every_note_with_an_entry(tmp_path, archive):
    everything = NSynthFilter(families=[], sources=[], velocities=[], exclude_qualities=[])
    stats = nsynth.extract_split(archive.path, tmp_path / "out", SPLIT, everything)
    assert stats["notes_kept"] == len(NOTES) and stats["notes_filtered"] == 0
    assert set(read_json(tmp_path / "out" / SPLIT / "examples.json")) == {_ns(n) for n in NOTES}


def test_reextracting_replaces_the_split_as_a_whole(tmp_path, archive):
    out = tmp_path / "out"
    nsynth.extract_split(archive.path, out, SPLIT, NSynthFilter(families=[], sources=[]))
    nsynth.extract_split(archive.path, out, SPLIT, FILTER)
    assert {p.stem for p in (out / SPLIT / "audio").iterdir()} == KEPT
    assert sorted(p.name for p in out.iterdir()) == [SPLIT]


def test_misspelt_filter_value_is_a_config_error(tmp_path, archive):
    with pytest.raises(ConfigError, match="families.*'strings'"):
        nsynth.extract_split(archive.path, tmp_path / "out", SPLIT, NSynthFilter(families=["strings"]))


@pytest.mark.parametrize("cut", ["tenth", "half", "trailer"])
def test_truncated_archive_is_an_error_and_writes_nothing(tmp_path, archive, cut):
    data = archive.data
    keep = {"tenth": len(data) // 10, "half": len(data) // 2, "trailer": len(data) - 8}[cut]
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[:keep])  # "trailer": only gzip's CRC/length is missing; tar alone would not notice
    out = tmp_path / "out"
    with pytest.raises(TimbrelabError, match=r"bad\.tar\.gz: corrupt or truncated archive"):
        nsynth.extract_split(bad, out, SPLIT, FILTER)
    assert not (out / SPLIT).exists()
    assert not out.exists() or list(out.iterdir()) == []


def test_corrupt_byte_is_an_error(tmp_path, archive):
    data = bytearray(archive.data)
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(TimbrelabError, match="corrupt or truncated"):
        nsynth.extract_split(bad, tmp_path / "out", SPLIT, FILTER)
    assert not (tmp_path / "out" / SPLIT).exists()


def _file(name: str, payload: bytes = b"RIFF evil") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def _device(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, b""


@pytest.mark.parametrize("kind", ["dotdot", "dotdot_inside", "absolute", "symlink", "hardlink", "device",
                                  "other_split"])
def test_unsafe_member_rejects_the_whole_archive(tmp_path, monkeypatch, kind):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    victim = tmp_path / "victim.wav"
    note = "string_acoustic_000-060-100"
    member, reason = {
        "dotdot": (_file("../evil.wav"), "'..'"),
        "dotdot_inside": (_file(f"nsynth-{SPLIT}/audio/../../../evil.wav"), "'..'"),
        "absolute": (_file(str(victim)), "absolute path"),
        "symlink": (_link(f"nsynth-{SPLIT}/audio/{note}.wav", str(victim), tarfile.SYMTYPE), "link"),
        "hardlink": (_link(f"nsynth-{SPLIT}/audio/x.wav", "/etc/passwd", tarfile.LNKTYPE), "link"),
        "device": (_device(f"nsynth-{SPLIT}/audio/null"), "device"),
        "other_split": (_file("nsynth-test/audio/string_acoustic_000-060-100.wav"), "outside nsynth-valid/"),
    }[kind]
    # The bad member comes last, after good notes were already extracted to the temp dir.
    bad = make_archive(tmp_path, extra=[member], name="evil.tar.gz")
    out = tmp_path / "out"
    with pytest.raises(TimbrelabError, match=re.escape(repr(member[0].name)) + ".*" + re.escape(reason)):
        nsynth.extract_split(bad.path, out, SPLIT, NSynthFilter(families=[], sources=[]))
    assert not (out / SPLIT).exists()
    assert list(out.iterdir()) == []  # no temp dir left either
    assert not victim.exists()
    for where in (tmp_path, work, out, out.parent):
        assert not (where / "evil.wav").exists()
    assert list(work.iterdir()) == []


def test_missing_examples_json_is_an_error(tmp_path):
    src = tmp_path / "src" / f"nsynth-{SPLIT}" / "audio"
    src.mkdir(parents=True)
    sf.write(str(src / "string_acoustic_000-060-100.wav"), np.zeros(100, np.float32), 16000)
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src.parent, arcname=src.parent.name)
    with pytest.raises(TimbrelabError, match="no nsynth-valid/examples.json"):
        nsynth.extract_split(path, tmp_path / "out", SPLIT, FILTER)
    assert not (tmp_path / "out" / SPLIT).exists()


def test_not_a_gzip_file_is_an_error(tmp_path):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"<html>404 page from a proxy</html>")
    with pytest.raises(TimbrelabError, match="corrupt or truncated"):
        nsynth.extract_split(path, tmp_path / "out", SPLIT, FILTER)


# --------------------------------------------------------------------------------------------------
# acquire_download / acquire_local


def test_acquire_download_records_a_404_split_and_keeps_the_other(tmp_path, server, archive):
    _serve(server, archive)  # only valid exists on the server
    cache, out = tmp_path / "cache", tmp_path / "out"
    cfg = NSynthDownloadConfig(url_template=server.url + "/nsynth-{split}.jsonwav.tar.gz",
                               splits=["test", "valid"], filter=FILTER, sha256={"valid": archive.sha256},
                               retries=2, timeout_s=5, cache_dir=str(cache))
    summary = nsynth.acquire_download(cfg, out, progress=False)
    # the 404 split, then every note the extraction of valid skipped, with its reason
    assert [(f["split"], f.get("id")) for f in summary["failed"]] == [
        ("test", None), ("valid", "nsynth-valid/audio/README_take2.wav"), ("valid", AUDIO_ONLY),
        ("valid", schema.note_str(*EXAMPLES_ONLY))]
    assert "404" in summary["failed"][0]["reason"]
    assert summary["failed"][0]["url"] == server.url + "/nsynth-test.jsonwav.tar.gz"
    assert list(summary["splits"]) == ["valid"]
    assert summary["splits"]["valid"]["notes_kept"] == len(KEPT)
    url = server.url + "/nsynth-valid.jsonwav.tar.gz"
    assert summary["items"] == [
        {"id": n, "split": "valid", "file": f"valid/audio/{n}.wav",
         "sha256": hashlib.sha256(archive.wavs[n]).hexdigest(), "license": schema.LICENSE, "url": url}
        for n in sorted(KEPT)]
    assert sorted(p.name for p in cache.iterdir()) == ["nsynth-valid.jsonwav.tar.gz",  # kept for reruns
                                                       "nsynth-valid.jsonwav.tar.gz.url"]
    assert sorted(p.name for p in out.iterdir()) == ["valid"]

    # A rerun reuses the cached archive (sha256 verified) without asking the server for it again.
    before = len(server.state.requests)
    again = nsynth.acquire_download(cfg, out, progress=False)
    assert again["items"] == summary["items"]
    assert [r[0] for r in server.state.requests[before:]] == ["/nsynth-test.jsonwav.tar.gz"]


def test_acquire_download_records_an_unsafe_archive_as_failed(tmp_path, server):
    good = make_archive(tmp_path, split="valid")
    evil = make_archive(tmp_path, split="test", extra=[_file("../evil.wav")], seed=1)
    server.state.files["/nsynth-valid.jsonwav.tar.gz"] = good.data
    server.state.files["/nsynth-test.jsonwav.tar.gz"] = evil.data
    cfg = NSynthDownloadConfig(url_template=server.url + "/nsynth-{split}.jsonwav.tar.gz",
                               splits=["valid", "test"], filter=FILTER, cache_dir=str(tmp_path / "cache"))
    summary = nsynth.acquire_download(cfg, tmp_path / "out", progress=False)
    assert [f["split"] for f in summary["failed"]] == ["test"]
    assert "'../evil.wav'" in summary["failed"][0]["reason"]
    assert list(summary["splits"]) == ["valid"]
    assert not (tmp_path / "out" / "test").exists()


def test_acquire_local_with_an_omegaconf_config(tmp_path):
    from omegaconf import OmegaConf

    archives = tmp_path / "archives"
    archives.mkdir()
    good = make_archive(archives, split="valid")
    cfg = OmegaConf.structured(NSynthLocalConfig(path=str(archives), splits=["valid", "train"], filter=FILTER))
    OmegaConf.set_readonly(cfg, True)
    summary = nsynth.acquire_local(cfg, tmp_path / "out")
    assert [f["split"] for f in summary["failed"]] == ["train"]
    assert "nsynth-train.jsonwav.tar.gz: no such archive" in summary["failed"][0]["reason"]
    assert [i["id"] for i in summary["items"]] == sorted(KEPT)
    assert {i["url"] for i in summary["items"]} == {f"local:{good.path.name}"}  # machine-independent
    for item in summary["items"]:
        assert sha256_file(tmp_path / "out" / item["file"]) == item["sha256"]


def test_gzip_open_is_needed_tarfile_alone_misses_a_cut_trailer(tmp_path, archive):
    """Documents why extract_split wraps gzip.open: tarfile's r|gz accepts a file cut in the trailer."""
    cut = archive.data[:-8]
    with tarfile.open(fileobj=io.BytesIO(cut), mode="r|gz") as tar:
        names = [m.name for m in tar]
    assert len(names) == archive.members  # no error from tarfile ...
    with pytest.raises(EOFError):         # ... but gzip notices
        gzip.decompress(cut)


def test_missing_file_url_fails_at_once(tmp_path):
    url = (tmp_path / "nope.tar.gz").as_uri()
    with pytest.raises(DownloadError, match=re.escape(url) + ".*check the URL") as raised:
        nsynth.download(url, tmp_path / "x.tar.gz", retries=50, progress=False)
    assert "attempts" not in str(raised.value)  # not retried
