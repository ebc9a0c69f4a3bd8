"""The one place that reads, writes, decodes and resamples audio.

Contract: float32 mono arrays at the pipeline's ``sample_rate`` (default 16000), peak-safe in [-1, 1].
"""

from __future__ import annotations

import os
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

    Formats libsndfile cannot read (mp3 on old builds, m4a, webm) are decoded with ffmpeg.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception:
        sr = sample_rate or DEFAULT_SAMPLE_RATE
        return decode_with_ffmpeg(path, sr), sr
    audio = to_mono(audio)
    if sample_rate is not None and sr != sample_rate:
        audio, sr = resample(audio, sr, sample_rate), sample_rate
    return audio, sr


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
