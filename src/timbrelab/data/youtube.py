"""Reproducible YouTube (or any yt-dlp URL) acquisition in two steps: resolve, then acquire.

1. :func:`resolve` turns search queries (``ytsearch20:bach cello suite``), playlist, channel or feed
   URLs into a plain list of video entries ``{id, url, title, duration_s, uploader}``, and
   :func:`write_videos_yaml` commits that list to a config file (``conf/cello/youtube.yaml``). Search
   results drift from day to day (ranking, uploads, takedowns), so the query is *not* the dataset:
   the committed id list is. Re-running resolve is a deliberate, reviewable change of the data.
2. :func:`acquire` downloads exactly the committed entries with yt-dlp's Python API (never a shell),
   caches the original files under ``cache_dir/downloads/`` with a yt-dlp download archive
   (``cache_dir/archive.txt``) so that a re-run fetches only what is new, and converts each file to
   16 kHz mono PCM_16 WAV with :func:`timbrelab.audio.convert_to_wav`. One bad item (HTTP 404, a
   removed video, a dropped connection, an undecodable file) is recorded in ``failed`` and never
   stops the others; a partial download never reaches ``out_dir``.

What YouTube currently requires of yt-dlp (2025-2026):

* An external JavaScript runtime for the YouTube extractor's signature / "n" challenges. yt-dlp
  enables only **Deno** by default, so put ``deno`` on ``PATH``; node, bun and QuickJS work too but
  must be enabled explicitly in yt-dlp (``js_runtimes``). The solver scripts themselves come from the
  ``yt-dlp-ejs`` package (``pip install "yt-dlp[default]"``) or yt-dlp's opt-in remote components.
  Without them YouTube offers few or no formats and downloads fail with "Requested format is not
  available" / "n challenge solving failed"; other sites are unaffected.
* At times, cookies: when YouTube answers "Sign in to confirm you're not a bot" (common from cloud
  or CI addresses), set ``cookies_file`` to a Netscape-format ``cookies.txt`` exported from a browser
  that is logged in to YouTube. yt-dlp writes refreshed cookies back to that file. Never commit it.
* Keep yt-dlp current (YouTube changes often); the committed id list makes an upgrade safe to try.

The cache is meant for one process at a time. Licenses: yt-dlp reports ``license`` only where the
site states one (YouTube's "Creative Commons" flag); everything else is recorded as
"unknown (check the video page)". Check the terms before redistributing any audio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import sys
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from timbrelab.errors import AudioError, ConfigError, DownloadError
from timbrelab.fsutil import atomic_write_json, atomic_write_text, read_json, sha256_file

log = logging.getLogger(__name__)

UNKNOWN_LICENSE = "unknown (check the video page)"
VIDEO_KEYS = ("id", "url", "title", "duration_s", "uploader")
# Titles YouTube gives unavailable playlist entries in flat extraction; they can never be downloaded.
_UNAVAILABLE_TITLES = {"[Private video]", "[Deleted video]", "[Unavailable video]"}
# Files yt-dlp leaves next to an unfinished download; never a cached result.
_PARTIAL_SUFFIXES = (".part", ".ytdl", ".temp", ".tmp")
_MAX_NESTING = 3
_MAX_REASON = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------------------------------
# Small helpers


def safe_id(video_id: str) -> str:
    """A file-name-safe, collision-free stem for ``video_id``.

    Ids that are already safe (every YouTube id) are kept as they are; anything else has unsafe
    characters replaced by ``_`` plus a short hash of the original id, so two ids that differ only in
    replaced characters never share a file.
    """
    video_id = str(video_id)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", video_id)
    if safe != video_id or not safe or safe.startswith(".") or len(safe) > 100:
        digest = hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:8]
        safe = f"{safe.lstrip('.')[:80]}-{digest}"
    return safe


def _one_line(message: object) -> str:
    """yt-dlp / ffmpeg message -> one readable line (no colour codes, no 'ERROR:' prefix)."""
    text = _ANSI.sub("", str(message)).replace("\r", " ")
    text = " ".join(text.split())
    text = re.sub(r"^(ERROR|WARNING):\s*", "", text)
    text = re.sub(r"\s*\(caused by .*\)$", "", text)  # yt-dlp repeats the cause in repr form
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    return text or "unknown error"


def _url_stem(url: str) -> str:
    """What yt-dlp's generic extractor calls a direct link: the unquoted file name without extension."""
    path = urllib.parse.urlsplit(url).path.rstrip("/")
    return urllib.parse.unquote(os.path.splitext(path.rsplit("/", 1)[-1])[0])


