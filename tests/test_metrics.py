"""Evaluation metrics check numbers: known detunes, octave errors, gains, mean shifts, known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from timbrelab.dsp.loudness import a_weighted_loudness
from timbrelab.dsp.pitch import VOICED_THRESHOLD, estimate_f0
from timbrelab.dsp.spectral import MultiScaleSpectralLoss
from timbrelab.evaluation import metrics as m
from timbrelab.f0track import write_f0_csv

SR, HOP = 16000, 64


def glide_f0(n: int) -> np.ndarray:
    """(n + 1,) per-sample true f0: 220 Hz held, a 7-semitone raised-cosine glide over 1-2 s, then held."""
    t = np.arange(n + 1) / SR
    semitones = 7.0 * (0.5 - 0.5 * np.cos(np.pi * np.clip(t - 1.0, 0.0, 1.0)))
    return 220.0 * 2.0 ** (semitones / 12.0)


def render(f0: np.ndarray) -> np.ndarray:
    """Per-sample f0 (n + 1,) -> (n,) float32 tone with 3 harmonics at 1/k (phase accumulation)."""
    phase = 2 * np.pi * np.concatenate(([0.0], np.cumsum(f0[:-1]) / SR))
    return (0.3 * sum(np.sin(k * phase) / k for k in (1, 2, 3)))[:-1].astype(np.float32)


def frames(per_sample: np.ndarray, n: int) -> np.ndarray:
    return per_sample[: n + 1 : HOP]


@pytest.fixture(scope="module")
def truth():
    """A 3 s glide: its (n + 1,) per-sample f0 and its true track on the frame grid (all voiced)."""
    n = 3 * SR
    f0 = glide_f0(n)
    return n, f0, frames(f0, n), np.ones(1 + n // HOP, dtype=bool)


def estimated(f0_per_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The output f0 as an evaluation would see it: rendered, then estimated (swift, frame hop 64)."""
    f0, confidence = estimate_f0(render(f0_per_sample), SR, HOP)
    return f0, confidence >= VOICED_THRESHOLD


# ------------------------------------------------------------------------------------------- pitch

@pytest.mark.parametrize("detune, expected", [(0.0, 1.0), (30.0, 1.0), (-30.0, 1.0), (49.0, 1.0),
                                              (51.0, 0.0), (70.0, 0.0), (-70.0, 0.0)])
def test_exact_detune_against_the_50_cent_tolerance(truth, detune, expected):
    _, _, ref, voiced = truth
    scores = m.pitch_accuracy(ref, voiced, ref * 2 ** (detune / 1200))
    assert scores.raw_pitch == expected and scores.raw_chroma == expected
    assert scores.n_voiced == ref.size and scores.n_pitch_correct == round(expected * ref.size)
    error = m.f0_error_cents(ref, voiced, ref * 2 ** (detune / 1200))
    assert error.median_abs_cents == pytest.approx(abs(detune), abs=1e-6)
    assert error.mean_abs_cents == pytest.approx(abs(detune), abs=1e-6)


@pytest.mark.parametrize("spread", [60.0, 100.0, 200.0])
def test_accuracy_is_the_fraction_of_frames_within_50_cents(truth, spread):
    _, _, ref, voiced = truth
    detune = np.random.default_rng(int(spread)).uniform(-spread, spread, size=ref.size)
    scores = m.pitch_accuracy(ref, voiced, ref * 2 ** (detune / 1200))
    assert scores.raw_pitch == pytest.approx(np.mean(np.abs(detune) < 50), abs=1e-12)
    assert scores.raw_pitch == pytest.approx(50 / spread, abs=0.06)  # uniform: P(|d| < 50) = 50 / spread


def test_only_reference_voiced_frames_count_and_a_zero_output_is_wrong(truth):
    _, _, ref, _ = truth
    voiced = np.arange(ref.size) < 500
    out = ref.copy()
    out[400:] = 0.0          # 100 voiced frames without an output pitch, the rest unvoiced in the reference
    out[:50] *= 1.5          # 50 voiced frames a fifth off
    scores = m.pitch_accuracy(ref, voiced, out)
    assert (scores.n_voiced, scores.n_pitch_correct) == (500, 350)
    assert scores.raw_pitch == pytest.approx(0.7)
    error = m.f0_error_cents(ref, voiced, out)   # 400 frames voiced in both, 50 of them at 702 cents
    assert error.n_frames == 400 and error.median_abs_cents == pytest.approx(0.0, abs=1e-9)
    assert error.mean_abs_cents == pytest.approx(50 * 1200 * math.log2(1.5) / 400)
    none = m.pitch_accuracy(ref, np.zeros(ref.size, bool), ref)
    assert none.n_voiced == 0 and math.isnan(none.raw_pitch)


