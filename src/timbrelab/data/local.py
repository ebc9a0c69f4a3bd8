"""Your own recordings: copy every audio file under a folder into a raw domain, bytes unchanged.

Each file gets an id that is a filesystem-safe slug of its path relative to the folder
(``Suite 1/Prélude.WAV`` -> ``suite-1__prelude``); ids that would collide (``a.wav`` and ``a.flac``,
``Take1`` and ``take1``) get a short hash of their relative path appended, so every id is unique and
does not depend on the order files are found in. ``<stem>.f0.csv`` sidecars (true f0 tracks) are copied
along as ``<id>.f0.csv``. Nothing is converted here: ``prepare`` decodes, resamples and normalises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

import soundfile as sf
from tqdm import tqdm

from timbrelab.audio import AUDIO_EXTENSIONS, check_complete, ffmpeg_exe
from timbrelab.config import LocalFolderConfig
from timbrelab.errors import AudioError, TimbrelabError
from timbrelab.f0track import F0_SUFFIX
from timbrelab.fsutil import atomic_path, sha256_file

_MAX_SLUG = 80
_DIR_SEP = "__"  # a slugged path part never contains "_", so this separator is unambiguous


def acquire_local(cfg: LocalFolderConfig, out_dir: Path, *, progress: bool = True
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Copy every audio file under ``cfg.path`` into ``out_dir/<id><ext>``; return (items, failed).

    The walk is recursive and sorted; symlinked directories are not followed and a symlinked file is
    copied only when it points inside the folder. Non-audio, empty and unreadable files go to
    ``failed`` with a reason; so does an ``.f0.csv`` with no audio file beside it.
    """
    root = _check_folder(cfg)
    out_dir = Path(out_dir)
    out_real = out_dir.resolve()
    root_real = root.resolve()

    files, failed = _walk(root, root_real, out_real)
    audio = [rel for rel in files if _is_audio(rel)]
    if not audio:
        what = "is empty" if not files and not failed else "holds no audio files"
        raise TimbrelabError(f"local folder source: {root} {what} (accepted: {', '.join(AUDIO_EXTENSIONS)}); "
                             "put recordings there or set the key `path` to another folder")
    ids = _unique_ids(audio)
    sidecars = {rel for rel in files if rel.name.lower().endswith(F0_SUFFIX)}
    # sidecar "dir/x.f0.csv" belongs to every audio file "dir/x.<ext>"
    sidecar_of: dict[PurePosixPath, PurePosixPath] = {}
    for rel in sorted(sidecars):
        stem = rel.name[: -len(F0_SUFFIX)]
        owners = [a for a in audio if a.parent == rel.parent and a.stem == stem]
        for owner in owners:
            sidecar_of[owner] = rel
        if not owners:
            failed.append(_failure(rel, f"{rel}: f0 sidecar with no audio file '{stem}.<ext>' beside it"))

    items: list[dict[str, Any]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for rel in tqdm(files, desc="local folder", unit="file", disable=not progress):
        if rel in sidecars:
            continue
        if not _is_audio(rel):
            failed.append(_failure(rel, f"{rel}: not an audio file (extension {rel.suffix or 'none'!r}; "
                                        f"accepted: {', '.join(AUDIO_EXTENSIONS)})"))
            continue
        src = root / rel
        item_id = ids[rel]
        if src.stat().st_size == 0:
            failed.append(_failure(rel, f"{rel}: empty file", item_id))
            continue
        try:
            duration, sample_rate, channels = probe_audio(src)
        except AudioError as exc:  # name the file by its place in the folder, not an absolute path
            failed.append(_failure(rel, str(exc).replace(str(src), rel.as_posix()), item_id))
            continue
        dst_name = f"{item_id}{rel.suffix.lower()}"
        _copy(src, out_dir / dst_name)
        item = {
            "id": item_id,
            "file": dst_name,
            "duration_s": duration,
            "sample_rate": sample_rate,
            "channels": channels,
            "sha256": sha256_file(out_dir / dst_name),
            "license": cfg.license,
            "provenance": {"source": "local", "relpath": rel.as_posix()},
        }
        if rel in sidecar_of:
            item["f0_file"] = f"{item_id}{F0_SUFFIX}"
            item["provenance"]["f0_relpath"] = sidecar_of[rel].as_posix()
            _copy(root / sidecar_of[rel], out_dir / item["f0_file"])
        items.append(item)
    items.sort(key=lambda item: item["id"])
    failed.sort(key=lambda entry: (entry["file"], entry["id"]))
    return items, failed


def probe_audio(path: str | os.PathLike) -> tuple[float, int, int]:
    """(duration_s, sample_rate, channels) of an audio file; AudioError naming the file otherwise.

    libsndfile answers from the header (and reads one block to catch garbage after a valid header);
    formats it cannot read are probed by decoding them with ffmpeg to a null sink. Either way a file
    shorter than its header declares, or one that fails to decode, is an AudioError
    (:func:`timbrelab.audio.check_complete`).
    """
    try:
        info = sf.info(str(path))
        with sf.SoundFile(str(path)) as handle:
            handle.read(min(info.frames, 4096), dtype="float32")
    except Exception:  # noqa: BLE001 - libsndfile raises several error types; ffmpeg gets a go
        probed = _probe_with_ffmpeg(path)
        check_complete(path)
        return probed
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: no audio samples")
    check_complete(path)
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5,
                    "5.1": 6, "6.1": 7, "7.1": 8}


