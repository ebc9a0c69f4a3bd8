"""f0 estimation (timbrelab.dsp.pitch): accuracy with numbers, the frame grid, the unvoiced contract.

Every test runs both estimators unless it says why not. pYIN runs at about real time, so its clips are
short (0.5-1.5 s); the whole file takes ~30 s.
"""

from __future__ import annotations

import numpy as np
import pytest

from timbrelab.dsp import pitch
from timbrelab.dsp.pitch import ESTIMATORS, VOICED_THRESHOLD, estimate_f0, latency_samples
from timbrelab.errors import AudioError, ConfigError

SR = 16000
BOTH = sorted(ESTIMATORS)


def tone(f0_per_sample: np.ndarray, sample_rate: int = SR, harmonics: int = 1, amp: float = 0.5) -> np.ndarray:
    """Phase accumulation from a per-sample f0 (n + 1 values) -> n samples; partials k at 1/k, peak ``amp``."""
    phase = 2 * np.pi * np.concatenate(([0.0], np.cumsum(f0_per_sample[:-1]) / sample_rate))
    audio = sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))
    return (amp * audio / np.abs(audio).max())[:-1].astype(np.float32)


def constant(f: float, seconds: float, sample_rate: int = SR, **kw) -> np.ndarray:
    return tone(np.full(round(seconds * sample_rate) + 1, f), sample_rate, **kw)


def cents(a, b) -> np.ndarray:
    return 1200 * np.log2(np.asarray(a, np.float64) / np.asarray(b, np.float64))


