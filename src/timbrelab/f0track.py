"""True f0 tracks: the one file format and the one framing convention for frame-based data.

Framing (used by every frame-based feature; defined in :mod:`timbrelab.dsp.framing`): frames are
**centred** (librosa's ``center=True``); frame ``i`` sits at sample ``i * hop``, and ``n`` samples
have ``1 + n // hop`` frames.

File format ``<name>.f0.csv``: header ``time_s,f0_hz,voiced``, one row per frame, written as
``%.6f,%.4f,%d`` so the bytes are the same on every run. ``f0_hz`` is 0.0 wherever ``voiced`` is 0:
models and metrics must use ``voiced`` (never the 0 Hz value) to tell unvoiced frames apart.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from timbrelab.dsp.framing import n_frames  # noqa: F401 - re-exported; the convention lives there
from timbrelab.errors import TimbrelabError
from timbrelab.fsutil import atomic_write_text

F0_SUFFIX = ".f0.csv"
F0_HEADER = "time_s,f0_hz,voiced"


def format_f0_csv(times_s: np.ndarray, f0_hz: np.ndarray, voiced: np.ndarray) -> str:
    """(frames,) arrays -> the file's text; f0 is written as 0.0 where unvoiced."""
    voiced = np.asarray(voiced, dtype=bool)
    f0 = np.where(voiced, np.asarray(f0_hz, dtype=np.float64), 0.0)
    rows = [F0_HEADER]
    rows.extend(f"{t:.6f},{f:.4f},{int(v)}" for t, f, v in zip(np.asarray(times_s).tolist(), f0.tolist(),
                                                               voiced.tolist()))
    return "\n".join(rows) + "\n"


def write_f0_csv(path: str | os.PathLike, times_s: np.ndarray, f0_hz: np.ndarray, voiced: np.ndarray) -> None:
    atomic_write_text(path, format_f0_csv(times_s, f0_hz, voiced))


def read_f0_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times_s float64, f0_hz float64 with 0.0 where unvoiced, voiced bool), each (frames,)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().strip()
            if header.replace(" ", "") != F0_HEADER:
                raise TimbrelabError(f"{path}: expected the header {F0_HEADER!r}, found {header!r}")
            data = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    except FileNotFoundError as exc:
        raise TimbrelabError(f"{path}: no such f0 file") from exc
    except (OSError, ValueError) as exc:
        raise TimbrelabError(f"{path}: not a valid f0 csv ({' '.join(str(exc).split())})") from exc
    if data.size == 0:
        data = np.zeros((0, 3))
    if data.shape[1] != 3:
        raise TimbrelabError(f"{path}: expected 3 columns ({F0_HEADER}), found {data.shape[1]}")
    if not np.all(np.isfinite(data)):
        raise TimbrelabError(f"{path}: non-finite values in the f0 track")
    return data[:, 0], data[:, 1], data[:, 2] > 0.5
