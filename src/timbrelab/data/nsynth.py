"""The official NSynth json/wav archives: resumable download and safe, filtered extraction.

Each archive ``nsynth-<split>.jsonwav.tar.gz`` holds ``nsynth-<split>/examples.json`` (a dict keyed by
note_str, see :mod:`timbrelab.data.nsynth_schema`) and ``nsynth-<split>/audio/<note_str>.wav``.
Extraction streams the archive once, keeps only the notes the filter wants, and swaps
``<out_root>/<split>/`` in atomically, so a corrupt or hostile archive never leaves anything behind.
NSynth's official train/valid/test split is kept as it is.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from timbrelab.data import nsynth_schema
from timbrelab.errors import ConfigError, DownloadError, TimbrelabError
from timbrelab.fsutil import atomic_dir, atomic_write_json, atomic_write_text, sha256_file

ARCHIVE_NAME = "nsynth-{split}.jsonwav.tar.gz"
CHUNK_BYTES = 1 << 20            # download / copy chunk: memory stays bounded whatever the size
RETRY_BACKOFF_S = 1.0            # first pause between attempts; doubles, capped at RETRY_BACKOFF_MAX_S
RETRY_BACKOFF_MAX_S = 30.0
USER_AGENT = "timbrelab (+nsynth download)"

# 4xx answers that can succeed on a later try; every other 4xx (404, 403, ...) fails at once.
_RETRYABLE_4XX = {408, 425, 429}
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def archive_name(split: str) -> str:
    return ARCHIVE_NAME.format(split=split)


# --------------------------------------------------------------------------------------------------
# Download


class _Interrupted(Exception):
    """One attempt ended early (dropped connection, timeout, short body, 5xx); worth retrying."""


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000); unknown parts None."""
    if not value:
        return None, None
    match = _CONTENT_RANGE_RE.match(value)
    if not match:
        return None, None
    start = int(match[1]) if match[1] is not None else None
    total = int(match[3]) if match[3] != "*" else None
    return start, total