def _round_duration(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, 3) if math.isfinite(value) and value > 0 else None


def _duration_reason(duration: float | None, min_s: float, max_s: float) -> str | None:
    """Why ``duration`` is outside [min_s, max_s], or None (unknown durations always pass)."""
    if duration is None:
        return None
    if duration < min_s:
        return f"duration {duration:.3f} s is below min_duration_s={min_s:g}"
    if duration > max_s:
        return f"duration {duration:.3f} s is above max_duration_s={max_s:g}"
    return None


def _check_cookies(cookies_file: str | os.PathLike | None) -> str | None:
    if cookies_file is None or str(cookies_file) == "":
        return None
    path = Path(cookies_file).expanduser()
    if not path.is_file():
        raise ConfigError(f"cookies_file {str(path)!r}: no such file (export a Netscape cookies.txt "
                          "from a browser logged in to YouTube, or set cookies_file: null)")
    return str(path)


class _YdlLogger:
    """Routes yt-dlp's output into logging so it neither floods the terminal nor fights tqdm.

    Errors are logged at debug level: the caller gets them, one line each, in ``failed``.
    """

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", _ANSI.sub("", msg))

    info = debug

    def warning(self, msg: str) -> None:
        msg = _ANSI.sub("", msg)
        if "Falling back on generic information extractor" in msg:
            log.debug("yt-dlp: %s", msg)
        else:
            log.warning("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp: %s", _ANSI.sub("", msg))


def _base_params(socket_timeout_s: float, cookies_file: str | None, retries: int,
                 js_runtimes: Sequence[str] = ("deno",)) -> dict[str, Any]:
    params: dict[str, Any] = {
        "js_runtimes": {name.lower(): {} for name in js_runtimes},
        "quiet": True,
        "no_warnings": False,
        "logger": _YdlLogger(),
        "color": {"stdout": "no_color", "stderr": "no_color"},
        "socket_timeout": float(socket_timeout_s),
        "retries": int(retries),
        "extractor_retries": int(retries),
        "fragment_retries": int(retries),
        "file_access_retries": int(retries),
    }
    if cookies_file:
        params["cookiefile"] = cookies_file
    return params


def _import_yt_dlp():
    try:
        import yt_dlp
    except ImportError as exc:  # pragma: no cover - yt-dlp is a hard dependency
        raise DownloadError("yt-dlp is not installed (pip install yt-dlp)") from exc
    return yt_dlp


# --------------------------------------------------------------------------------------------------
# Step 1: resolve queries into a committed list of videos


def _entry_from_info(entry: Mapping[str, Any], ydl: Any) -> dict[str, Any] | None:
    """A flat playlist entry (or a fully extracted video) -> our video dict; None if unusable."""
    from yt_dlp.utils import unsmuggle_url

    is_reference = entry.get("_type") in ("url", "url_transparent")
    raw_url = entry.get("url") if is_reference else (entry.get("webpage_url") or entry.get("original_url"))
    raw_url = raw_url or entry.get("webpage_url") or entry.get("url")
    if not raw_url:
        return None
    url, smuggled = unsmuggle_url(str(raw_url), {})
    video_id = entry.get("id") or (smuggled or {}).get("force_videoid")
    if not video_id and entry.get("ie_key"):
        try:
            video_id = ydl.get_info_extractor(entry["ie_key"]).get_temp_id(url)
        except Exception:  # noqa: BLE001 - an unknown extractor just means no temp id
            video_id = None
    if not video_id:
        video_id = _url_stem(url)  # the generic extractor's id for a direct link
    if not video_id:
        return None
    return {
        "id": str(video_id),
        "url": url,
        "title": str(entry.get("title") or ""),
        "duration_s": _round_duration(entry.get("duration")),
        "uploader": str(entry.get("uploader") or entry.get("channel") or entry.get("uploader_id") or ""),
    }


