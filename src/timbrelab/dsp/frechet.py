"""The Fréchet distance between Gaussians fitted to two sets of embeddings, and its floor (two halves of one
set). Pure numpy/scipy: the evaluation scores systems with it (:mod:`timbrelab.evaluation.metrics`) and training
selects a CycleGAN checkpoint with it on hand-made CQT profiles (:mod:`timbrelab.training.cyclegan`)."""

from __future__ import annotations

import numpy as np
import scipy.linalg

FRECHET_EPS = 1e-6         # added to the covariance diagonals when their product has no usable square root


def as_embeddings(name: str, x: np.ndarray) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{name} must be embeddings of shape (N >= 2, D), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values")
    return array


def _regularised(cov_a: np.ndarray, cov_b: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Both covariances, with ``eps`` added to both diagonals if either is singular (else unchanged).

    The offset goes into every term of the distance, not only the square root, so two sets with equal
    covariances still read exactly their mean gap.
    """
    dim = cov_a.shape[0]
    if min(np.linalg.matrix_rank(cov_a), np.linalg.matrix_rank(cov_b)) < dim:
        offset = eps * np.eye(dim)
        return cov_a + offset, cov_b + offset
    return cov_a, cov_b


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """``trace(sqrtm(cov_a @ cov_b))``, real part: a product of two PSD matrices has real, non-negative
    eigenvalues, so imaginary parts are rounding."""
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(root)):
        raise FloatingPointError("frechet_distance: sqrtm of the covariance product is not finite")
    return float(np.real(np.trace(root)))


def frechet_distance(a: np.ndarray, b: np.ndarray, *, eps: float = FRECHET_EPS) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings (N_a, D) and (N_b, D).

    ``|mu_a - mu_b|**2 + trace(S_a + S_b - 2 sqrtm(S_a S_b))`` with sample means and covariances: the
    *squared* 2-Wasserstein distance, reported squared as FID/FAD do, so a pure mean shift of ``d`` with
    equal covariances reads ``|d|**2``. Lower is better, 0 for identical statistics (clamped at 0
    against rounding). When a covariance is singular (N <= D, a constant dimension) ``eps`` is added to
    both diagonals (in every term); the square root's real part is taken.

    This is an in-house embedding distance (the timbre classifier's frame embeddings), **not** FAD: it is
    not computed on VGGish embeddings, so its values are comparable only within this project, next to
    :func:`frechet_floor`. It is biased upward for small sets: compare sets of similar sizes.
    """
    x, y = as_embeddings("a", a), as_embeddings("b", b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embeddings differ in dimension: {x.shape[1]} and {y.shape[1]}")
    mean_gap = x.mean(axis=0) - y.mean(axis=0)
    cov_x, cov_y = _regularised(np.atleast_2d(np.cov(x, rowvar=False)),
                                np.atleast_2d(np.cov(y, rowvar=False)), eps)
    value = (float(mean_gap @ mean_gap) + float(np.trace(cov_x)) + float(np.trace(cov_y))
             - 2.0 * _trace_sqrt_product(cov_x, cov_y))
    return max(value, 0.0)


def frechet_floor(embeddings: np.ndarray, seed: int = 0, *, eps: float = FRECHET_EPS) -> float:
    """:func:`frechet_distance` between two disjoint random halves (N // 2 each) of one set (N, D).

    What the distance reads when both sides come from the same distribution (sampling noise and the
    small-set bias): a system's distance to the real target clips means something only next to the
    floor of those clips. Deterministic for a seed.
    """
    x = as_embeddings("embeddings", embeddings)
    if x.shape[0] < 4:
        raise ValueError(f"frechet_floor needs at least 4 embeddings (two halves of >= 2), got {x.shape[0]}")
    order = np.random.default_rng(seed).permutation(x.shape[0])
    half = x.shape[0] // 2
    return frechet_distance(x[order[:half]], x[order[half:2 * half]], eps=eps)
