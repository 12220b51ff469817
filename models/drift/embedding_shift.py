"""Embeddings: a Hotelling-style test of the window's mean projection against the training mean."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.drift.signal import Signal
from models.drift.window import WindowTest, window_threshold

WINDOW, EVERY = 200, 10  # messages in the window; checked every this many


@dataclass
class EmbeddingShift(WindowTest):
    """Is the window's mean projection far from the reference mean?

    ``n (m - mu)^T P (m - mu)`` with the reference precision ``P`` of the projection.

    >>> det = EmbeddingShift(threshold=3.0, window=2, every=1, mean=np.zeros(1), precision=np.eye(1))
    >>> det.update(Signal(0.0, 0.9, 0, (1.0,))), det.update(Signal(0.0, 0.9, 0, (2.0,)))
    (False, True)
    >>> det.statistic
    4.5
    """

    mean: np.ndarray = field(default_factory=lambda: np.zeros(1))
    precision: np.ndarray = field(default_factory=lambda: np.eye(1))
    window: int = WINDOW
    every: int = EVERY
    name: str = "embedding_shift"

    def _value(self, sig: Signal) -> list[float]:
        return list(sig.projection)

    def _stat(self, values: list[Any]) -> float:
        d = np.asarray(values, dtype=np.float64).mean(axis=0) - self.mean
        return float(len(values) * d @ self.precision @ d)


def embedding_moments(projections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision (inverse covariance, lightly regularised) of reference projections.

    >>> mean, precision = embedding_moments(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
    >>> mean.tolist(), precision.round(3).tolist()
    ([1.0, 1.0], [[0.75, 0.0], [0.0, 0.75]])
    """
    P = np.asarray(projections, dtype=np.float64)
    return P.mean(axis=0), np.linalg.inv(np.cov(P, rowvar=False) + 1e-6 * np.eye(P.shape[1]))


def calibrate_embedding_shift(
    projections: np.ndarray,
    ert: float,
    window: int = WINDOW,
    every: int = EVERY,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, precision, threshold)``: moments of ``projections`` (held-out in-distribution
    texts), and a threshold from bootstrap streams of them, each measured against the moments of
    its own bootstrap resample (so the threshold covers their estimation error, as
    ``calibrate_cusum`` does)."""
    P = np.asarray(projections, dtype=np.float64)
    mean, precision = embedding_moments(P)

    def window_stats(rng: np.random.Generator, steps: int, ends: np.ndarray) -> np.ndarray:
        own_mean, own_precision = embedding_moments(P[rng.integers(0, len(P), size=len(P))])
        draws = P[rng.integers(0, len(P), size=steps)]
        cum = np.vstack([np.zeros(P.shape[1]), draws.cumsum(axis=0)])
        d = (cum[ends] - cum[ends - window]) / window - own_mean
        return window * np.einsum("ij,jk,ik->i", d, own_precision, d)

    return mean, precision, window_threshold(ert, window, every, seed, window_stats)
