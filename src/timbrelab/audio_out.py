"""What the CLI reads and writes for a musician: input and output paths checked before any work, and
audio written in the format its file name says.

* An input must be a non-empty file: a folder says "is a directory", a 0-byte file "empty file".
* An output must not be a folder, nor the input itself (``transfer in.wav -o in.wav`` would overwrite the
  recording): compared by resolved path and by ``samefile`` (hard links, ``./`` spellings).
* The output's extension picks the format (:data:`FORMATS`, those the installed libsndfile writes:
  WAV, FLAC, OGG Vorbis, MP3 where supported); another extension is refused, listing the supported ones,
  instead of writing WAV bytes under an ``.mp3`` name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from timbrelab.errors import AudioError, TimbrelabError

# extension -> (libsndfile format, subtype): 16-bit PCM for the lossless ones (what save_wav writes).
_CANDIDATES = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


def _formats() -> dict[str, tuple[str, str]]:
    import soundfile as sf

    available = sf.available_formats()
    return {ext: (fmt, sub) for ext, (fmt, sub) in _CANDIDATES.items()
            if fmt in available and sub in sf.available_subtypes(fmt)}


FORMATS: dict[str, tuple[str, str]] = _formats()


def supported_extensions() -> str:
    return ", ".join(FORMATS)


def check_input(path: str | os.PathLike, what: str = "input") -> Path:
    """``path`` as a readable, non-empty file, or an AudioError naming it and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file ({what})")
    if not path.exists():
        raise AudioError(f"{path}: no such file ({what})")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file ({what})")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes, {what})")
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = (),
                 audio: bool = True) -> Path:
    """``path`` as a file this command may write, or a TimbrelabError naming it (nothing is written).

    ``inputs``: files the command reads (the recording, the checkpoint), which it must never overwrite.
    ``audio``: the extension must be one of :data:`FORMATS`.
    """
    path = Path(path)
    if path.is_dir():
        raise TimbrelabError(f"{path}: output is a directory; give a file name, e.g. {path / 'out.wav'}"
                             if audio else f"{path}: output is a directory; give a file name")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise TimbrelabError(f"{path}: output is the input file {source}; refusing to overwrite it "
                                 "(choose another -o)")
    if path.parent.exists() and not path.parent.is_dir():
        raise TimbrelabError(f"{path}: {path.parent} is not a directory")
    if audio:
        output_format(path)
    return path


def output_format(path: str | os.PathLike) -> tuple[str, str]:
    """(libsndfile format, subtype) the extension of ``path`` names, or an AudioError listing the supported."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        named = f"extension {ext!r}" if ext else "no extension"
        raise AudioError(f"{path}: {named} is not an audio format this installation writes; "
                         f"use one of {supported_extensions()}")
    return FORMATS[ext]


def save_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write float mono audio atomically in the format the extension names (see :data:`FORMATS`),
    clipped to [-1, 1]."""
    import soundfile as sf

    from timbrelab.fsutil import atomic_path

    fmt, subtype = output_format(path)
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: refusing to write non-finite samples")
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, format=fmt, subtype=subtype)


def render_file(input_path: str | os.PathLike, output_path: str | os.PathLike, render):
    """Read ``input_path`` (any format, rate, channels), ``result = render(audio, sample_rate)`` (anything with
    ``.audio`` and ``.sample_rate``), write ``result.audio`` to ``output_path`` atomically in the format its
    extension names; nothing is written on an error, and audio errors name the input file. Returns ``result``."""
    from timbrelab.audio import load_audio

    check_input(input_path)
    check_output(output_path, inputs=(input_path,))
    audio, sr = load_audio(input_path, sample_rate=None)
    try:
        result = render(audio, sr)
    except AudioError as exc:
        raise AudioError(f"{input_path}: {exc}") from exc
    save_audio(output_path, result.audio, result.sample_rate)
    return result
