"""A-weighted loudness per frame (DDSP-style), on the framing of :mod:`timbrelab.dsp.framing`.

For frame ``i`` (centred on sample ``i * hop``, zero padding outside the signal), with a periodic Hann
window ``w`` of length ``n_fft`` and the one-sided spectrum ``X_k`` of the windowed frame::

    P_k = c_k * |X_k|**2 / (n_fft * sum(w**2))          c_k = 1 at DC and Nyquist, else 2
    loudness_db = max(10 * log10(sum_k P_k * 10**(A(f_k) / 10)), floor_db)

``A(f)`` is ``librosa.A_weighting`` (0.0003 dB at 1 kHz, -19.14 dB at 100 Hz). By Parseval, ``sum_k P_k``
is the window-weighted mean square of the frame, so this is DDSP's "A-weighted power averaged over
frequency" with the average scaled by the bin count, which makes it an absolute level in dB re full scale
that does not depend on ``n_fft`` or the sample rate:

**a full-scale (peak 1.0) 1 kHz sine reads 10*log10(1/2) + A(1 kHz) = -3.01 dB**; a sine of peak ``a``
at ``f`` reads ``20*log10(a) - 3.01 + A(f)``; silence reads ``floor_db``.
"""

from __future__ import annotations

import math

import librosa
import numpy as np
import scipy.fft
import scipy.signal

from timbrelab.dsp.framing import n_frames
from timbrelab.errors import ConfigError

DEFAULT_N_FFT = 2048
DEFAULT_FLOOR_DB = -80.0
FULL_SCALE_1KHZ_SINE_DB = 10.0 * math.log10(0.5)  # + A(1 kHz) = 0.0003 dB: -3.0100 dB

_FRAMES_PER_BLOCK_ELEMENTS = 1 << 18  # samples per batched FFT: bounded memory, cache-sized (3x faster than 1 << 22)


def a_weights(n_fft: int, sample_rate: int) -> np.ndarray:
    """(1 + n_fft // 2,) float64 linear power weights ``10 ** (A(f_k) / 10)`` of the rFFT bins (DC ~ 1e-8)."""
    freqs = np.fft.rfftfreq(int(n_fft), d=1.0 / float(sample_rate))
    with np.errstate(divide="ignore"):
        a_db = librosa.A_weighting(freqs, min_db=-80.0)
    return np.power(10.0, np.asarray(a_db, dtype=np.float64) / 10.0)


def bin_power_weights(n_fft: int, sample_rate: int, window: np.ndarray) -> np.ndarray:
    """(1 + n_fft // 2,) float64: A-weights times the one-sided Parseval factor ``c_k / (n_fft * sum(w**2))``."""
    one_sided = np.full(n_fft // 2 + 1, 2.0)
    one_sided[0] = 1.0
    if n_fft % 2 == 0:
        one_sided[-1] = 1.0
    return a_weights(n_fft, sample_rate) * one_sided / (n_fft * float(np.sum(window.astype(np.float64) ** 2)))


def a_weighted_loudness(audio: np.ndarray, sample_rate: int, hop: int, *, n_fft: int = DEFAULT_N_FFT,
                        floor_db: float = DEFAULT_FLOOR_DB) -> np.ndarray:
    """(n,) audio -> (1 + n // hop,) float32 A-weighted loudness in dB re full scale (see the module doc).

    Frames are computed in blocks (bounded memory for long files), each block a single batched rFFT:
    the result does not depend on the block size.
    """
    for name, value in (("hop", hop), ("n_fft", n_fft), ("sample_rate", sample_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ConfigError(f"a_weighted_loudness: {name} ({value!r}) must be a positive integer")
    if n_fft < 2:
        raise ConfigError(f"a_weighted_loudness: n_fft ({n_fft}) must be at least 2")
    if not (isinstance(floor_db, (int, float, np.floating, np.integer)) and math.isfinite(floor_db)):
        raise ConfigError(f"a_weighted_loudness: floor_db ({floor_db!r}) must be a finite number of dB")
    y = np.asarray(audio, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"a_weighted_loudness expects mono audio of shape (n,), got {y.shape}")

    total = n_frames(y.size, hop)
    half = n_fft // 2
    # Centred frames: frame i covers padded[i*hop : i*hop + n_fft], i.e. samples i*hop - half ... .
    padded = np.zeros(total * hop - hop + n_fft, dtype=np.float32)
    length = min(y.size, padded.size - half)
    padded[half:half + length] = y[:length]
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # (total, n_fft) view
    window = scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    weights = bin_power_weights(n_fft, sample_rate, window)

    power = np.empty(total, dtype=np.float64)
    block = max(1, _FRAMES_PER_BLOCK_ELEMENTS // n_fft)
    for start in range(0, total, block):
        spec = scipy.fft.rfft(frames[start:start + block] * window, axis=-1)  # (block, 1 + n_fft // 2)
        power[start:start + block] = (spec.real ** 2 + spec.imag ** 2) @ weights
    floor_power = 10.0 ** (float(floor_db) / 10.0)
    return (10.0 * np.log10(np.maximum(power, floor_power))).astype(np.float32)