def _walk(info: Mapping[str, Any] | None, ydl: Any, depth: int = 0) -> Iterable[dict[str, Any]]:
    """Yield video dicts from an extract_info result, expanding nested playlists (bounded depth)."""
    if not info:
        return
    kind = info.get("_type", "video")
    if kind in ("playlist", "multi_video"):
        for entry in info.get("entries") or ():
            if entry:
                yield from _walk(entry, ydl, depth)
        return
    if kind in ("url", "url_transparent") and depth < _MAX_NESTING and info.get("ie_key"):
        try:
            single = ydl.get_info_extractor(info["ie_key"]).is_single_video(info["url"])
        except Exception:  # noqa: BLE001
            single = None
        # A playlist or channel tab inside a playlist (a channel page lists its tabs), or an entry
        # whose kind the extractor cannot tell from the URL: resolve that too.
        if single is not True:
            yield from _walk(_extract(ydl, info["url"]), ydl, depth + 1)
            return
    if info.get("live_status") in ("is_live", "is_upcoming", "post_live") or info.get("is_live"):
        log.info("resolve: skipping live stream %s", info.get("id") or info.get("url"))
        return
    if info.get("title") in _UNAVAILABLE_TITLES:
        log.info("resolve: skipping unavailable entry %s", info.get("id") or info.get("url"))
        return
    video = _entry_from_info(info, ydl)
    if video is not None:
        yield video


def _extract(ydl: Any, query: str) -> dict[str, Any] | None:
    from yt_dlp.utils import DownloadError as YdlDownloadError

    try:
        return ydl.extract_info(query, download=False)
    except YdlDownloadError as exc:
        raise DownloadError(f"youtube-resolve {query!r}: {_one_line(exc)}") from exc


def resolve(
    queries: Sequence[str],
    *,
    max_items: int | None = None,
    min_duration_s: float = 0,
    max_duration_s: float = math.inf,
    socket_timeout_s: float = 30,
    cookies_file: str | os.PathLike | None = None,
    js_runtimes: Sequence[str] = ("deno",),
) -> list[dict[str, Any]]:
    """Resolve queries / playlist / feed URLs into ``[{id, url, title, duration_s, uploader}, ...]``.

    Entries keep yt-dlp's order, query after query; duplicates (by id) keep their first occurrence;
    entries whose duration is known and outside ``[min_duration_s, max_duration_s]`` are dropped
    (unknown durations are kept and checked again after download); ``max_items`` caps the result
    after filtering. Raises :class:`DownloadError` naming the query that yt-dlp could not resolve.
    """
    if isinstance(queries, str):
        queries = [queries]
    if max_items is not None and max_items < 0:
        raise ConfigError(f"max_items must be >= 0 or null, got {max_items}")
    yt_dlp = _import_yt_dlp()
    params = _base_params(socket_timeout_s, _check_cookies(cookies_file), retries=3, js_runtimes=js_runtimes)
    params.update({"extract_flat": "in_playlist", "skip_download": True, "lazy_playlist": False})

    videos: list[dict[str, Any]] = []
    seen: set[str] = set()
    if max_items == 0:
        return videos
    with yt_dlp.YoutubeDL(params) as ydl:
        for query in queries:
            query = str(query).strip()
            if not query:
                continue
            for video in _walk(_extract(ydl, query), ydl):
                if video["id"] in seen:
                    continue
                seen.add(video["id"])
                reason = _duration_reason(video["duration_s"], min_duration_s, max_duration_s)
                if reason:
                    log.info("resolve: dropping %s (%s)", video["id"], reason)
                    continue
                videos.append(video)
                if max_items is not None and len(videos) >= max_items:
                    return videos
    return videos


def write_videos_yaml(path: str | os.PathLike, queries: Sequence[str], videos: Sequence[Any]) -> None:
    """Set the ``queries:`` and ``videos:`` keys of a YAML config file, atomically.

    Every other key keeps its value and position, and a leading comment block (e.g. Hydra's
    ``# @package`` line) is kept verbatim; other comments are lost (PyYAML does not keep them).
    """
    import yaml

    path = Path(path)
    header: list[str] = []
    data: dict[str, Any] = {}
    if path.exists():
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.startswith("#") or (header and not line.strip()):
                header.append(line)
            else:
                break
        while header and not header[-1].strip():
            header.pop()
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, found {type(loaded).__name__}")
        data = loaded
    data["queries"] = [str(q) for q in queries]
    data["videos"] = [_normalise_video(v, i) for i, v in enumerate(videos)]
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=4096)
    atomic_write_text(path, ("\n".join(header) + "\n" if header else "") + body)


