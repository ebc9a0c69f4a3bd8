"""Log-magnitude constant-Q transform (librosa's multirate CQT), its config check, and Griffin-Lim.

Framing follows :mod:`timbrelab.dsp.framing`: centred frames, frame ``j`` at sample ``j * hop_length``,
``1 + n // hop_length`` frames for ``n`` samples, exactly (librosa can return one extra frame when it
decimates the signal early; :func:`log_cqt` trims to the convention).

Defaults (cello at 16 kHz): 24 bins per octave from C2 (65.406 Hz), 156 bins = 6.5 octaves, so the
top bin is 5751 Hz (its filter reaches 5876 Hz): the cello's range C2..A5 (880 Hz) plus overtones up to
the 6th harmonic of A5. librosa refuses a CQT whose top filter passes Nyquist; at 16 kHz from C2 the
most that fit are 83 / 166 / 249 bins at 12 / 24 / 36 bins per octave (6 11/12 octaves, top bin A#8
at 7459 Hz for 12 bpo; see :func:`max_n_bins`), so the default keeps 10 bins (5 semitones) of margin.
The 156 bins span 7 octave bands of the multirate transform, so ``hop_length`` must be a multiple of
``2**6 = 64`` (:func:`check_cqt_config`).
"""

from __future__ import annotations

import math
import warnings

import librosa
import numpy as np

from timbrelab.dsp.framing import n_frames
from timbrelab.errors import ConfigError

C2_HZ = 65.406
DEFAULT_HOP_LENGTH = 256
DEFAULT_BINS_PER_OCTAVE = 24
DEFAULT_N_BINS = 156
DEFAULT_LOG_FLOOR = 1e-5
DEFAULT_GRIFFINLIM_ITERS = 32

# librosa warns when a decimated octave is shorter than its FFT; the centred, zero-padded frames are
# still right, so the warning is noise for short clips.
_SHORT_SIGNAL_WARNING = r"n_fft=\d+ is too large for input signal of length=\d+"


def cqt_frequencies(*, fmin_hz: float = C2_HZ, bins_per_octave: int = DEFAULT_BINS_PER_OCTAVE,
                    n_bins: int = DEFAULT_N_BINS) -> np.ndarray:
    """(n_bins,) float64 centre frequencies in Hz: ``fmin_hz * 2 ** (k / bins_per_octave)``."""
    return librosa.cqt_frequencies(n_bins=int(n_bins), fmin=float(fmin_hz), bins_per_octave=int(bins_per_octave))


def n_octaves(n_bins: int, bins_per_octave: int) -> int:
    """How many octave bands librosa's multirate CQT splits ``n_bins`` into: ``ceil(n_bins / bpo)``."""
    return math.ceil(int(n_bins) / int(bins_per_octave))


def top_filter_cutoff_hz(*, fmin_hz: float = C2_HZ, bins_per_octave: int = DEFAULT_BINS_PER_OCTAVE,
                         n_bins: int = DEFAULT_N_BINS) -> float:
    """How far up (Hz) the top bin's Hann filter reaches: librosa's own Nyquist criterion.

    This is ``librosa.filters.wavelet_lengths``'s cutoff for the same frequencies, window ("hann"),
    filter_scale (1) and gamma (0) that :func:`librosa.cqt` uses, i.e.
    ``f_top * (1 + 0.5 * window_bandwidth("hann") * alpha)`` with ``alpha`` the relative bandwidth of
    the bins; librosa raises when it exceeds ``sample_rate / 2``. Needs ``n_bins >= 2``.
    """
    freqs = cqt_frequencies(fmin_hz=fmin_hz, bins_per_octave=bins_per_octave, n_bins=n_bins)
    _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=1.0, window="hann", filter_scale=1, gamma=0)
    return float(cutoff)