def _content_length(headers: Any) -> int | None:
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _part_size(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


# The cache is keyed by URL: ``<file>.url`` says where ``<file>`` (the archive or its .part) came from,
# so a changed url_template never reuses, or resumes, another URL's bytes.
def _source_file(path: Path) -> Path:
    return path.with_name(path.name + ".url")


def _came_from(path: Path, url: str) -> bool:
    try:
        return _source_file(path).read_text(encoding="utf-8") == url
    except OSError:
        return False


def _note_source(path: Path, url: str) -> None:
    atomic_write_text(_source_file(path), url)


def _attempt(url: str, part: Path, *, timeout_s: float, progress: bool, desc: str) -> int | None:
    """One request: resume ``part`` from its current size. Returns the total size if the server said it.

    Raises _Interrupted for anything worth retrying and DownloadError for anything that is not.
    """
    have = _part_size(part)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        request = urllib.request.Request(url, headers=headers)
        response = urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 - URL from config
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            # Nothing left past byte `have`: either the .part is already complete or it is stale.
            _, total = _parse_content_range(exc.headers.get("Content-Range") if exc.headers else None)
            if total is not None and total == have:
                return total
            part.unlink(missing_ok=True)
            raise _Interrupted(f"HTTP 416 for a {have}-byte partial file; restarting from 0") from exc
        if exc.code >= 500 or exc.code in _RETRYABLE_4XX:
            raise _Interrupted(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(
            f"{url}: HTTP {exc.code} {exc.reason}; check the URL (url_template) and that the file exists "
            f"there") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (FileNotFoundError, PermissionError, IsADirectoryError)) or (
                isinstance(reason, str) and reason.startswith("unknown url type")):
            raise DownloadError(f"{url}: {reason}; check the URL (url_template)") from exc
        raise _Interrupted(f"URLError: {reason}") from exc
    except (http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        raise _Interrupted(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from exc
    except ValueError as exc:  # unknown URL type, malformed URL
        raise DownloadError(f"{url}: not a URL urllib can fetch ({exc}); check url_template") from exc

    with response:
        status = getattr(response, "status", None) or 200  # file:// answers without a status
        total: int | None
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            length = _content_length(response.headers)
            if start is None:
                start = have
            if total is None and length is not None:
                total = start + length
            if start == have:
                mode = "ab"
            elif start == 0:
                mode, have = "wb", 0
            else:
                part.unlink(missing_ok=True)
                raise _Interrupted(f"server resumed at byte {start}, not {have}; restarting from 0")
        elif status == 200:
            # The server ignored Range (or there was nothing to resume): start over.
            mode, have = "wb", 0
            total = _content_length(response.headers)
        else:
            raise DownloadError(f"{url}: unexpected HTTP {status}; check the URL (url_template)")

        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                   disable=not progress, leave=False)
        # read1 returns what has arrived (one socket read): a timeout then loses nothing already
        # received, whereas read(n) discards a partly filled buffer when it raises.
        read = getattr(response, "read1", response.read)
        try:
            with open(part, mode) as handle:
                while True:
                    try:
                        chunk = read(CHUNK_BYTES)
                    except (http.client.HTTPException, TimeoutError, ConnectionError, OSError) as exc:
                        raise _Interrupted(f"{type(exc).__name__}: {exc}") from exc
                    if not chunk:
                        break
                    try:
                        handle.write(chunk)
                    except OSError as exc:
                        raise DownloadError(f"{url}: cannot write {part} ({exc}); free some disk space "
                                            f"or fix permissions, then rerun to resume") from exc
                    bar.update(len(chunk))
        finally:
            bar.close()

    size = _part_size(part)
    if total is not None and size < total:
        # http.client returns a short body without an error when the peer closes early.
        raise _Interrupted(f"connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink(missing_ok=True)
        raise _Interrupted(f"received {size} bytes but the server announced {total}; restarting from 0")
    return total


def _attempts(url: str, part: Path, desc: str, *, retries: int, timeout_s: float, progress: bool) -> int | None:
    """Attempt after attempt until one completes; DownloadError after ``retries`` in a row without progress."""
    failures = 0
    best = _part_size(part)
    while True:
        try:
            return _attempt(url, part, timeout_s=timeout_s, progress=progress, desc=desc)
        except _Interrupted as exc:
            size = _part_size(part)
            if size > best:
                best, failures = size, 0
            failures += 1
            if failures > retries:
                again = (f"rerun to resume from {size} bytes (kept in {part})" if size
                         else "rerun to try again")
                raise DownloadError(
                    f"{url}: download failed after {failures} attempts without progress ({exc}); check "
                    f"the URL or your connection; {again}") from exc
            time.sleep(min(RETRY_BACKOFF_S * 2 ** (failures - 1), RETRY_BACKOFF_MAX_S))


def download(url: str, dest: Path, *, retries: int = 5, timeout_s: float = 60,
             expected_sha256: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``<dest>.part`` with HTTP Range after interruptions.

    ``retries`` counts consecutive failed attempts that made no progress (an attempt that grows the
    .part file resets the count, so a long download on a flaky line keeps going). The final size is
    checked against Content-Length / Content-Range and the sha256 against ``expected_sha256``; only
    then is the .part renamed onto ``dest``. An existing ``dest`` is returned without any request when
    it came from ``url`` (``<dest>.url``) or has the expected sha256; a ``.part`` is resumed only when
    it came from ``url``.
    """
    dest = Path(dest)
    expected = expected_sha256.strip().lower() if expected_sha256 else None
    if dest.is_file():
        if expected is None and _came_from(dest, url):
            return dest
        if expected is not None and sha256_file(dest) == expected:
            _note_source(dest, url)  # the sha256 proves it is the configured content
            return dest
        # From another URL, stale or damaged: download again; replaced only once the new one verifies.
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    if part.exists() and not _came_from(part, url):
        part.unlink()  # another URL's partial download: resuming it would splice two files
    _note_source(part, url)
    try:
        total = _attempts(url, part, dest.name, retries=retries, timeout_s=timeout_s, progress=progress)
    finally:
        if not part.exists():  # nothing to resume: no record of one either
            _source_file(part).unlink(missing_ok=True)

    size = _part_size(part)
    if total is not None and size != total:  # _attempt already guarantees this; belt and braces
        raise DownloadError(f"{url}: got {size} bytes, expected {total}; rerun to resume")
    if expected is not None:
        actual = sha256_file(part)
        if actual != expected:
            part.unlink(missing_ok=True)
            _source_file(part).unlink(missing_ok=True)
            raise DownloadError(
                f"{url}: sha256 mismatch (expected {expected}, got {actual}); the file on the server "
                f"differs from the configured sha256; the download was deleted: fix the sha256 in the "
                f"config or the URL, then rerun")
    _source_file(dest).unlink(missing_ok=True)  # never a moment where dest is credited to the wrong URL
    part.replace(dest)
    _note_source(dest, url)
    _source_file(part).unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------------------------------
# Extraction


def _as_list(value: Any) -> list:
    return list(value) if value is not None else []


def _check_filter(filt: Any) -> dict[str, Any]:
    """Read an NSynthFilter (dataclass or OmegaConf) into plain values; ConfigError on typos."""
    families = [str(f) for f in _as_list(filt.families)]
    sources = [str(s) for s in _as_list(filt.sources)]
    velocities = [int(v) for v in _as_list(filt.velocities)]
    excluded = [str(q) for q in _as_list(filt.exclude_qualities)]
    for key, values, allowed in (("families", families, nsynth_schema.FAMILIES),
                                 ("sources", sources, nsynth_schema.SOURCES),
                                 ("exclude_qualities", excluded, nsynth_schema.QUALITIES)):
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ConfigError(f"nsynth filter.{key}: unknown {unknown}; expected some of {list(allowed)}")
    pitch_min, pitch_max = int(filt.pitch_min), int(filt.pitch_max)
    if pitch_min > pitch_max:
        raise ConfigError(f"nsynth filter: pitch_min ({pitch_min}) is above pitch_max ({pitch_max})")
    return {"families": set(families), "sources": set(sources), "velocities": set(velocities),
            "exclude_qualities": set(excluded), "pitch_min": pitch_min, "pitch_max": pitch_max}


def _passes_name_filter(fields: dict[str, Any], f: dict[str, Any]) -> bool:
    return ((not f["families"] or fields["instrument_family_str"] in f["families"])
            and (not f["sources"] or fields["instrument_source_str"] in f["sources"])
            and f["pitch_min"] <= fields["pitch"] <= f["pitch_max"]
            and (not f["velocities"] or fields["velocity"] in f["velocities"]))


def _record_qualities(record: dict[str, Any]) -> set[str]:
    if isinstance(record.get("qualities_str"), list):
        return {str(q) for q in record["qualities_str"]}
    flags = record.get("qualities")
    if isinstance(flags, list):
        return {q for q, on in zip(nsynth_schema.QUALITIES, flags) if on}
    return set()


def _unsafe_reason(member: tarfile.TarInfo, prefix: str) -> str | None:
    """Why ``member`` must not be extracted, or None. Any reason rejects the whole archive."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or PurePosixPath(name).is_absolute():
        return "absolute path"
    if "\\" in name:
        return "backslash in path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "'..' path component"
    if member.issym() or member.islnk():
        return f"link (to {member.linkname!r})"
    if member.isdev():
        return "device or fifo"
    if not (member.isfile() or member.isdir()):
        return f"unsupported member type {member.type!r}"
    if not parts or parts[0] != prefix:
        return f"outside {prefix}/"
    return None


def _corrupt(archive: Path, exc: BaseException) -> TimbrelabError:
    return TimbrelabError(
        f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc}); delete it and download "
        f"it again (nothing was extracted)")


def _iter_members(tar: tarfile.TarFile) -> Iterable[tarfile.TarInfo]:
    """Members of a stream-mode archive without tarfile keeping every TarInfo (train has ~300k)."""
    while True:
        member = tar.next()
        if member is None:
            return
        yield member
        tar.members.clear()


def extract_split(archive: Path, out_root: Path, split: str, filt: Any) -> dict[str, Any]:
    """Stream ``archive`` once and write the notes ``filt`` keeps to ``out_root/<split>/``.

    Writes ``<split>/examples.json`` (only the kept notes, canonical JSON) and
    ``<split>/audio/<note_str>.wav``, swapped in atomically. Unsafe members (absolute paths, ``..``,
    links, devices, anything outside ``nsynth-<split>/``) reject the whole archive; so does a truncated
    or corrupt one. Returns ``{"split", "members_seen", "notes_kept", "notes_filtered", "skipped"}``.
    """
    archive, out_root = Path(archive), Path(out_root)
    f = _check_filter(filt)
    if not archive.is_file():
        raise TimbrelabError(f"{archive}: no such archive; download it or fix the path")
    prefix = f"nsynth-{split}"
    members_seen = 0
    filtered = 0
    skipped: list[dict[str, str]] = []
    audio_notes: set[str] = set()
    examples: dict[str, Any] | None = None

    with atomic_dir(out_root / split) as tmp:
        audio_dir = tmp / "audio"
        audio_dir.mkdir()
        try:
            # gzip.open rather than tarfile's "r|gz": GzipFile checks the CRC and length trailer and
            # raises EOFError on truncation, whereas tarfile alone takes a cut at a header boundary for
            # the end of the archive and would extract a silently incomplete split.
            with gzip.open(archive, "rb") as gz:
                with tarfile.open(fileobj=gz, mode="r|") as tar:
                    for member in _iter_members(tar):
                        members_seen += 1
                        reason = _unsafe_reason(member, prefix)
                        if reason is None and hasattr(tarfile, "data_filter"):
                            try:  # the stdlib's "data" filter as a second opinion
                                tarfile.data_filter(member, str(tmp))
                            except tarfile.FilterError as exc:
                                reason = str(exc)
                        if reason is not None:
                            raise TimbrelabError(
                                f"{archive}: unsafe member {member.name!r} ({reason}); refusing the whole "
                                f"archive, nothing was extracted. Use the official NSynth archive")
                        if not member.isfile():
                            continue
                        rel = PurePosixPath(member.name).parts[1:]
                        if rel == ("examples.json",):
                            examples = _read_examples(tar, member, archive)
                        elif len(rel) == 2 and rel[0] == "audio" and rel[1].endswith(".wav"):
                            note = rel[1][: -len(".wav")]
                            fields = nsynth_schema.parse_note_str(note)
                            if fields is None:
                                skipped.append({"id": member.name, "reason": "not an NSynth note_str"})
                            elif not _passes_name_filter(fields, f):
                                filtered += 1
                            else:
                                _copy_member(tar, member, audio_dir / f"{note}.wav")
                                audio_notes.add(note)
                # Read to the end so GzipFile verifies the trailer (CRC32 and length).
                while gz.read(CHUNK_BYTES):
                    pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise _corrupt(archive, exc) from exc

        if examples is None:
            raise TimbrelabError(f"{archive}: no {prefix}/examples.json in the archive; is it the official "
                                 f"NSynth json/wav archive for split {split!r}?")

        kept: dict[str, Any] = {}
        for note in sorted(audio_notes):
            record = examples.get(note)
            if not isinstance(record, dict):
                skipped.append({"id": note, "reason": "audio without an entry in examples.json"})
                (audio_dir / f"{note}.wav").unlink()
            elif _record_qualities(record) & f["exclude_qualities"]:
                filtered += 1
                (audio_dir / f"{note}.wav").unlink()
            else:
                kept[note] = record
        for note in sorted(set(examples) - audio_notes):
            fields = nsynth_schema.parse_note_str(note)
            record = examples[note]
            if (fields is not None and _passes_name_filter(fields, f) and isinstance(record, dict)
                    and not _record_qualities(record) & f["exclude_qualities"]):
                skipped.append({"id": note, "reason": "in examples.json but no audio in the archive"})
        atomic_write_json(tmp / "examples.json", kept)

    return {"split": split, "members_seen": members_seen, "notes_kept": len(kept),
            "notes_filtered": filtered, "skipped": skipped}


def _read_examples(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> dict[str, Any]:
    handle = tar.extractfile(member)
    assert handle is not None  # a regular file always has a file object
    with handle:
        raw = handle.read()
    try:
        examples = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TimbrelabError(f"{archive}: {member.name} is not valid JSON ({exc}); the archive is "
                             f"damaged: delete it and download it again") from exc
    if not isinstance(examples, dict):
        raise TimbrelabError(f"{archive}: {member.name} is not a JSON object keyed by note_str")
    return examples


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    handle = tar.extractfile(member)
    assert handle is not None
    with handle, open(target, "wb") as out:
        shutil.copyfileobj(handle, out, CHUNK_BYTES)


# --------------------------------------------------------------------------------------------------
# Acquire: every configured split, one failure does not lose the others


def _items(out_root: Path, split: str, url: str) -> list[dict[str, Any]]:
    examples = json.loads((out_root / split / "examples.json").read_text(encoding="utf-8"))
    items = []
    for note in sorted(examples):
        rel = f"{split}/audio/{note}.wav"
        items.append({"id": note, "split": split, "file": rel, "sha256": sha256_file(out_root / rel),
                      "license": nsynth_schema.LICENSE, "url": url})
    return items


def _path_free(reason: str, folder: Path) -> str:
    """A failure reason without ``folder``'s absolute path: manifests must not depend on the machine."""
    return reason.replace(f"{folder}{os.sep}", "").replace(str(folder), folder.name)


def _note_failures(stats: dict[str, Any], split: str, url: str) -> list[dict[str, Any]]:
    """extract_split's skipped notes as manifest failures: a split missing a wav is not 'failed: 0'."""
    return [{"split": split, "id": entry["id"], "url": url, "reason": entry["reason"]}
            for entry in stats.get("skipped", [])]


def _splits(cfg: Any) -> list[str]:
    splits = [str(s) for s in _as_list(cfg.splits)]
    if not splits:
        raise ConfigError("nsynth splits: empty; list some of train, valid, test")
    return splits


def acquire_download(cfg: Any, out_root: Path, *, progress: bool = True) -> dict[str, Any]:
    """Download (or reuse from ``cfg.cache_dir``) and extract every split in ``cfg.splits``.

    Returns ``{"splits": {split: stats}, "items": [...], "failed": [{"split", "url", "reason"}]}``; a
    failed split has no ``id``, a note the extraction skipped (see :func:`extract_split`) has one.
    Reasons name files, not this machine's folders.
    """
    out_root = Path(out_root)
    cache = Path(str(cfg.cache_dir))
    sha_by_split = dict(cfg.sha256 or {})
    summary: dict[str, Any] = {"splits": {}, "items": [], "failed": []}
    for split in _splits(cfg):
        url = str(cfg.url_template).format(split=split)
        try:
            archive = download(url, cache / archive_name(split), retries=int(cfg.retries),
                               timeout_s=float(cfg.timeout_s), expected_sha256=sha_by_split.get(split),
                               progress=progress)
            stats = extract_split(archive, out_root, split, cfg.filter)
        except ConfigError:
            raise
        except TimbrelabError as exc:
            summary["failed"].append({"split": split, "url": url, "reason": _path_free(str(exc), cache)})
            continue
        summary["splits"][split] = stats
        summary["items"].extend(_items(out_root, split, url))
        summary["failed"].extend(_note_failures(stats, split, url))
    return summary


def acquire_local(cfg: Any, out_root: Path) -> dict[str, Any]:
    """Extract ``<cfg.path>/nsynth-<split>.jsonwav.tar.gz`` for every split in ``cfg.splits``.

    Same summary as :func:`acquire_download`. An item's ``url`` is ``local:<archive name>``, not the
    folder, so the manifest does not depend on where the archives sit on this machine.
    """
    out_root = Path(out_root)
    root = str(cfg.path)
    if root in ("", "???"):
        raise ConfigError("nsynth path: not set; point it at the folder holding nsynth-<split>.jsonwav.tar.gz")
    summary: dict[str, Any] = {"splits": {}, "items": [], "failed": []}
    for split in _splits(cfg):
        archive = Path(root) / archive_name(split)
        try:
            if not archive.is_file():
                raise TimbrelabError(f"{archive}: no such archive; put the official NSynth "
                                     f"{archive_name(split)} there or drop {split!r} from splits")
            stats = extract_split(archive, out_root, split, cfg.filter)
        except ConfigError:
            raise
        except TimbrelabError as exc:
            summary["failed"].append({"split": split, "url": f"local:{archive.name}",
                                      "reason": _path_free(str(exc), Path(root))})
            continue
        summary["splits"][split] = stats
        summary["items"].extend(_items(out_root, split, f"local:{archive.name}"))
        summary["failed"].extend(_note_failures(stats, split, f"local:{archive.name}"))
    return summary
