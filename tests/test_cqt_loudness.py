"""Numbers checks for the framing convention, the log-CQT (+ Griffin-Lim) and A-weighted loudness.

The alignment section uses :func:`click_signal` / :func:`peak_frame` / :func:`interpolated_peak`: every
frame-based feature must put an event at sample ``s`` in frame ``round(s / hop)``. The pitch estimator's
part (a tone burst, whose onset must land in the same frame) can be added next to the click tests
with the same helpers and constants.
"""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest

from timbrelab import f0track
from timbrelab.dsp import cqt, framing, loudness
from timbrelab.errors import ConfigError

SR = 16000
CQT_HOP = cqt.DEFAULT_HOP_LENGTH  # 256
FRAME_HOP = 64                    # the model's frame hop; loudness and f0 run at this rate
HOP_RATIO = CQT_HOP // FRAME_HOP


def sine(freq_hz: float, n_samples: int = SR, amplitude: float = 0.5, sr: int = SR) -> np.ndarray:
    """(n_samples,) float32 ``amplitude * sin(2 pi f t)``."""
    return (amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n_samples) / sr)).astype(np.float32)


def click_signal(n_samples: int, at_sample: int, amplitude: float = 1.0) -> np.ndarray:
    """(n_samples,) float32 silence with one unit impulse at ``at_sample``: the alignment probe."""
    x = np.zeros(n_samples, dtype=np.float32)
    x[at_sample] = amplitude
    return x


def peak_frame(per_frame: np.ndarray) -> int:
    """Index of the largest value of a (frames,) curve."""
    return int(np.argmax(per_frame))


def interpolated_peak(per_frame: np.ndarray) -> float:
    """Sub-frame peak position (frames) by a parabola through the peak and its neighbours."""
    k = peak_frame(per_frame)
    a, b, c = (float(v) for v in per_frame[k - 1:k + 2])
    return k + 0.5 * (a - c) / (a - 2 * b + c)


def broadband_db(log_cqt_frames: np.ndarray) -> np.ndarray:
    """(n_bins, frames) log-CQT -> (frames,) total CQT energy in dB."""
    return 10 * np.log10(np.sum(np.exp(2.0 * log_cqt_frames.astype(np.float64)), axis=0))


# --- framing -------------------------------------------------------------------------------------

def test_framing_convention():
    assert [framing.n_frames(n, 64) for n in (0, 1, 63, 64, 65, 127, 128, 16000)] == [1, 1, 1, 2, 2, 2, 3, 251]
    assert f0track.n_frames is framing.n_frames  # still importable from f0track
    np.testing.assert_allclose(framing.frame_times(4, 256, 16000), [0.0, 0.016, 0.032, 0.048])
    assert framing.check_hop_ratio(256, 64) == 4
    assert framing.check_hop_ratio(64, 64) == 1
    with pytest.raises(ConfigError, match=r"features\.cqt\.hop_length \(250\) must be a multiple of "
                                          r"features\.frame_hop \(64\)"):
        framing.check_hop_ratio(250, 64)
    with pytest.raises(ConfigError, match=r"features\.frame_hop \(0\)"):
        framing.check_hop_ratio(256, 0)
    with pytest.raises(ConfigError, match=r"features\.cqt\.hop_length \(32\)"):
        framing.check_hop_ratio(32, 64)