def _normalise_video(video: Any, index: int) -> dict[str, Any]:
    """A dict / VideoEntry / DictConfig entry -> a plain dict with exactly VIDEO_KEYS."""
    if dataclasses.is_dataclass(video) and not isinstance(video, type):
        video = dataclasses.asdict(video)
    elif type(video).__module__.startswith("omegaconf"):  # DictConfig, e.g. cfg.videos[i]
        from omegaconf import OmegaConf

        video = OmegaConf.to_container(video, resolve=True, throw_on_missing=False)
    if not isinstance(video, Mapping):
        raise ConfigError(f"videos[{index}]: expected a mapping with id and url, got {video!r}")
    video_id, url = video.get("id"), video.get("url")
    if not video_id or video_id == "???" or not url or url == "???":
        raise ConfigError(f"videos[{index}]: needs both 'id' and 'url' (got {dict(video)!r}); "
                          "run `timbrelab youtube-resolve` to fill the list")
    return {
        "id": str(video_id),
        "url": str(url),
        "title": str(video.get("title") or ""),
        "duration_s": _round_duration(video.get("duration_s")),
        "uploader": str(video.get("uploader") or ""),
    }


# --------------------------------------------------------------------------------------------------
# Step 2: acquire exactly the committed videos


class _Cache:
    """``cache_dir/downloads`` (original files), ``archive.txt`` (yt-dlp) and ``meta/`` (ours).

    A cached item is reused only when all three agree: yt-dlp's archive lists it, our metadata names
    its file, and that file exists. Metadata keeps what the items need (license, uploader) so a fully
    cached run makes no network request at all and returns identical items.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir
        self.downloads = cache_dir / "downloads"
        self.meta_dir = cache_dir / "meta"
        self.archive = cache_dir / "archive.txt"
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.meta_dir.mkdir(parents=True, exist_ok=True)

    def archive_lines(self) -> list[str]:
        try:
            return [line.strip() for line in self.archive.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def forget(self, keys: Iterable[str] = (), video_id: str | None = None) -> None:
        """Drop archive lines for these archive keys and/or any extractor's ``video_id``."""
        keys = set(keys)
        lines = self.archive_lines()
        kept = [line for line in lines
                if line not in keys and not (video_id is not None and line.split(" ", 1)[-1] == video_id)]
        if len(kept) != len(lines):
            atomic_write_text(self.archive, "".join(f"{line}\n" for line in kept))

    def meta_path(self, stem: str) -> Path:
        return self.meta_dir / f"{stem}.json"

    def lookup(self, stem: str, video_id: str) -> dict[str, Any] | None:
        """Metadata of a complete cached download of ``video_id``, or None."""
        try:
            meta = read_json(self.meta_path(stem))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("id") != video_id:
            return None
        file = self.downloads / str(meta.get("file", ""))
        if not meta.get("file") or not file.is_file() or meta.get("archive_key") not in set(self.archive_lines()):
            return None
        return meta

    def drop(self, stem: str, meta: Mapping[str, Any] | None) -> None:
        """Delete a cached download (e.g. undecodable) so the next run fetches it again."""
        if meta and meta.get("file"):
            (self.downloads / str(meta["file"])).unlink(missing_ok=True)
        self.meta_path(stem).unlink(missing_ok=True)


def _is_generic(url: str) -> bool:
    """Whether yt-dlp would hand ``url`` to its generic extractor (no site-specific one matches)."""
    from yt_dlp.extractor import gen_extractor_classes

    for ie in gen_extractor_classes():
        try:
            if ie.suitable(url):
                return ie.ie_key() == "Generic"
        except Exception:  # noqa: BLE001 - a broken extractor regex must not stop the search
            continue
    return True


def _download_url(url: str, video_id: str) -> str:
    """The URL handed to yt-dlp. For direct links (generic extractor) the committed id is smuggled in
    as yt-dlp's ``force_videoid`` (what its RSS parser does with ``<guid>``), so two feeds' ``audio.mp3``
    never share an archive entry and the archive key is always ``generic <id>``."""
    from yt_dlp.utils import smuggle_url, unsmuggle_url

    plain, data = unsmuggle_url(url, {})
    if not _is_generic(plain):
        return url
    return smuggle_url(plain, {**(data or {}), "force_videoid": video_id})


def _downloaded_file(info: Mapping[str, Any] | None) -> Path | None:
    if not info:
        return None
    for download in info.get("requested_downloads") or ():
        name = download.get("filepath") or download.get("_filename")
        if name:
            return Path(name)
    return Path(info["filepath"]) if info.get("filepath") else None


