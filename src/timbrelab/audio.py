"""The one place that reads, writes, decodes and resamples audio.

Contract: float32 mono arrays at the pipeline's ``sample_rate`` (default 16000), peak-safe in [-1, 1].
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from timbrelab.errors import AudioError
from timbrelab.fsutil import atomic_path

DEFAULT_SAMPLE_RATE = 16000
# Extensions the local-folder source and prepare accept; anything else is skipped with a reason.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".webm")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped in the imageio-ffmpeg wheel (no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32 by averaging channels."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    return audio


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """High-quality resampling (soxr, the library librosa uses underneath)."""
    if orig_sr == target_sr:
        return np.asarray(audio, dtype=np.float32)
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Header of a file libsndfile can read; AudioError naming the file otherwise."""
    try:
        return sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError variants
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc


def load_audio(path: str | os.PathLike, sample_rate: int | None = DEFAULT_SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Read a whole file as float32 mono, resampled to ``sample_rate`` (None keeps the file's rate).

    Formats libsndfile cannot read (mp3 on old builds, m4a, webm) are decoded with ffmpeg. A truncated
    or damaged file is an AudioError (see :func:`check_complete`), never a silently shorter signal.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    check_complete(path)
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception:
        sr = sample_rate or DEFAULT_SAMPLE_RATE
        return decode_with_ffmpeg(path, sr), sr
    audio = to_mono(audio)
    if sample_rate is not None and sr != sample_rate:
        audio, sr = resample(audio, sr, sample_rate), sample_rate
    return audio, sr


# --------------------------------------------------------------------------------------------------
# Truncated and damaged files: libsndfile and ffmpeg both decode what is there without complaint, so
# compare with what the header declares (WAV, AIFF, FLAC) or watch for decode errors (everything else).


def check_complete(path: str | os.PathLike) -> None:
    """AudioError naming the file if it holds less audio than its header declares, or fails to decode.

    WAV/RF64: the data chunk's size vs the bytes present; AIFF: COMM's frame count vs the frames
    present; FLAC: STREAMINFO's total samples vs what decodes. OGG, MP3 and the rest declare no
    length: the whole file is decoded with ffmpeg and any decode error rejects it.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        _check_wav(path)
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        _check_aiff(path)
    elif head[:4] == b"fLaC":
        _check_flac(path)
    else:
        _check_decodes(path)


def _truncated(path: Path, declared_s: float, present_s: float, what: str = "holds") -> AudioError:
    return AudioError(f"{path}: truncated: the header declares {declared_s:.2f} s of audio but the file {what} "
                      f"{present_s:.2f} s; copy or export it again")


def _chunks(path: Path, big_endian: bool) -> Iterator[tuple[bytes, int, int]]:
    """(id, declared size, offset of the payload) of each top-level RIFF/IFF chunk, from the header alone."""
    size_fmt = ">I" if big_endian else "<I"
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        offset = 12
        while offset + 8 <= file_size:
            handle.seek(offset)
            header = handle.read(8)
            chunk_id, size = header[:4], struct.unpack(size_fmt, header[4:])[0]
            yield chunk_id, size, offset + 8
            offset += 8 + size + (size & 1)


def _check_wav(path: Path) -> None:
    file_size = path.stat().st_size
    byte_rate = 0
    rf64_data = None
    with open(path, "rb") as handle:
        for chunk_id, size, at in _chunks(path, big_endian=False):
            handle.seek(at)
            if chunk_id == b"ds64":  # RF64: the real data size lives here
                rf64_data = struct.unpack("<Q", handle.read(24)[8:16])[0]
            elif chunk_id == b"fmt ":
                byte_rate = struct.unpack("<I", handle.read(16)[8:12])[0]
            elif chunk_id == b"data":
                if size == 0xFFFFFFFF and rf64_data is not None:
                    size = rf64_data
                # 0 and 0xFFFFFFFF are what streaming writers leave when they never finalise: no length declared.
                if size in (0, 0xFFFFFFFF) or byte_rate <= 0:
                    return
                present = file_size - at
                if present < size:
                    raise _truncated(path, size / byte_rate, present / byte_rate)
                return


def _check_aiff(path: Path) -> None:
    with open(path, "rb") as handle:
        for chunk_id, _size, at in _chunks(path, big_endian=True):
            if chunk_id == b"COMM":
                handle.seek(at)
                declared = struct.unpack(">I", handle.read(6)[2:6])[0]
                info = audio_info(path)
                if info.samplerate > 0 and info.frames < declared:
                    raise _truncated(path, declared / info.samplerate, info.frames / info.samplerate)
                return


def _check_flac(path: Path) -> None:
    info = audio_info(path)
    decoded = 0
    try:
        for block in sf.blocks(str(path), blocksize=4096, dtype="float32", always_2d=True):
            decoded += block.shape[0]
    except sf.LibsndfileError as exc:  # "lost sync": the stream stops mid-frame
        if info.frames <= 0:
            raise AudioError(f"{path}: damaged: cannot decode past {decoded / info.samplerate:.2f} s ({exc})") from exc
    if 0 < decoded < info.frames or (info.frames > 0 and decoded == 0):
        raise _truncated(path, info.frames / info.samplerate, decoded / info.samplerate, "decodes to")


def _check_decodes(path: Path) -> None:
    # -v error prints only real decode errors (CRC mismatch, invalid data); ffmpeg still exits 0 on some.
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "null", "-"]
    result = subprocess.run(cmd, capture_output=True, check=False)
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip()
             for line in result.stderr.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("Last message repeated")]
    if result.returncode != 0 or lines:
        reason = lines[0] if lines else f"ffmpeg exit code {result.returncode}"
        raise AudioError(f"{path}: damaged or not readable audio: decoding it fails ({reason}); "
                         f"copy or export it again")


def stream_blocks(path: str | os.PathLike, block_frames: int) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks of a file libsndfile can read, so long files never sit in memory."""
    try:
        for block in sf.blocks(str(path), blocksize=block_frames, dtype="float32", always_2d=True):
            yield to_mono(block)
    except sf.LibsndfileError as exc:
        raise AudioError(f"{path}: cannot decode ({exc})") from exc


def decode_with_ffmpeg(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decode any format ffmpeg knows to float32 mono at ``sample_rate``."""
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1",
           "-ar", str(sample_rate), "-"]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
        raise AudioError(f"{path}: ffmpeg could not decode it ({reason[0]})")
    return np.frombuffer(result.stdout, dtype="<f4").astype(np.float32)


def convert_to_wav(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE) -> None:
    """Convert any file ffmpeg can decode to mono PCM_16 WAV at ``sample_rate``, atomically.

    ``-map_metadata -1`` and ``-bitexact`` keep encoder tags out so the same input gives the same bytes.
    """
    with atomic_path(dst) as tmp:
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(src), "-vn", "-ac", "1",
               "-ar", str(sample_rate), "-c:a", "pcm_s16le", "-map_metadata", "-1", "-fflags", "+bitexact",
               "-flags:a", "+bitexact", "-f", "wav", str(tmp)]
        result = subprocess.run(cmd, capture_output=True, check=False)
        if result.returncode != 0:
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            raise AudioError(f"{src}: ffmpeg could not convert it ({lines[-1] if lines else 'unknown error'})")
        if sf.info(str(tmp)).frames == 0:
            raise AudioError(f"{src}: decoded to zero samples")


def save_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write float audio as PCM_16 WAV atomically, clipped to [-1, 1] (PCM_16 has no headroom)."""
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: refusing to write non-finite samples")
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")


def rms_db(audio: np.ndarray, eps: float = 1e-10) -> float:
    """RMS level in dBFS (a full-scale sine reads about -3 dB)."""
    if audio.size == 0:
        return -200.0
    return float(10.0 * np.log10(np.mean(np.square(audio, dtype=np.float64)) + eps))