def _probe_with_ffmpeg(path: str | os.PathLike) -> tuple[float, int, int]:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "null", "-"]
    result = subprocess.run(cmd, capture_output=True, check=False)
    text = result.stderr.decode(errors="replace")
    stream = re.search(r"Stream #\S+.*?: Audio: [^\n]*?(\d+) Hz, ([^,\n]+)", text)
    times = re.findall(r"time=(\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if result.returncode != 0 or not stream or not times:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        raise AudioError(f"{path}: not a readable audio file ({lines[-1].strip() if lines else 'no audio stream'})")
    hours, minutes, seconds = times[-1]
    duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if duration <= 0:
        raise AudioError(f"{path}: no audio samples")
    layout = stream.group(2).strip().split("(")[0].strip()
    many = re.match(r"(\d+) channels", layout)
    channels = int(many.group(1)) if many else _LAYOUT_CHANNELS.get(layout, 0)
    return duration, int(stream.group(1)), channels


def slugify_relpath(rel: PurePosixPath) -> str:
    """Filesystem-safe slug of a relative path without its extension (may be empty)."""
    parts = list(rel.parent.parts) + [rel.stem]
    slugged = [_slug_part(part) for part in parts]
    return _DIR_SEP.join(part for part in slugged if part)


def _slug_part(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _unique_ids(paths: list[PurePosixPath]) -> dict[PurePosixPath, str]:
    def short_hash(rel: PurePosixPath, n: int = 8) -> str:
        return hashlib.sha256(rel.as_posix().encode("utf-8")).hexdigest()[:n]

    base: dict[PurePosixPath, str] = {}
    for rel in paths:
        slug = slugify_relpath(rel)
        if not slug:
            slug = "rec"
        if len(slug) > _MAX_SLUG:
            slug = f"{slug[:_MAX_SLUG].rstrip('-_')}-{short_hash(rel)}"
        base[rel] = slug
    counts: dict[str, int] = {}
    for slug in base.values():
        counts[slug] = counts.get(slug, 0) + 1
    ids: dict[PurePosixPath, str] = {}
    taken = {slug for slug, count in counts.items() if count == 1}
    for rel in sorted(paths):
        slug = base[rel]
        if counts[slug] == 1 and slug != "rec":
            ids[rel] = slug
            continue
        n = 8
        candidate = f"{slug}-{short_hash(rel, n)}"
        while candidate in taken:
            n += 4
            candidate = f"{slug}-{short_hash(rel, n)}"
        taken.add(candidate)
        ids[rel] = candidate
    return ids


def _check_folder(cfg: LocalFolderConfig) -> Path:
    raw = str(getattr(cfg, "path", "") or "").strip()
    if not raw or raw == "???":
        raise TimbrelabError("local folder source: no folder given; set the key `path` to the folder "
                             "that holds your recordings")
    root = Path(os.path.expanduser(raw))
    if not root.is_dir():
        raise TimbrelabError(f"local folder source: {root} does not exist or is not a folder; set the key "
                             "`path` to the folder that holds your recordings")
    return root


def _walk(root: Path, root_real: Path, out_real: Path
          ) -> tuple[list[PurePosixPath], list[dict[str, Any]]]:
    files: list[PurePosixPath] = []
    failed: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            sub = here / name
            rel = PurePosixPath(sub.relative_to(root).as_posix())
            if sub.is_symlink():
                failed.append(_failure(rel, f"{rel}: symlinked directory, not followed"))
            elif sub.resolve() == out_real:
                continue  # never copy our own output back in
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = here / name
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if path.is_symlink():
                target = path.resolve()
                if not target.exists():
                    failed.append(_failure(rel, f"{rel}: broken symlink"))
                    continue
                if not target.is_relative_to(root_real):
                    failed.append(_failure(rel, f"{rel}: symlink points outside the folder, not followed"))
                    continue
            if not path.is_file():
                failed.append(_failure(rel, f"{rel}: not a regular file"))
                continue
            files.append(rel)
    files.sort()
    return files, failed


def _is_audio(rel: PurePosixPath) -> bool:
    return rel.suffix.lower() in AUDIO_EXTENSIONS


def _failure(rel: PurePosixPath, reason: str, item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or slugify_relpath(rel) or "rec", "file": rel.as_posix(), "status": "skipped",
            "reason": reason}


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def acquire_local_in_repo(cfg: LocalFolderConfig, root: Path, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """:func:`acquire_local` with ``cfg.path`` taken relative to the repository ``root``."""
    return acquire_local(dataclasses.replace(cfg, path=str(Path(root) / cfg.path)), out_dir)