@pytest.mark.parametrize("n", [1, 100, 255, 256, 257, 4095, 4096, 4097, 16001])
@pytest.mark.parametrize("n_bins, bins_per_octave, hop", [(156, 24, 256), (48, 12, 256), (36, 12, 64)])
def test_frame_counts_follow_the_convention(n, n_bins, bins_per_octave, hop):
    # (48, 12) and (36, 12) make librosa decimate early, where it returns an extra trailing frame for
    # some n (e.g. 17 instead of 16 at n=4095): log_cqt must still give exactly 1 + n // hop.
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    spec = cqt.log_cqt(x, SR, hop_length=hop, n_bins=n_bins, bins_per_octave=bins_per_octave)
    assert spec.shape == (n_bins, 1 + n // hop) and spec.dtype == np.float32
    assert np.all(np.isfinite(spec))
    loud = loudness.a_weighted_loudness(x, SR, FRAME_HOP)
    assert loud.shape == (1 + n // FRAME_HOP,) and loud.dtype == np.float32


# --- CQT -----------------------------------------------------------------------------------------

def test_cqt_limits_and_defaults():
    # librosa's Nyquist criterion at 16 kHz from C2: the exact largest n_bins.
    assert {bpo: cqt.max_n_bins(SR, bins_per_octave=bpo) for bpo in (12, 24, 36)} == {12: 83, 24: 166, 36: 249}
    freqs = cqt.cqt_frequencies()
    assert freqs.shape == (156,)
    assert freqs[0] == pytest.approx(librosa.note_to_hz("C2"), rel=1e-5)
    assert freqs[-1] == pytest.approx(5751.3, abs=0.1)  # > 6 x A5 (880 Hz): cello overtones
    assert cqt.top_filter_cutoff_hz() == pytest.approx(5875.9, abs=0.1)
    cqt.check_cqt_config(SR, CQT_HOP, cqt.C2_HZ, 24, 156)  # the defaults pass


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large for input signal:UserWarning")
@pytest.mark.parametrize("bins_per_octave, limit", [(12, 83), (24, 166), (36, 249)])
def test_check_cqt_config_rejects_bins_past_nyquist_exactly_where_librosa_does(bins_per_octave, limit):
    x = np.zeros(2048, dtype=np.float32)
    cqt.check_cqt_config(SR, 256, cqt.C2_HZ, bins_per_octave, limit)
    librosa.cqt(x, sr=SR, hop_length=256, fmin=cqt.C2_HZ, n_bins=limit, bins_per_octave=bins_per_octave)
    with pytest.raises(ConfigError, match=rf"features\.cqt\.n_bins \({limit + 1}\) .*past Nyquist "
                                          rf"\(8000 Hz at features\.sample_rate 16000\).*at most {limit} bins fit"):
        cqt.check_cqt_config(SR, 256, cqt.C2_HZ, bins_per_octave, limit + 1)
    with pytest.raises(librosa.ParameterError, match="Nyquist"):
        librosa.cqt(x, sr=SR, hop_length=256, fmin=cqt.C2_HZ, n_bins=limit + 1, bins_per_octave=bins_per_octave)
    with pytest.raises(ConfigError, match=r"features\.cqt\.n_bins"):  # log_cqt checks before librosa
        cqt.log_cqt(x, SR, n_bins=limit + 1, bins_per_octave=bins_per_octave)


def test_check_cqt_config_rejects_bad_hop_and_values():
    # 156 bins at 24 bpo = 7 octave bands: hop must be a multiple of 2**6 = 64.
    cqt.check_cqt_config(SR, 64, cqt.C2_HZ, 24, 156)
    with pytest.raises(ConfigError, match=r"features\.cqt\.hop_length \(96\) must be a multiple of "
                                          r"2\*\*6 = 64.*try features\.cqt\.hop_length: 128"):
        cqt.check_cqt_config(SR, 96, cqt.C2_HZ, 24, 156)
    cqt.check_cqt_config(SR, 96, cqt.C2_HZ, 24, 144)  # 6 bands: 32 divides 96
    with pytest.raises(ConfigError, match=r"features\.cqt\.hop_length \(0\)"):
        cqt.check_cqt_config(SR, 0, cqt.C2_HZ, 24, 156)
    with pytest.raises(ConfigError, match=r"features\.cqt\.fmin_hz \(-1\.0\)"):
        cqt.check_cqt_config(SR, 256, -1.0, 24, 156)
    with pytest.raises(ConfigError, match=r"features\.cqt\.bins_per_octave \(24\.0\)"):
        cqt.check_cqt_config(SR, 256, cqt.C2_HZ, 24.0, 156)
    with pytest.raises(ConfigError, match=r"features\.sample_rate \(0\)"):
        cqt.check_cqt_config(0, 256, cqt.C2_HZ, 24, 156)
    with pytest.raises(ConfigError, match=r"features\.cqt\.n_bins \(1\) must be at least 2"):
        cqt.check_cqt_config(SR, 256, cqt.C2_HZ, 24, 1)
    with pytest.raises(ConfigError, match=r"features\.cqt\.log_floor"):
        cqt.log_cqt(np.zeros(512, np.float32), SR, log_floor=0.0)


@pytest.mark.parametrize("freq_hz", [cqt.C2_HZ, 220.0, 440.0, 1000.0, 3000.0])
def test_sine_lands_in_its_cqt_bin(freq_hz):
    spec = cqt.log_cqt(sine(freq_hz), SR)
    freqs = cqt.cqt_frequencies()
    middle = spec[:, spec.shape[1] // 2]
    k = int(np.argmax(middle))
    assert abs(24 * math.log2(freqs[k] / freq_hz)) <= 0.5  # within half a bin
    # librosa's scaling: |C| ~ (amplitude / 2) * sqrt(filter length) at the bin centre.
    if abs(24 * math.log2(freqs[k] / freq_hz)) < 1e-3:
        lengths, _ = librosa.filters.wavelet_lengths(freqs=freqs, sr=SR)
        assert math.exp(middle[k]) == pytest.approx(0.25 * math.sqrt(lengths[k]), rel=0.05)


def test_log_cqt_is_deterministic_and_floored():
    x = np.random.default_rng(1).standard_normal(SR // 2).astype(np.float32)
    a, b = cqt.log_cqt(x, SR), cqt.log_cqt(x.copy(), SR)
    assert np.array_equal(a, b)
    silence = cqt.log_cqt(np.zeros(SR // 4, np.float32), SR)
    np.testing.assert_allclose(silence, math.log(cqt.DEFAULT_LOG_FLOOR), atol=1e-6)


def test_griffinlim_recovers_a_sine():
    n = 5000  # not a multiple of the hop
    spec = cqt.log_cqt(sine(440.0, n), SR)
    y = cqt.griffinlim(spec, SR, n)
    assert y.shape == (n,) and y.dtype == np.float32
    padded = 8 * n
    mag = np.abs(np.fft.rfft(y * np.hanning(n), n=padded))
    assert np.argmax(mag) * SR / padded == pytest.approx(440.0, abs=2.0)
    assert np.sqrt(np.mean(y[n // 4:-n // 4] ** 2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.3)
    assert np.array_equal(y, cqt.griffinlim(spec, SR, n))                    # seeded: deterministic
    assert not np.array_equal(y, cqt.griffinlim(spec, SR, n, n_iter=2, seed=1))
    with pytest.raises(ValueError, match=rf"shape \(156, {2 + n // CQT_HOP}\)"):
        cqt.griffinlim(spec, SR, n + CQT_HOP)


# --- loudness ------------------------------------------------------------------------------------

def _interior(values: np.ndarray, hop: int, n_fft: int) -> np.ndarray:
    edge = n_fft // hop + 1
    return values[edge:-edge]


@pytest.mark.parametrize("sr, n_fft", [(16000, 2048), (44100, 1024), (22050, 4096)])
def test_full_scale_1khz_sine_reads_the_reference(sr, n_fft):
    loud = loudness.a_weighted_loudness(sine(1000.0, sr, amplitude=1.0, sr=sr), sr, FRAME_HOP, n_fft=n_fft)
    inner = _interior(loud, FRAME_HOP, n_fft)
    assert loudness.FULL_SCALE_1KHZ_SINE_DB == pytest.approx(-3.0103, abs=1e-4)
    np.testing.assert_allclose(inner, -3.0100, atol=0.01)  # -3.0103 + A(1 kHz) = +0.0003 dB


def test_loudness_level_and_a_weighting_differences():
    ref = _interior(loudness.a_weighted_loudness(sine(1000.0, amplitude=0.5), SR, FRAME_HOP), FRAME_HOP, 2048)
    quiet = _interior(loudness.a_weighted_loudness(sine(1000.0, amplitude=0.25), SR, FRAME_HOP), FRAME_HOP, 2048)
    low = _interior(loudness.a_weighted_loudness(sine(100.0, amplitude=0.5), SR, FRAME_HOP), FRAME_HOP, 2048)
    np.testing.assert_allclose(ref - quiet, 20 * math.log10(2), atol=0.5)  # 6.02 dB
    np.testing.assert_allclose(ref - low, 19.14, atol=1.0)                   # A(1 kHz) - A(100 Hz)
    a_100 = float(librosa.A_weighting(100.0))
    np.testing.assert_allclose(low, 20 * math.log10(0.5) - 3.0103 + a_100, atol=0.05)


def test_silence_reads_the_floor():
    zeros = np.zeros(3000, np.float32)
    assert np.all(loudness.a_weighted_loudness(zeros, SR, FRAME_HOP) == np.float32(-80.0))
    assert np.all(loudness.a_weighted_loudness(zeros, SR, FRAME_HOP, floor_db=-60.0) == np.float32(-60.0))


def test_loudness_matches_a_librosa_stft_reference_and_is_deterministic(monkeypatch):
    x = np.random.default_rng(2).standard_normal(SR // 2 + 37).astype(np.float32) * 0.1
    loud = loudness.a_weighted_loudness(x, SR, FRAME_HOP)
    assert np.array_equal(loud, loudness.a_weighted_loudness(x.copy(), SR, FRAME_HOP))
    # Same numbers from librosa's centred, zero-padded STFT (the documented formula, written out).
    n_fft = 2048
    spec = librosa.stft(x.astype(np.float64), n_fft=n_fft, hop_length=FRAME_HOP, center=True, pad_mode="constant")
    window = np.hanning(n_fft + 1)[:-1]
    c = np.full(n_fft // 2 + 1, 2.0)
    c[[0, -1]] = 1.0
    freqs = librosa.fft_frequencies(sr=SR, n_fft=n_fft)
    with np.errstate(divide="ignore"):
        a_db = librosa.A_weighting(freqs)
    power = (c * 10 ** (a_db / 10)) @ (np.abs(spec) ** 2) / (n_fft * np.sum(window ** 2))
    np.testing.assert_allclose(loud, np.maximum(10 * np.log10(power), -80.0), atol=1e-3)
    # Block size (memory bound for long files) does not change the numbers.
    monkeypatch.setattr(loudness, "_FRAMES_PER_BLOCK_ELEMENTS", 7 * n_fft)
    np.testing.assert_allclose(loudness.a_weighted_loudness(x, SR, FRAME_HOP), loud, atol=1e-5)


# --- alignment: a click lands in the same frame in every feature -------------------------------------
# s / CQT_HOP and s / FRAME_HOP are kept away from .5 so "the nearest frame" is unambiguous.

CLICK_SAMPLES = [8000, 8130, 12345, 4200]


@pytest.fixture(scope="module")
def click_features():
    """{s: (broadband CQT dB per CQT frame, log-CQT, loudness dB per model frame)} for each click."""
    out = {}
    for s in CLICK_SAMPLES:
        x = click_signal(SR, s)
        spec = cqt.log_cqt(x, SR, hop_length=CQT_HOP)
        out[s] = (broadband_db(spec), spec, loudness.a_weighted_loudness(x, SR, FRAME_HOP))
    return out


@pytest.mark.parametrize("s", CLICK_SAMPLES)
def test_click_lands_in_the_same_frame_in_cqt_and_loudness(s, click_features):
    energy, spec, loud = click_features[s]
    ratio = framing.check_hop_ratio(CQT_HOP, FRAME_HOP)
    cqt_frame, loud_frame = peak_frame(energy), peak_frame(loud)
    assert cqt_frame == round(s / CQT_HOP)
    assert loud_frame == round(s / FRAME_HOP)
    # Every band peaks there too, from the 8472-sample C2 filter to the 96-sample top one.
    assert {peak_frame(spec[k]) for k in (0, 40, 80, 120, 155)} == {cqt_frame}
    # Through the hop ratio: integer frames agree up to rounding (ratio / 2 model frames) ...
    assert abs(cqt_frame * ratio - loud_frame) <= ratio // 2
    # ... and the sub-frame peak times agree within one model frame.
    t_cqt = interpolated_peak(energy) * CQT_HOP
    t_loud = interpolated_peak(loud) * FRAME_HOP
    assert abs(t_loud - s) < 1.0
    assert abs(t_cqt - t_loud) < FRAME_HOP