def check_contract(f0: np.ndarray, conf: np.ndarray, n: int, hop: int, fmin: float = 50.0, fmax: float = 2000.0):
    assert f0.shape == conf.shape == (1 + n // hop,)
    assert f0.dtype == conf.dtype == np.float32
    assert np.all(np.isfinite(f0)) and np.all(f0 >= fmin) and np.all(f0 <= fmax)
    assert np.all(conf >= 0) and np.all(conf <= 1)


@pytest.mark.parametrize("estimator", BOTH)
def test_glide_220_to_440_is_tracked_within_20_cents(estimator):
    n = int(1.5 * SR)
    truth = 220.0 * 2.0 ** np.linspace(0.0, 1.0, n + 1)   # one octave up, exponential in time
    hop = 64
    f0, conf = estimate_f0(tone(truth), SR, hop, estimator=estimator)
    check_contract(f0, conf, n, hop)
    frames = np.arange(f0.size) * hop
    inner = (frames >= 0.05 * SR) & (frames <= n - 0.05 * SR)
    error = np.abs(cents(f0, truth[frames]))[inner]
    assert np.mean(error <= 20) >= 0.95, np.percentile(error, [50, 95, 100])
    assert np.median(error) < 10


@pytest.mark.parametrize("estimator", BOTH)
def test_16k_and_44k1_give_the_same_track(estimator):
    """Same 10 ms grid (hop 160 at 16 kHz, 441 at 44.1 kHz): the resampling path changes nothing that matters."""
    a_f0, a_conf = estimate_f0(constant(330.0, 1.0, 16000), 16000, 160, estimator=estimator)
    b_f0, b_conf = estimate_f0(constant(330.0, 1.0, 44100), 44100, 441, estimator=estimator)
    assert a_f0.shape == b_f0.shape == (101,)
    assert np.abs(cents(a_f0, b_f0)).max() < 2.0
    assert np.abs(a_conf - b_conf).max() < 0.05
    inner = slice(5, -5)
    assert np.abs(cents(a_f0[inner], 330.0)).max() < 20


@pytest.mark.parametrize("estimator", BOTH)
@pytest.mark.parametrize("midi", [36, 48, 60, 67])
def test_soundfont_cello_note_within_50_cents_of_its_pitch(estimator, midi):
    from timbrelab.data.soundfont import render_note

    audio = render_note(42, midi, 100, SR, 0.6, 0.6)
    hop = 128
    f0, conf = estimate_f0(audio, SR, hop, estimator=estimator)
    check_contract(f0, conf, audio.size, hop)
    times = np.arange(f0.size) * hop / SR
    held = (times >= 0.05) & (times <= 0.55)
    error = np.abs(cents(f0[held], 440.0 * 2 ** ((midi - 69) / 12)))
    assert np.mean(error <= 50) >= 0.95, (np.median(error), error.max())
    if estimator == "swift" or midi >= 43:
        # pYIN's voiced probability stays below 0.5 on this cello under ~MIDI 42 (its pitch is right).
        assert np.mean(conf[held] >= VOICED_THRESHOLD) >= 0.9


@pytest.mark.xfail(strict=True, reason="known: swift reads the soundfont cello's C5 (MIDI 72) an octave up on "
                                      "about half its frames (pyin is right); see the benchmark")
def test_swift_soundfont_cello_c5_known_octave_error():
    from timbrelab.data.soundfont import render_note

    audio = render_note(42, 72, 100, SR, 0.6, 0.6)
    f0, _ = estimate_f0(audio, SR, 128, estimator="swift")
    held = slice(7, 68)
    assert np.mean(np.abs(cents(f0[held], 440.0 * 2 ** (3 / 12))) <= 50) >= 0.95


@pytest.mark.parametrize("estimator", BOTH)
@pytest.mark.parametrize("kind", ["zeros", "faint noise"])
def test_silence_has_low_confidence_and_a_plausible_f0(estimator, kind):
    n = SR
    audio = np.zeros(n, np.float32) if kind == "zeros" else \
        np.random.default_rng(0).normal(0.0, 1e-4, n).astype(np.float32)
    f0, conf = estimate_f0(audio, SR, 64, estimator=estimator)
    check_contract(f0, conf, n, 64)
    assert np.mean(conf < 0.2) >= 0.95
    assert np.all(f0 > 0)
    if kind == "zeros":  # not one trusted frame: one constant value, never 0 Hz
        assert np.unique(f0).size == 1


@pytest.mark.parametrize("estimator", BOTH)
def test_staccato_gap_is_unvoiced_and_its_f0_bridges_the_neighbours(estimator):
    """Tone (220 Hz), 300 ms of silence, tone (330 Hz); 6 harmonics so both estimators call the tones voiced."""
    a, b = constant(220.0, 0.3, harmonics=6), constant(330.0, 0.3, harmonics=6)
    gap = np.zeros(int(0.3 * SR), np.float32)
    audio = np.concatenate([a, gap, b])
    hop = 64
    f0, conf = estimate_f0(audio, SR, hop, estimator=estimator)
    check_contract(f0, conf, audio.size, hop)
    frames = np.arange(f0.size) * hop
    start, stop = a.size, a.size + gap.size
    inside_gap = (frames >= start + 0.06 * SR) & (frames <= stop - 0.06 * SR)
    first_tone = (frames >= 0.06 * SR) & (frames <= start - 0.06 * SR)
    second_tone = (frames >= stop + 0.06 * SR) & (frames <= audio.size - 0.06 * SR)
    assert np.all(conf[inside_gap] < 0.2)
    assert np.all(conf[first_tone] >= VOICED_THRESHOLD) and np.all(conf[second_tone] >= VOICED_THRESHOLD)
    whole_gap = (frames >= start) & (frames < stop)
    assert np.all(f0[whole_gap] >= 220.0 * 2 ** (-30 / 1200)) and np.all(f0[whole_gap] <= 330.0 * 2 ** (30 / 1200))
    assert np.abs(cents(f0[first_tone], 220.0)).max() < 20 and np.abs(cents(f0[second_tone], 330.0)).max() < 20


def burst(start: int, harmonics: int, n: int = 9600) -> np.ndarray:
    audio = np.zeros(n, np.float32)
    audio[start:] = constant(440.0, (n - start) / SR, harmonics=harmonics)[: n - start]
    return audio


@pytest.mark.parametrize("estimator", BOTH)
@pytest.mark.parametrize("start", [4000, 4133, 4321])
def test_tone_burst_onset_lands_within_two_frames(estimator, start):
    """The f0 part of "a click lands in the same frame": confidence rises within +-2 frames (hop 64) of the onset.

    The burst is a 440 Hz tone with 6 harmonics and a hard onset. (On a *pure* sine swift rises 16-19 frames,
    ~70 ms, late: its confidence on pure sines is low and climbs slowly; see the next test.)
    """
    hop = 64
    _, conf = estimate_f0(burst(start, harmonics=6), SR, hop, estimator=estimator)
    rise = int(np.argmax(conf >= VOICED_THRESHOLD))
    assert abs(rise - round(start / hop)) <= 2, (rise, round(start / hop))


@pytest.mark.parametrize("estimator", BOTH)
def test_pure_sine_burst_onset(estimator):
    """pyin is on time on a pure sine too; swift is late but by less than 100 ms (documented, not hidden)."""
    hop, start = 64, 4133
    _, conf = estimate_f0(burst(start, harmonics=1), SR, hop, estimator=estimator)
    late = int(np.argmax(conf >= VOICED_THRESHOLD)) - round(start / hop)
    if estimator == "pyin":
        assert abs(late) <= 2
    else:
        assert 0 <= late <= 25


@pytest.mark.parametrize("estimator", BOTH)
def test_vibrato_is_followed_on_time(estimator):
    """6 Hz, 100 cent vibrato on a 220 Hz harmonic tone: a misplaced frame time (half a swift hop = 8 ms)
    would cost ~20 cents RMS here. swift is interpolated from 256-sample frames; pyin's 64 ms window
    smooths the vibrato a little."""
    n = SR
    t = np.arange(n + 1) / SR
    truth = 220.0 * 2 ** (100 * np.sin(2 * np.pi * 6 * t) / 1200)
    hop = 64
    f0, _ = estimate_f0(tone(truth, harmonics=6), SR, hop, estimator=estimator)
    frames = np.arange(f0.size) * hop
    inner = (frames >= 0.1 * SR) & (frames <= n - 0.1 * SR)
    rms = np.sqrt(np.mean(cents(f0, truth[frames])[inner] ** 2))
    assert rms < {"swift": 6.0, "pyin": 20.0}[estimator], rms


@pytest.mark.parametrize("estimator", BOTH)
@pytest.mark.parametrize(("n", "hop", "sample_rate"), [(641, 64, SR), (8000, 64, SR), (8063, 64, SR),
                                                       (8064, 64, SR), (8000, 100, SR), (8000, 256, SR),
                                                       (11025, 100, 22050), (4410, 441, 44100)])
def test_output_shape_is_one_plus_n_over_hop(estimator, n, hop, sample_rate):
    audio = constant(300.0, n / sample_rate, sample_rate)[:n]
    assert audio.size == n
    f0, conf = estimate_f0(audio, sample_rate, hop, estimator=estimator)
    check_contract(f0, conf, n, hop)


@pytest.mark.parametrize("estimator", BOTH)
def test_same_input_twice_gives_identical_output(estimator):
    audio = np.concatenate([constant(250.0, 0.4, harmonics=4), np.zeros(3200, np.float32),
                            constant(180.0, 0.3)])
    first = estimate_f0(audio, SR, 64, estimator=estimator)
    second = estimate_f0(audio.copy(), SR, 64, estimator=estimator)
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()


def test_unknown_estimator_names_the_choices():
    with pytest.raises(ConfigError) as info:
        estimate_f0(constant(200.0, 0.2), SR, 64, estimator="crepe")
    message = str(info.value)
    assert "'crepe'" in message and "'swift'" in message and "'pyin'" in message
    with pytest.raises(ConfigError, match="crepe"):
        latency_samples("crepe")


@pytest.mark.parametrize("estimator", BOTH)
def test_empty_short_and_bad_audio_raise_audio_error(estimator):
    with pytest.raises(AudioError, match="0 samples"):
        estimate_f0(np.zeros(0, np.float32), SR, 64, estimator=estimator)
    with pytest.raises(AudioError, match="at least 640"):   # two periods of 50 Hz at 16 kHz
        estimate_f0(np.zeros(639, np.float32), SR, 64, estimator=estimator)
    with pytest.raises(AudioError, match="mono"):
        estimate_f0(np.zeros((SR, 2), np.float32), SR, 64, estimator=estimator)
    bad = constant(200.0, 0.2)
    bad[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        estimate_f0(bad, SR, 64, estimator=estimator)


def test_impossible_settings_raise_config_error():
    audio = constant(200.0, 0.2)
    with pytest.raises(ConfigError, match="hop"):
        estimate_f0(audio, SR, 0)
    with pytest.raises(ConfigError, match="covers"):
        estimate_f0(audio, SR, 64, estimator="swift", fmin_hz=30.0)
    with pytest.raises(ConfigError, match="fmin_hz"):
        estimate_f0(audio, SR, 64, fmin_hz=500.0, fmax_hz=400.0)
    with pytest.raises(ConfigError, match="Nyquist"):
        estimate_f0(constant(200.0, 0.2, 3000), 3000, 64, fmax_hz=2000.0)


def test_registry_and_latency_match_swift_f0():
    import swift_f0
    from swift_f0 import core

    assert set(ESTIMATORS) == {"swift", "pyin"}
    assert ESTIMATORS["swift"].band == (swift_f0.FMIN, swift_f0.FMAX)
    assert swift_f0.SAMPLE_RATE == pitch.INTERNAL_RATE and core.HOP == pitch.SWIFT_HOP
    # PitchStream emits frame k once (k + 1 + LOOKAHEAD_FRAMES) hops exist: 11 hops after its centre.
    assert pitch.SWIFT_LOOKAHEAD == (core.LOOKAHEAD_FRAMES + 1) * core.HOP == 2816
    assert latency_samples("swift") == 2816 + 256
    assert latency_samples("swift", 48000) == 3 * (2816 + 256)
    assert latency_samples("pyin") is None


def test_swift_detector_is_created_once():
    pitch._swift_detector.cache_clear()
    estimate_f0(constant(200.0, 0.1), SR, 64, estimator="swift")
    first = pitch._swift_detector()
    estimate_f0(constant(300.0, 0.1), SR, 64, estimator="swift")
    assert pitch._swift_detector() is first
    assert pitch._swift_detector.cache_info().misses == 1