def _fetch(yt_dlp: Any, params: Mapping[str, Any], url: str, cache: _Cache, stem: str,
           video_id: str, min_s: float, max_s: float) -> tuple[dict[str, Any] | None, str | None]:
    """Download one URL into the cache: (metadata, None), or (None, reason) when the duration filter
    rejected it from yt-dlp's metadata (before any media was fetched)."""
    from yt_dlp.utils import make_archive_id

    rejected: list[tuple[bool, str]] = []  # (is a filter decision, reason)

    def match_filter(info: Mapping[str, Any], *, incomplete: bool = False) -> str | None:
        filtered, reason = True, None
        if info.get("playlist_id") is not None or info.get("_type") in ("playlist", "multi_video"):
            filtered, reason = False, "the URL is a playlist, not one video (run `timbrelab youtube-resolve` on it)"
        elif info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
            filtered, reason = False, "it is a live stream or has not started yet"
        else:
            reason = _duration_reason(_round_duration(info.get("duration")), min_s, max_s)
        if reason:
            rejected.append((filtered, reason))
        return reason

    for attempt in range(2):
        with yt_dlp.YoutubeDL({**params, "match_filter": match_filter,
                               "outtmpl": {"default": str(cache.downloads / f"{stem}.%(ext)s")}}) as ydl:
            info = ydl.extract_info(_download_url(url, video_id), download=True)
        if rejected:
            filtered, reason = rejected[0]
            if not filtered:
                raise DownloadError(reason)
            return None, reason
        file = _downloaded_file(info)
        if file is not None and file.is_file() and not file.name.endswith(_PARTIAL_SUFFIXES):
            break
        # yt-dlp skipped it as "already in the archive" under a key we did not know: forget it, retry.
        key = make_archive_id(info["extractor_key"], info["id"]) if info and info.get("id") else None
        if attempt or key is None or key not in set(cache.archive_lines()):
            raise DownloadError(f"yt-dlp produced no file (is it in {cache.archive} under another id?)")
        cache.forget([key])
    meta = {
        "id": video_id,
        "url": url,
        "file": file.name,
        "archive_key": make_archive_id(info.get("extractor_key") or "generic", info["id"]),
        "title": str(info.get("title") or ""),
        "uploader": str(info.get("uploader") or info.get("channel") or ""),
        "license": str(info.get("license") or ""),
    }
    atomic_write_json(cache.meta_path(stem), meta)
    return meta, None