def test_estimated_detuned_outputs_lose_accuracy_past_the_tolerance(truth):
    _, f0, ref, voiced = truth
    results = {}
    for detune in (0.0, 30.0, 70.0):
        out, out_voiced = estimated(f0 * 2 ** (detune / 1200))
        results[detune] = (m.pitch_accuracy(ref, voiced, out), m.f0_error_cents(ref, voiced, out, out_voiced))
    assert results[0.0][0].raw_pitch >= 0.98 and results[30.0][0].raw_pitch >= 0.97
    assert results[70.0][0].raw_pitch <= 0.03
    # The identity row measures the estimator: a few cents; a 30-cent detune reads about 30.
    assert results[0.0][1].median_abs_cents < 10
    assert results[30.0][1].median_abs_cents == pytest.approx(30, abs=5)
    assert results[70.0][1].median_abs_cents == pytest.approx(70, abs=10)


def test_estimated_accuracy_follows_the_fraction_of_frames_detuned_within_50_cents(truth):
    n, f0, ref, voiced = truth
    # A new detune every 200 ms, uniform in +-100 cents: about half the frames within tolerance.
    segment = SR // 5
    detune = np.repeat(np.random.default_rng(7).uniform(-100, 100, size=n // segment + 1), segment)[: n + 1]
    out, _ = estimated(f0 * 2 ** (detune / 1200))
    within = float(np.mean(np.abs(frames(detune, n)) < 50))
    assert 0.3 < within < 0.7
    assert m.pitch_accuracy(ref, voiced, out).raw_pitch == pytest.approx(within, abs=0.05)


@pytest.mark.parametrize("shift", [1, -1])
def test_chroma_forgives_an_octave_raw_pitch_does_not_and_octave_shift_undoes_it(truth, shift):
    _, f0, ref, voiced = truth
    out, _ = estimated(f0 * 2.0 ** shift)
    plain = m.pitch_accuracy(ref, voiced, out)
    assert plain.raw_pitch <= 0.02 and plain.raw_chroma >= 0.98
    undone = m.pitch_accuracy(ref, voiced, out, octave_shift=shift)
    assert undone.raw_pitch >= 0.98
    wrong_way = m.pitch_accuracy(ref, voiced, out, octave_shift=-shift)   # two octaves off
    assert wrong_way.raw_pitch <= 0.02 and wrong_way.raw_chroma >= 0.98
    assert m.f0_error_cents(ref, voiced, out, octave_shift=shift).median_abs_cents < 10


def test_a_fractional_shift_in_octaves():
    ref = np.full(100, 200.0)
    out = ref * 2 ** (-3 / 12)                       # a minor third lower
    assert m.pitch_accuracy(ref, np.ones(100, bool), out).raw_pitch == 0.0
    assert m.pitch_accuracy(ref, np.ones(100, bool), out, octave_shift=-3 / 12).raw_pitch == 1.0


def test_true_track_from_csv_onto_frame_grids(tmp_path):
    times = np.arange(9) * 0.004
    hz = np.array([0, 0, 200, 200, 400, 400, 400, 0, 0], dtype=float)
    write_f0_csv(tmp_path / "a.f0.csv", times, hz, hz > 0)
    same_hz, same_v = m.load_true_f0(tmp_path / "a.f0.csv", np.arange(9) * (64 / 16000))
    np.testing.assert_array_equal(same_v, hz > 0)
    np.testing.assert_array_equal(same_hz, hz)
    # Half-way frames: log-frequency midpoint (a geometric mean); a voicing edge is not voiced.
    mid_hz, mid_v = m.load_true_f0(tmp_path / "a.f0.csv", times[:-1] + 0.002)
    np.testing.assert_array_equal(mid_v, [False, False, True, True, True, True, False, False])
    assert mid_hz[3] == pytest.approx(math.sqrt(200 * 400)) and mid_hz[2] == pytest.approx(200)
    assert np.all(mid_hz[~mid_v] == 0)
    # A coarser grid picks frames exactly; times past the track are unvoiced.
    coarse_hz, coarse_v = m.load_true_f0(tmp_path / "a.f0.csv", np.array([0.008, 0.016, 0.05]))
    np.testing.assert_array_equal(coarse_hz, [200, 400, 0])
    np.testing.assert_array_equal(coarse_v, [True, True, False])


# ----------------------------------------------------------------------------------------- loudness

def test_loudness_of_a_signal_against_itself_6_db_up(truth):
    _, f0, _, _ = truth
    audio = render(f0)
    audio[: SR // 2] = 0.0                       # half a second of silence, left out of the score
    ref = a_weighted_loudness(audio, SR, HOP)
    up = a_weighted_loudness(audio * np.float32(10 ** (6 / 20)), SR, HOP)
    scored = m.loudness_frames(ref)
    assert 0.75 < scored.mean() < 0.9
    assert m.loudness_l1_db(ref, up) == pytest.approx(6.0, abs=1e-3)
    assert m.loudness_correlation(ref, up) == pytest.approx(1.0, abs=1e-6)
    assert m.loudness_l1_db(ref, ref) == 0.0
    # Frames silent in the reference do not count, whatever the output does there.
    noisy = up.copy()
    noisy[~scored] = 0.0
    assert m.loudness_l1_db(ref, noisy) == pytest.approx(6.0, abs=1e-3)


def test_loudness_correlation_follows_dynamics_not_level():
    ref = np.linspace(-40, -10, 200)
    assert m.loudness_correlation(ref, ref[::-1]) == pytest.approx(-1.0)
    assert m.loudness_correlation(ref, ref - 20) == pytest.approx(1.0)
    assert m.loudness_l1_db(ref, ref - 20) == pytest.approx(20.0)
    assert math.isnan(m.loudness_correlation(ref, np.full(200, -30.0)))
    assert math.isnan(m.loudness_l1_db(np.full(10, -80.0), np.zeros(10)))


# ----------------------------------------------------------------------------------- reconstruction

def test_multiscale_spectral_distance_is_the_training_loss():
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(SR // 2)).astype(np.float32)
    assert m.multiscale_spectral_distance(noise, noise) == 0.0
    # A gain of 2 moves every log magnitude by ln 2 (noise is far above the log floor).
    assert m.multiscale_spectral_distance(noise, 2 * noise, mag_weight=0.0) == pytest.approx(math.log(2), rel=1e-4)
    import torch
    expected = float(MultiScaleSpectralLoss()(torch.from_numpy(2 * noise), torch.from_numpy(noise)))
    assert m.multiscale_spectral_distance(noise, 2 * noise) == pytest.approx(expected)
    with pytest.raises(ValueError, match="one length"):
        m.multiscale_spectral_distance(noise, noise[:-1])


def test_log_cqt_l1_reads_a_gain_as_its_log():
    noise = (0.1 * np.random.default_rng(1).standard_normal(SR // 2)).astype(np.float32)
    assert m.log_cqt_l1(noise, noise, SR) == 0.0
    assert m.log_cqt_l1(noise, 2 * noise, SR) == pytest.approx(math.log(2), rel=2e-3)


# ------------------------------------------------------------------------------------------ Fréchet

def test_frechet_distance_is_zero_for_a_set_and_the_mean_gap_squared_for_a_shift():
    x = np.random.default_rng(0).standard_normal((2000, 8)) @ np.diag(np.linspace(0.5, 2, 8))
    assert m.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    direction = np.zeros(8)
    direction[:2] = 0.6, 0.8                      # unit length
    for size in (0.5, 1.0, 2.0, 4.0):
        assert m.frechet_distance(x, x + size * direction) == pytest.approx(size ** 2, rel=1e-6, abs=1e-9)


def test_frechet_distance_sees_a_change_of_spread():
    x = np.random.default_rng(1).standard_normal((4000, 4))
    # Sample stats (mu, S) vs (2 mu, 4 S): |mu|^2 + trace(S + 4S - 2 * 2S) = |mu|^2 + trace(S), about 4.
    mu, cov = x.mean(axis=0), np.cov(x, rowvar=False)
    assert m.frechet_distance(x, 2 * x) == pytest.approx(mu @ mu + np.trace(cov), rel=1e-9)
    assert m.frechet_distance(x, 2 * x) == pytest.approx(4.0, rel=0.05)


def test_frechet_distance_is_safe_on_singular_covariances():
    rng = np.random.default_rng(2)
    few = m.frechet_distance(rng.standard_normal((5, 16)), rng.standard_normal((5, 16)))  # N < D
    assert math.isfinite(few) and few > 0
    x = rng.standard_normal((500, 6))
    x[:, 3] = 1.0                                  # a constant dimension
    assert m.frechet_distance(x, x + 0.5) == pytest.approx(6 * 0.25, rel=1e-9)


def test_frechet_floor_is_small_for_one_distribution_and_deterministic():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((2000, 8))
    floor = m.frechet_floor(real, seed=0)
    assert 0 < floor < 0.1                          # sampling noise of two halves of 1000
    assert m.frechet_floor(real, seed=0) == floor and m.frechet_floor(real, seed=1) != floor
    shifted = m.frechet_distance(real[:1000], rng.standard_normal((1000, 8)) + 0.5)
    assert shifted > 10 * floor                     # a 0.5 shift per dimension: |d|^2 = 2


# ---------------------------------------------------------------------------------------- bootstrap

def test_bootstrap_ci_covers_the_true_mean_about_as_often_as_it_claims():
    rng = np.random.default_rng(4)
    covered = 0
    for trial in range(200):
        mean, lo, hi = m.bootstrap_ci(rng.normal(3.0, 1.0, size=50), seed=trial)
        assert lo <= mean <= hi
        covered += lo <= 3.0 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_ci_narrows_as_one_over_root_n():
    rng = np.random.default_rng(5)
    widths = {}
    for n in (100, 400, 1600):
        _, lo, hi = m.bootstrap_ci(rng.exponential(1.0, size=n))
        widths[n] = hi - lo
    assert widths[100] == pytest.approx(2 * 1.96 / 10, rel=0.25)   # sd 1: 2 * 1.96 * sd / sqrt(n)
    assert widths[100] / widths[400] == pytest.approx(2.0, rel=0.25)
    assert widths[400] / widths[1600] == pytest.approx(2.0, rel=0.25)


def test_bootstrap_is_deterministic_for_a_seed():
    values = np.random.default_rng(6).uniform(size=40)
    assert m.bootstrap_ci(values, seed=3) == m.bootstrap_ci(values, seed=3)
    assert m.bootstrap_ci(values, seed=3) != m.bootstrap_ci(values, seed=4)
    assert m.bootstrap_ci(values, seed=3)[0] == m.bootstrap_ci(values, seed=4)[0] == pytest.approx(values.mean())
    assert m.bootstrap_ci(np.array([0.7])) == (0.7, 0.7, 0.7)


def test_ratio_ci_pools_frames_but_resamples_clips():
    # One long clip right, nine short ones wrong: pooled accuracy 1000/1090, not the per-clip mean 0.1.
    num = np.array([1000.0] + [0.0] * 9)
    den = np.array([1000.0] + [10.0] * 9)
    ratio, lo, hi = m.bootstrap_ratio_ci(num, den)
    assert ratio == pytest.approx(1000 / 1090)
    assert lo < ratio <= hi
    # Equal denominators: the pooled ratio is the mean of per-clip ratios, with the very same resamples.
    acc = np.random.default_rng(8).uniform(size=25)
    pooled = m.bootstrap_ratio_ci(acc * 200, np.full(25, 200.0), seed=5)
    assert pooled == pytest.approx(m.bootstrap_ci(acc, seed=5), rel=1e-12)


def test_ratio_ci_width_is_set_by_the_clips_not_the_frames():
    # Thirty clips of 100 frames, each wholly right or wholly wrong (p = 0.5): the uncertainty is that of
    # 30 coin flips (95 % width 2 * 1.96 * sqrt(0.25 / 30) = 0.36), not of 3000 frames (0.036).
    rng = np.random.default_rng(9)
    widths = []
    for trial in range(40):
        right = rng.random(30) < 0.5
        _, lo, hi = m.bootstrap_ratio_ci(100.0 * right, np.full(30, 100.0), seed=trial)
        widths.append(hi - lo)
    assert np.mean(widths) == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 30), rel=0.15)


def test_pitch_counts_feed_the_pooled_ci(truth):
    _, _, ref, voiced = truth
    rng = np.random.default_rng(10)
    clips = [m.pitch_accuracy(ref[:k], voiced[:k], ref[:k] * 2 ** (rng.normal(0, 50, size=k) / 1200))
             for k in (100, 300, 751)]
    num = [c.n_pitch_correct for c in clips]
    den = [c.n_voiced for c in clips]
    ratio, _, _ = m.bootstrap_ratio_ci(num, den)
    assert ratio == pytest.approx(sum(c.raw_pitch * c.n_voiced for c in clips) / sum(den))
    assert ratio == pytest.approx(0.68, abs=0.05)   # N(0, 50 cents): P(|d| < 50) = 0.683


def test_metrics_are_deterministic(truth):
    _, f0, ref, voiced = truth
    first, second = estimated(f0), estimated(f0)
    np.testing.assert_array_equal(first[0], second[0])
    assert m.pitch_accuracy(ref, voiced, first[0]) == m.pitch_accuracy(ref, voiced, second[0])
    x = np.random.default_rng(11).standard_normal((300, 5))
    assert m.frechet_distance(x, x + 0.1) == m.frechet_distance(x, x + 0.1)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one frame grid"):
        m.pitch_accuracy(np.ones(5), np.ones(5, bool), np.ones(6))
    with pytest.raises(ValueError, match="non-negative"):
        m.pitch_accuracy(np.ones(5), np.ones(5, bool), np.full(5, np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        m.bootstrap_ci(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="dimension"):
        m.frechet_distance(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="every denominator is 0"):
        m.bootstrap_ratio_ci([0, 0], [0, 0])
