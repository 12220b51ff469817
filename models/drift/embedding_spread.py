"""Embeddings: a two-sided CUSUM on how far each text's projection lies from the training centre."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamscore.models.drift.ood_cusum import cusum_alarms
from streamscore.models.drift.signal import Signal, bisect_thresholds

K = 0.5  # allowance in standard deviations: foreign texts move the distance by about one


@dataclass
class EmbeddingSpread:
    """Are texts nearer to or further from the centre of the training embeddings than they were?

    When to choose it: to see texts unlike the training ones arrive, text by text and fast,
    whatever their labels; it misses a shift that keeps each text's distance.
    Method: a two-sided CUSUM (Page 1954) on each projection's Mahalanobis distance (Mahalanobis
    1936) standardised by the reference distances.

    Each message's Mahalanobis distance ``sqrt((x - mu)^T P (x - mu))`` of its projection,
    standardised by the reference distances, feeds an upward and a downward CUSUM; alarm when
    either passes the threshold, then both restart. Texts unlike the training ones often sit
    nearer the centre of its principal directions (their meaning lies outside them), so the
    downward side matters as much as the upward. Per message, unlike a window mean.

    >>> det = EmbeddingSpread(mean=np.zeros(2), precision=np.eye(2), dist_mean=1.0, dist_std=0.5,
    ...                       threshold=4.0)
    >>> any(det.update(Signal(0.0, 0.9, 0, (x, 0.0))) for x in (1.0, 0.5, 1.5, 1.0) * 50)
    False
    >>> [det.update(Signal(0.0, 0.9, 0, (0.0, 0.0))) for _ in range(4)]
    [False, False, True, False]
    """

    mean: np.ndarray = field(default_factory=lambda: np.zeros(1))
    precision: np.ndarray = field(default_factory=lambda: np.eye(1))
    dist_mean: float = 1.0
    dist_std: float = 1.0
    threshold: float = 10.0
    k: float = K
    clip: float = 6.0
    up: float = 0.0
    down: float = 0.0
    last: float = 0.0
    run: int = 0  # messages since both sides were last 0
    span: int = 0
    name: str = "embedding_spread"

    def update(self, sig: Signal) -> bool:
        d = np.asarray(sig.projection, dtype=np.float64) - self.mean
        z = (float(np.sqrt(max(d @ self.precision @ d, 0.0))) - self.dist_mean) / self.dist_std
        z = min(max(z, -self.clip), self.clip)
        self.up = max(0.0, self.up + z - self.k)
        self.down = max(0.0, self.down - z - self.k)
        self.last = max(self.up, self.down)
        self.span = self.run = self.run + 1 if self.last > 0 else 0
        if self.last > self.threshold:
            self.up = self.down = 0.0
            self.run = 0
            return True
        return False

    @property
    def statistic(self) -> float:
        return self.last

    def state(self) -> dict[str, Any]:
        return {"up": self.up, "down": self.down, "last": self.last, "run": self.run}

    def load_state(self, state: dict[str, Any]) -> None:
        self.up, self.down = float(state["up"]), float(state["down"])
        self.last, self.run = float(state["last"]), int(state["run"])


def distances(projections: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = np.asarray(projections, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def embedding_moments(projections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision (inverse covariance, lightly regularised) of reference projections.

    >>> mean, precision = embedding_moments(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
    >>> mean.tolist(), precision.round(3).tolist()
    ([1.0, 1.0], [[0.75, 0.0], [0.0, 0.75]])
    """
    P = np.asarray(projections, dtype=np.float64)
    return P.mean(axis=0), np.linalg.inv(np.cov(P, rowvar=False) + 1e-6 * np.eye(P.shape[1]))


def calibrate_embedding_spread(
    projections: np.ndarray,
    ert: float,
    k: float = K,
    clip: float = 6.0,
    streams: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference (projection mean and precision, the distances' mean and spread) and a
    threshold from bootstrap streams of ``projections`` (held-out in-distribution texts), each
    standardised by the reference of its own bootstrap resample, as ``calibrate_cusum`` does."""
    P = np.asarray(projections, dtype=np.float64)
    mean, precision = embedding_moments(P)
    dist = distances(P, mean, precision)
    rng = np.random.default_rng(seed)
    steps = int(max(1_000, 30 * ert / streams))  # about 30 alarms expected at the target
    z = np.empty((streams, steps))
    for i in range(streams):
        own = P[rng.integers(0, len(P), size=len(P))]
        own_mean, own_precision = embedding_moments(own)
        own_dist = distances(own, own_mean, own_precision)
        draws = distances(P[rng.integers(0, len(P), size=steps)], own_mean, own_precision)
        z[i] = (draws - own_dist.mean()) / (own_dist.std() + 1e-12)
    z = np.clip(z, -clip, clip)
    both = np.vstack([z, -z])  # the two sides, counted apart (they rarely alarm together)
    threshold = bisect_thresholds(lambda hs: cusum_alarms(both, k, hs) / z.size, ert, 0.5, 100.0, 20)
    return {
        "dist_mean": float(dist.mean()),
        "dist_std": float(dist.std() or 1.0),
        "threshold": threshold,
        "k": k,
    }
