"""YouTube acquisition against a real local HTTP server (yt-dlp's generic extractor; no internet)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from omegaconf import OmegaConf

from timbrelab.config import YoutubeConfig
from timbrelab.data.youtube import UNKNOWN_LICENSE, acquire, resolve, safe_id, write_videos_yaml
from timbrelab.errors import ConfigError, DownloadError

SR_SOURCE = 44100


@dataclass
class Server:
    root: Path
    base: str
    requests: list[tuple[str, str]] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def count(self, name: str) -> int:
        return Counter(path for _, path in self.requests)[f"/{name}"]


def _make_handler(server: Server):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(server.root), **kwargs)

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            server.requests.append(("GET", self.path))
            if self.path.startswith("/drop"):
                # Promise 200 kB, send 20 kB, hang up: a connection dropped mid-file.
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", "200000")
                self.end_headers()
                try:
                    self.wfile.write(b"RIFF" + bytes(20000))
                    self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True
                return
            try:
                super().do_GET()
            except (BrokenPipeError, ConnectionResetError):  # yt-dlp's probe hangs up early
                pass

        def do_HEAD(self):
            server.requests.append(("HEAD", self.path))
            super().do_HEAD()

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients that hang up are expected here
        pass


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    server = Server(root, "")
    httpd = _QuietServer(("127.0.0.1", 0), _make_handler(server))
    server.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _sine(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(round(seconds * SR_SOURCE))) / SR_SOURCE
    mono = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([mono, 0.5 * mono], axis=1).astype(np.float32)  # stereo


def write_wav(root: Path, name: str, seconds: float, freq: float = 440.0) -> Path:
    path = root / name
    sf.write(str(path), _sine(seconds, freq), SR_SOURCE, subtype="PCM_16")
    return path


def write_ogg(root: Path, name: str, seconds: float, freq: float = 220.0) -> Path:
    path = root / name
    sf.write(str(path), _sine(seconds, freq), SR_SOURCE, format="OGG", subtype="VORBIS")
    return path


def write_feed(root: Path, name: str, items: list[dict]) -> Path:
    """An RSS 2.0 podcast feed; each item: title, url and optionally guid, duration (itunes)."""
    parts = []
    for item in items:
        guid = f"<guid>{item['guid']}</guid>" if "guid" in item else ""
        duration = f"<itunes:duration>{item['duration']}</itunes:duration>" if "duration" in item else ""
        parts.append(f"<item><title>{item['title']}</title>{guid}"
                     f"<enclosure url=\"{item['url']}\" type=\"audio/wav\" length=\"1\"/>{duration}</item>")
    path = root / name
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel>'
        f"<title>Cello feed</title><description>test</description>{''.join(parts)}</channel></rss>\n",
        encoding="utf-8")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


KW = dict(retries=1, socket_timeout_s=5, progress=False)


# --------------------------------------------------------------------------------------------------


def test_safe_id():
    assert safe_id("dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert safe_id("-abc_DEF.1") == "-abc_DEF.1"
    a, b = safe_id("a/b"), safe_id("a:b")
    assert a.startswith("a_b-") and b.startswith("a_b-") and a != b
    assert not safe_id("../etc").startswith(".") and "/" not in safe_id("../etc")
    assert len(safe_id("x" * 500)) <= 100


def test_resolve_feed_filters_dedupes_and_caps(http_server):
    s = http_server
    write_feed(s.root, "feed_resolve.xml", [
        {"title": "Suite 1 Prelude", "guid": "bwv1007-1", "url": s.url("r_p1.wav"), "duration": "00:02:30"},
        {"title": "Too short", "guid": "short", "url": s.url("r_short.wav"), "duration": "5"},
        {"title": "Duplicate", "guid": "bwv1007-1", "url": s.url("r_dup.wav"), "duration": "100"},
        {"title": "No duration", "url": s.url("r_nodur.wav")},
        {"title": "Too long", "guid": "long", "url": s.url("r_long.wav"), "duration": "02:00:00"},
        {"title": "Suite 2 Allemande", "guid": "bwv1008-2", "url": s.url("r_a2.wav"), "duration": "4:05"},
        {"title": "Beyond the cap", "guid": "bwv1009-1", "url": s.url("r_cap.wav"), "duration": "200"},
    ])
    feed = s.url("feed_resolve.xml")
    videos = resolve([feed], max_items=3, min_duration_s=10, max_duration_s=3600, socket_timeout_s=5)
    assert videos == [
        {"id": "bwv1007-1", "url": s.url("r_p1.wav"), "title": "Suite 1 Prelude", "duration_s": 150.0,
         "uploader": ""},
        {"id": "r_nodur", "url": s.url("r_nodur.wav"), "title": "No duration", "duration_s": None,
         "uploader": ""},
        {"id": "bwv1008-2", "url": s.url("r_a2.wav"), "title": "Suite 2 Allemande", "duration_s": 245.0,
         "uploader": ""},
    ]
    assert s.count("feed_resolve.xml") == 1 and s.count("r_p1.wav") == 0  # flat: entries not fetched
    # Same queries, same answer; without the cap and filters everything but the duplicate comes back.
    assert resolve([feed], max_items=3, min_duration_s=10, max_duration_s=3600) == videos
    everything = resolve([feed, feed])
    assert [v["id"] for v in everything] == ["bwv1007-1", "short", "r_nodur", "long", "bwv1008-2", "bwv1009-1"]
    assert resolve([feed], max_items=0) == []


def test_resolve_error_names_the_query(http_server):
    with pytest.raises(DownloadError, match="404"):
        resolve([http_server.url("missing_feed.xml")], socket_timeout_s=5)


def test_acquire_mixed_sources(http_server, tmp_path):
    s = http_server
    wav_src = write_wav(s.root, "acq_sine.wav", 2.5)
    ogg_src = write_ogg(s.root, "acq_vorbis.ogg", 1.75)
    (s.root / "acq_corrupt.wav").write_bytes(np.random.default_rng(0).bytes(8000))
    videos = [
        {"id": "acq_sine", "url": s.url("acq_sine.wav"), "title": "Sine", "duration_s": None, "uploader": "me"},
        {"id": "acq_vorbis", "url": s.url("acq_vorbis.ogg"), "title": "Vorbis", "duration_s": 1.75,
         "uploader": ""},
        {"id": "acq_missing", "url": s.url("acq_missing.wav"), "title": "Gone", "duration_s": None,
         "uploader": ""},
        {"id": "acq_corrupt", "url": s.url("acq_corrupt.wav"), "title": "Noise", "duration_s": None,
         "uploader": ""},
        {"id": "acq_drop", "url": s.url("drop_acq.wav"), "title": "Dropped", "duration_s": None,
         "uploader": ""},
    ]
    out, cache = tmp_path / "out", tmp_path / "cache"
    items, failed = acquire(videos, out, cache_dir=cache, sample_rate=16000, **KW)

    assert [i["id"] for i in items] == ["acq_sine", "acq_vorbis"]
    for item, src_seconds in zip(items, (2.5, 1.75)):
        wav = out / item["file"]
        assert item["file"] == f"{item['id']}.wav"
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert abs(info.frames / 16000 - src_seconds) <= 0.010
        assert abs(item["duration_s"] - src_seconds) <= 0.010
        assert item["duration_s"] == round(info.frames / 16000, 3)
        assert item["sha256"] == sha256(wav)
        assert item["sample_rate"] == 16000 and item["status"] == "ok"
        assert item["license"] == UNKNOWN_LICENSE
        audio, _ = sf.read(str(wav), dtype="float32")
        assert 0.1 < np.abs(audio).max() < 0.5  # the sine survived (mean of 0.3 and 0.15 peaks)
    assert items[0]["uploader"] == "me" and items[0]["title"] == "Sine" and items[0]["url"] == s.url("acq_sine.wav")

    by_id = {f["id"]: f for f in failed}
    assert [f["id"] for f in failed] == ["acq_missing", "acq_corrupt", "acq_drop"]
    assert all(f["status"] == "failed" for f in failed)
    assert "404" in by_id["acq_missing"]["reason"]
    assert "not decodable" in by_id["acq_corrupt"]["reason"]
    assert "more expected" in by_id["acq_drop"]["reason"]  # yt-dlp: "20004 bytes read, 179996 more expected"
    assert all("\n" not in f["reason"] and f["url"] and f["title"] for f in failed)

    # out_dir holds exactly the two wavs: no partial, temp or failed files.
    assert sorted(p.name for p in out.iterdir()) == ["acq_sine.wav", "acq_vorbis.wav"]
    # The cache kept originals of the good ones, dropped the undecodable one, keeps the .part to resume.
    downloads = sorted(p.name for p in (cache / "downloads").iterdir())
    assert "acq_sine.wav" in downloads and "acq_vorbis.ogg" in downloads and "acq_corrupt.wav" not in downloads
    archive = (cache / "archive.txt").read_text().split()
    assert "acq_sine" in archive and "acq_vorbis" in archive and "acq_drop" not in archive

    # Second run: the cached items make no request at all and come back identical.
    before = {name: s.count(name) for name in ("acq_sine.wav", "acq_vorbis.ogg")}
    assert all(n >= 1 for n in before.values())
    items2, failed2 = acquire(videos, out, cache_dir=cache, sample_rate=16000, **KW)
    assert items2 == items
    assert {name: s.count(name) for name in before} == before
    assert [(f["id"], f["status"]) for f in failed2] == [(f["id"], f["status"]) for f in failed]

    # A cached file that disappeared is downloaded again, to the same bytes.
    (cache / "downloads" / "acq_sine.wav").unlink()
    items3, _ = acquire(videos[:1], out, cache_dir=cache, sample_rate=16000, **KW)
    assert s.count("acq_sine.wav") > before["acq_sine.wav"]
    assert items3 == items[:1]
    assert wav_src.exists() and ogg_src.exists()


def test_acquire_duration_filter_marks_filtered(http_server, tmp_path):
    s = http_server
    write_wav(s.root, "flt_short.wav", 1.0)
    write_wav(s.root, "flt_known.wav", 1.5)
    videos = [
        # duration unknown until downloaded: fetched, converted, then filtered (and removed again)
        {"id": "flt_short", "url": s.url("flt_short.wav"), "title": "Short", "duration_s": None, "uploader": ""},
        # duration known from resolve: filtered without any request
        {"id": "flt_known", "url": s.url("flt_known.wav"), "title": "Known", "duration_s": 1.5, "uploader": ""},
    ]
    out = tmp_path / "out"
    items, failed = acquire(videos, out, cache_dir=tmp_path / "cache", min_duration_s=2.0, **KW)
    assert items == []
    assert [(f["id"], f["status"]) for f in failed] == [("flt_short", "filtered"), ("flt_known", "filtered")]
    assert "below min_duration_s=2" in failed[0]["reason"] and "1.000 s" in failed[0]["reason"]
    assert s.count("flt_known.wav") == 0
    assert list(out.iterdir()) == []

    # The filtered download stays cached: a looser filter reuses it without a request.
    before = s.count("flt_short.wav")
    items, failed = acquire(videos, out, cache_dir=tmp_path / "cache", max_duration_s=1.2, **KW)
    assert [i["id"] for i in items] == ["flt_short"] and s.count("flt_short.wav") == before
    assert [(f["id"], f["status"]) for f in failed] == [("flt_known", "filtered")]
    assert "1.500 s is above max_duration_s=1.2" in failed[0]["reason"]
    assert s.count("flt_known.wav") == 0
    assert [p.name for p in out.iterdir()] == ["flt_short.wav"]


def test_acquire_max_items_and_duplicates(http_server, tmp_path):
    s = http_server
    for name in ("cap_a", "cap_b"):
        write_wav(s.root, f"{name}.wav", 1.0)
    videos = [{"id": n, "url": s.url(f"{n}.wav")} for n in ("cap_a", "cap_a", "cap_b")]
    items, failed = acquire(videos, tmp_path / "out", cache_dir=tmp_path / "cache", max_items=1, **KW)
    assert [i["id"] for i in items] == ["cap_a"]
    assert [(f["id"], f["status"]) for f in failed] == [("cap_a", "filtered"), ("cap_b", "filtered")]
    assert "duplicate" in failed[0]["reason"] and "max_items=1" in failed[1]["reason"]
    assert s.count("cap_b.wav") == 0


def test_acquire_refuses_playlists_and_shows_progress(http_server, tmp_path, capsys):
    s = http_server
    write_wav(s.root, "pl_one.wav", 1.0)
    write_feed(s.root, "feed_pl.xml", [{"title": "One", "guid": "pl-1", "url": s.url("pl_one.wav")}])
    videos = [{"id": "feed", "url": s.url("feed_pl.xml")}, {"id": "pl_one", "url": s.url("pl_one.wav")}]
    items, failed = acquire(videos, tmp_path / "out", cache_dir=tmp_path / "cache",
                            retries=1, socket_timeout_s=5, progress=True)
    assert [i["id"] for i in items] == ["pl_one"]
    assert failed[0]["status"] == "failed" and "playlist" in failed[0]["reason"]
    assert s.count("pl_one.wav") == 2  # yt-dlp's probe + the download; the feed's entry was never fetched
    assert "youtube" in capsys.readouterr().err  # the tqdm bar


def test_resolve_yaml_acquire_round_trip(http_server, tmp_path):
    s = http_server
    write_wav(s.root, "rt_prelude.wav", 1.5)
    write_feed(s.root, "feed_rt.xml", [
        {"title": "Prélude – Suite №1", "guid": "tag:bach,2024:bwv1007/1", "url": s.url("rt_prelude.wav"),
         "duration": "1.5"},
    ])
    conf = tmp_path / "conf" / "youtube.yaml"
    conf.parent.mkdir()
    conf.write_text("# @package acquire.cello\n# committed list\n\nsource: youtube\nsample_rate: 16000\n"
                    "queries: [old]\nvideos: []\nmin_duration_s: 1.0\nmax_items: 20\ncookies_file: null\n",
                    encoding="utf-8")
    queries = [s.url("feed_rt.xml")]
    videos = resolve(queries, min_duration_s=1.0)
    write_videos_yaml(conf, queries, videos)

    text = conf.read_text(encoding="utf-8")
    assert text.startswith("# @package acquire.cello\n# committed list\n")
    data = yaml.safe_load(text)
    assert list(data) == ["source", "sample_rate", "queries", "videos", "min_duration_s", "max_items", "cookies_file"]
    assert data["source"] == "youtube" and data["max_items"] == 20 and data["cookies_file"] is None
    assert data["queries"] == queries and data["videos"] == videos
    assert videos[0]["id"] == "tag:bach,2024:bwv1007/1" and videos[0]["title"] == "Prélude – Suite №1"

    # The file validates against the stage schema and drives acquire directly.
    cfg = OmegaConf.merge(OmegaConf.structured(YoutubeConfig), OmegaConf.load(conf))
    assert cfg.videos[0].duration_s == 1.5
    items, failed = acquire(cfg.videos, tmp_path / "out", cache_dir=tmp_path / "cache", **KW)
    assert failed == []
    stem = safe_id(videos[0]["id"])
    assert items[0]["id"] == videos[0]["id"] and items[0]["file"] == f"{stem}.wav"
    assert "/" not in items[0]["file"] and ":" not in items[0]["file"]
    archive = (tmp_path / "cache" / "archive.txt").read_text().splitlines()
    assert archive == [f"generic {videos[0]['id']}"]  # the committed id, not the enclosure's file name

    # Rewriting keeps everything else; a fresh file gets just the two keys.
    write_videos_yaml(conf, ["q2"], [])
    again = yaml.safe_load(conf.read_text(encoding="utf-8"))
    assert again == {**data, "queries": ["q2"], "videos": []}
    fresh = tmp_path / "new.yaml"
    write_videos_yaml(fresh, ["q"], videos)
    assert yaml.safe_load(fresh.read_text(encoding="utf-8")) == {"queries": ["q"], "videos": videos}
    assert not [p for p in conf.parent.iterdir() if p.name != "youtube.yaml"]  # no temp files left


def test_bad_inputs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="videos\\[0\\]"):
        acquire([{"id": "x"}], tmp_path / "out", cache_dir=tmp_path / "cache", **KW)
    with pytest.raises(ConfigError, match="cookies_file"):
        acquire([], tmp_path / "out", cache_dir=tmp_path / "cache", cookies_file=tmp_path / "nope.txt", **KW)
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        write_videos_yaml(bad, [], [])
    assert os.listdir(tmp_path) == ["list.yaml"]  # refused before creating out_dir or cache_dir