def max_n_bins(sample_rate: int, *, fmin_hz: float = C2_HZ, bins_per_octave: int = DEFAULT_BINS_PER_OCTAVE) -> int:
    """The largest ``n_bins`` whose top filter stays at or below Nyquist (0 if not even 2 bins fit)."""
    nyquist = float(sample_rate) / 2.0
    bpo = int(bins_per_octave)
    # Closed-form guess, then step to the exact boundary with librosa's criterion.
    ratio = 2.0 ** (1.0 / bpo)
    alpha = (ratio * ratio - 1.0) / (ratio * ratio + 1.0)
    widen = 1.0 + 0.5 * librosa.filters.window_bandwidth("hann") * alpha
    guess = max(2, math.floor(bpo * math.log2(nyquist / (float(fmin_hz) * widen))) + 1)

    def fits(nb: int) -> bool:
        return top_filter_cutoff_hz(fmin_hz=fmin_hz, bins_per_octave=bpo, n_bins=nb) <= nyquist

    if not fits(2):
        return 0
    while not fits(guess):
        guess -= 1
    while fits(guess + 1):
        guess += 1
    return guess


def check_cqt_config(sample_rate: int, hop_length: int, fmin_hz: float, bins_per_octave: int, n_bins: int, *,
                     key_prefix: str = "features.cqt") -> None:
    """ConfigError naming the key (``features.cqt.*``, ``features.sample_rate``) unless this CQT works.

    Checks, in order: types and signs; the top bin's filter at or below Nyquist (librosa's own criterion,
    :func:`top_filter_cutoff_hz`, so this fires before librosa's less specific error); and ``hop_length``
    divisible by ``2 ** (n_octaves - 1)``, so every octave band of the multirate transform is decimated by
    2 with its frames on the same sample grid. (librosa 0.11 itself no longer raises for such a hop: it
    silently stops halving once the hop turns odd, so the lower octaves run at a higher rate with
    proportionally longer filters and FFTs.)
    """
    key = f"{key_prefix}." if key_prefix else ""
    parent = key_prefix.rpartition(".")[0]
    sr_key = f"{parent}.sample_rate" if parent else "sample_rate"  # features.sample_rate
    for name, value in (("hop_length", hop_length), ("bins_per_octave", bins_per_octave), ("n_bins", n_bins)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ConfigError(f"{key}{name} ({value!r}) must be a positive integer")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ConfigError(f"{sr_key} ({sample_rate!r}) must be a positive integer")
    if not (isinstance(fmin_hz, (int, float, np.floating, np.integer)) and math.isfinite(fmin_hz) and fmin_hz > 0):
        raise ConfigError(f"{key}fmin_hz ({fmin_hz!r}) must be a positive number of Hz")
    if n_bins < 2:
        raise ConfigError(f"{key}n_bins ({n_bins}) must be at least 2")

    nyquist = sample_rate / 2.0
    cutoff = top_filter_cutoff_hz(fmin_hz=fmin_hz, bins_per_octave=bins_per_octave, n_bins=n_bins)
    if cutoff > nyquist:
        top = float(cqt_frequencies(fmin_hz=fmin_hz, bins_per_octave=bins_per_octave, n_bins=n_bins)[-1])
        limit = max_n_bins(sample_rate, fmin_hz=fmin_hz, bins_per_octave=bins_per_octave)
        hint = (f"at most {limit} bins fit" if limit >= 2 else f"raise the sample rate or lower {key}fmin_hz")
        raise ConfigError(
            f"{key}n_bins ({n_bins}) puts the top bin at {top:.1f} Hz, whose filter reaches {cutoff:.1f} Hz, "
            f"past Nyquist ({nyquist:g} Hz at {sr_key} {sample_rate}); with {key}fmin_hz {fmin_hz:g} and "
            f"{key}bins_per_octave {bins_per_octave}, {hint}")

    octaves = n_octaves(n_bins, bins_per_octave)
    step = 2 ** (octaves - 1)
    if hop_length % step != 0:
        nearest = max(step, round(hop_length / step) * step)
        raise ConfigError(
            f"{key}hop_length ({hop_length}) must be a multiple of 2**{octaves - 1} = {step}: {key}n_bins "
            f"({n_bins}) at {key}bins_per_octave ({bins_per_octave}) spans {octaves} octave bands, each "
            f"decimated by 2; try {key}hop_length: {nearest}")


def _fit_frames(spec: np.ndarray, num_frames: int) -> np.ndarray:
    """(bins, m) -> (bins, num_frames): drop librosa's extra trailing frame(s) / zero-pad missing ones."""
    if spec.shape[-1] >= num_frames:
        return spec[..., :num_frames]
    pad = np.zeros(spec.shape[:-1] + (num_frames - spec.shape[-1],), dtype=spec.dtype)
    return np.concatenate([spec, pad], axis=-1)


def log_cqt(audio: np.ndarray, sample_rate: int, *, hop_length: int = DEFAULT_HOP_LENGTH, fmin_hz: float = C2_HZ,
            bins_per_octave: int = DEFAULT_BINS_PER_OCTAVE, n_bins: int = DEFAULT_N_BINS,
            log_floor: float = DEFAULT_LOG_FLOOR) -> np.ndarray:
    """(n,) audio -> (n_bins, 1 + n // hop_length) float32 ``log(|CQT| + log_floor)``.

    librosa.cqt with its defaults otherwise (Hann filters, filter_scale 1, L1 norm, ``scale=True``: a
    sine of amplitude ``a`` at bin ``k``'s centre reads ``|C| ~ (a / 2) * sqrt(L_k)``, ``L_k`` the filter
    length in samples, 8472 at C2 and 96 at the default top bin; tuning fixed at 0, no estimation).
    Row ``k`` is at ``cqt_frequencies(...)[k]``; column ``j`` is centred on sample ``j * hop_length``.
    """
    check_cqt_config(sample_rate, hop_length, fmin_hz, bins_per_octave, n_bins)
    if not log_floor > 0:
        raise ConfigError(f"features.cqt.log_floor ({log_floor!r}) must be positive")
    y = np.asarray(audio, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"log_cqt expects non-empty mono audio of shape (n,), got {y.shape}")
    num_frames = n_frames(y.size, hop_length)
    if y.size < hop_length:
        # librosa's early decimation (by up to hop_length) needs that many samples; trailing zeros are what
        # the centred frames' zero padding sees anyway, and the extra frame is trimmed below.
        y = np.concatenate([y, np.zeros(hop_length - y.size, dtype=np.float32)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SHORT_SIGNAL_WARNING, category=UserWarning)
        spec = librosa.cqt(y, sr=sample_rate, hop_length=hop_length, fmin=fmin_hz, n_bins=n_bins,
                           bins_per_octave=bins_per_octave, tuning=0.0)
    mag = _fit_frames(np.abs(spec), num_frames)
    return np.log(mag + np.float32(log_floor)).astype(np.float32)


def griffinlim(log_cqt_frames: np.ndarray, sample_rate: int, n_samples: int, *,
               hop_length: int = DEFAULT_HOP_LENGTH, fmin_hz: float = C2_HZ,
               bins_per_octave: int = DEFAULT_BINS_PER_OCTAVE, n_bins: int = DEFAULT_N_BINS,
               log_floor: float = DEFAULT_LOG_FLOOR, n_iter: int = DEFAULT_GRIFFINLIM_ITERS,
               seed: int = 0) -> np.ndarray:
    """(n_bins, 1 + n_samples // hop_length) log-CQT -> (n_samples,) float32 audio (fast Griffin-Lim).

    Inverts :func:`log_cqt`: magnitude ``max(exp(L) - log_floor, 0)``, then ``librosa.griffinlim_cqt``
    with random initial phases from ``numpy.random.RandomState(seed)``: the same input and seed give
    the same output. Meant for listening checks, not for quality.
    """
    check_cqt_config(sample_rate, hop_length, fmin_hz, bins_per_octave, n_bins)
    frames = np.asarray(log_cqt_frames, dtype=np.float32)
    expected = (int(n_bins), n_frames(n_samples, hop_length))
    if frames.shape != expected:
        raise ValueError(f"griffinlim expects a log-CQT of shape {expected} (n_bins, 1 + n_samples // hop_length) "
                         f"for n_samples={n_samples}, got {frames.shape}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
        raise ConfigError(f"griffinlim n_iter ({n_iter!r}) must be a non-negative integer")
    mag = np.maximum(np.exp(frames) - np.float32(log_floor), np.float32(0.0))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SHORT_SIGNAL_WARNING, category=UserWarning)
        y = librosa.griffinlim_cqt(mag, n_iter=int(n_iter), sr=sample_rate, hop_length=hop_length, fmin=fmin_hz,
                                   bins_per_octave=bins_per_octave, tuning=0.0, length=int(n_samples),
                                   init="random", random_state=int(seed))
    return np.asarray(y, dtype=np.float32)