def acquire(
    videos: Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike,
    sample_rate: int = 16000,
    min_duration_s: float = 0,
    max_duration_s: float = math.inf,
    max_items: int | None = None,
    retries: int = 3,
    socket_timeout_s: float = 30,
    cookies_file: str | os.PathLike | None = None,
    js_runtimes: Sequence[str] = ("deno",),
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Download exactly ``videos`` (by url) and convert each to ``out_dir/<safe id>.wav``.

    Returns ``(items, failed)`` in input order. Items: ``{id, file, title, url, uploader, license,
    duration_s, sample_rate, sha256, status: "ok"}``; failed: ``{id, url, title, status: "failed" |
    "filtered", reason}``. Already cached downloads are reused without any network request. Only
    configuration problems raise (:class:`ConfigError`); every per-item problem lands in ``failed``.
    """
    from tqdm import tqdm
    from yt_dlp.cookies import CookieLoadError

    from timbrelab.audio import audio_info, convert_to_wav, ffmpeg_exe

    if max_items is not None and max_items < 0:
        raise ConfigError(f"max_items must be >= 0 or null, got {max_items}")
    entries = [_normalise_video(v, i) for i, v in enumerate(videos)]
    cookies = _check_cookies(cookies_file)
    yt_dlp = _import_yt_dlp()
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = _Cache(Path(cache_dir).absolute())

    params = _base_params(socket_timeout_s, cookies, retries, js_runtimes)
    params.update({
        "format": "bestaudio/best",
        "download_archive": str(cache.archive),
        "continuedl": True,
        "noprogress": not progress,
        "noplaylist": True,
        "overwrites": False,
        "fixup": "never",          # no postprocessors: we convert ourselves
        "postprocessors": [],
        "ffmpeg_location": ffmpeg_exe(),
        "cachedir": str(cache.root / "yt-dlp"),
    })

    items: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    used_stems: set[str] = set()
    bar = tqdm(entries, desc="youtube", unit="video", file=sys.stderr, disable=not progress, leave=False)
    current = [""]
    if progress:
        def hook(status: Mapping[str, Any]) -> None:
            if status.get("status") == "downloading":
                total = status.get("total_bytes") or status.get("total_bytes_estimate")
                if total:
                    percent = 100.0 * (status.get("downloaded_bytes") or 0) / total
                    bar.set_postfix_str(f"{current[0]} {percent:.0f}%", refresh=False)
        params["progress_hooks"] = [hook]

    def record(entry: Mapping[str, Any], status: str, reason: str) -> None:
        # Name files, not this machine's folders: the manifest must not depend on where the repo lives.
        reason = str(reason)
        for folder in (cache.downloads, cache.root, out_dir):
            reason = reason.replace(f"{folder}{os.sep}", "")
        failed.append({"id": entry["id"], "url": entry["url"], "title": entry["title"],
                       "status": status, "reason": _one_line(reason)})
        log.log(logging.INFO if status == "filtered" else logging.WARNING,
                "youtube: %s %s: %s", entry["id"], status, failed[-1]["reason"])

    try:
        for entry in bar:
            video_id = entry["id"]
            current[0] = video_id
            bar.set_postfix_str(video_id, refresh=False)
            if video_id in seen_ids:
                record(entry, "filtered", "duplicate id: an earlier entry has the same id")
                continue
            seen_ids.add(video_id)
            if max_items is not None and len(items) >= max_items:
                record(entry, "filtered", f"max_items={max_items} already reached")
                continue
            stem = safe_id(video_id)
            if stem.lower() in used_stems:  # only possible on case-insensitive clashes
                stem = f"{stem}-{hashlib.sha1(video_id.encode('utf-8')).hexdigest()[:8]}"
            used_stems.add(stem.lower())
            wav = out_dir / f"{stem}.wav"

            reason = _duration_reason(entry["duration_s"], min_duration_s, max_duration_s)
            if reason:
                wav.unlink(missing_ok=True)
                record(entry, "filtered", reason)
                continue

            meta = cache.lookup(stem, video_id)
            try:
                if meta is None:
                    stale = None
                    try:
                        stale = read_json(cache.meta_path(stem))
                    except (OSError, ValueError):
                        pass
                    # An archived id whose file is gone must be downloaded again: unarchive it first.
                    cache.forget([stale["archive_key"]] if isinstance(stale, dict) and stale.get("archive_key")
                                 else [], video_id=video_id)
                    meta, why = _fetch(yt_dlp, params, entry["url"], cache, stem, video_id,
                                       min_duration_s, max_duration_s)
                    if meta is None:
                        wav.unlink(missing_ok=True)
                        record(entry, "filtered", why or "rejected by the duration filter")
                        continue
                else:
                    log.debug("youtube: %s reused from %s", video_id, cache.downloads / meta["file"])
                src = cache.downloads / meta["file"]
                try:
                    convert_to_wav(src, wav, sample_rate)
                    info = audio_info(wav)
                except AudioError as exc:
                    cache.drop(stem, meta)  # an undecodable download is fetched again next time
                    raise DownloadError(f"downloaded file is not decodable audio: {exc}") from exc
            except (KeyboardInterrupt, ConfigError):
                raise
            except CookieLoadError as exc:
                raise ConfigError(f"cookies_file {cookies!r}: yt-dlp cannot load it ({_one_line(exc)})") from exc
            except Exception as exc:  # noqa: BLE001 - one bad item must never stop the others
                wav.unlink(missing_ok=True)
                message = _one_line(exc)
                if "Sign in to confirm" in message and not cookies:
                    message += " (set cookies_file to a browser-exported cookies.txt)"
                record(entry, "failed", message)
                continue

            duration = round(info.frames / info.samplerate, 3)
            reason = _duration_reason(duration, min_duration_s, max_duration_s)
            if reason:
                wav.unlink(missing_ok=True)
                record(entry, "filtered", reason)
                continue
            items.append({
                "id": video_id,
                "file": wav.name,
                "title": entry["title"] or meta.get("title", ""),
                "url": entry["url"],
                "uploader": entry["uploader"] or meta.get("uploader", ""),
                "license": meta.get("license") or UNKNOWN_LICENSE,
                "duration_s": duration,
                "sample_rate": int(info.samplerate),
                "sha256": sha256_file(wav),
                "status": "ok",
            })
    finally:
        bar.close()
    log.info("youtube: %d ok, %d failed, %d filtered", len(items),
             sum(f["status"] == "failed" for f in failed), sum(f["status"] == "filtered" for f in failed))
    return items, failed
