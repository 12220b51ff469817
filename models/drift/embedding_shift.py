"""Embeddings: has the distribution of the projections moved, in its centre (a window's mean) or
its spread (each text's distance from the training centre)?"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamscore.models.drift.embedding_spread import EmbeddingSpread, embedding_moments
from streamscore.models.drift.signal import Signal
from streamscore.models.drift.window import WindowTest, window_threshold

WINDOW, EVERY = 200, 10  # messages in the window; checked every this many


@dataclass
class EmbeddingShift:
    """The embedding detector: the window's mean (:class:`EmbeddingCentre`, slow but sees a new
    mix of familiar texts) and each text's distance (:class:`EmbeddingSpread`, fast on texts
    unlike the training ones). Either alarms; its statistic is the larger part's statistic over
    its own threshold, so the threshold is 1. Without a spread (a model trained before
    2026-12-05) it is the centre test alone, with its own statistic and threshold.

    When to choose it: the embedding detector a model ships by default, for a shift of what the
    texts are about whether it comes text by text or as a new mix (``--drift-embedding-test
    centre`` keeps the centre test alone).
    Method: the union of its two parts' alarms, each calibrated at twice the detector's run time
    so their false-alarm rates add up to its share (a Bonferroni split).

    >>> centre = EmbeddingCentre(threshold=3.0, window=2, every=1, mean=np.zeros(1), precision=np.eye(1))
    >>> det = EmbeddingShift(centre)
    >>> det.update(Signal(0.0, 0.9, 0, (1.0,))), det.update(Signal(0.0, 0.9, 0, (2.0,))), det.threshold
    (False, True, 3.0)
    """

    centre: EmbeddingCentre
    spread: EmbeddingSpread | None = None
    span: int = 0
    name: str = "embedding_shift"

    def update(self, sig: Signal) -> bool:
        centre = self.centre.update(sig)
        if self.spread is None:
            self.span = self.centre.span
            return centre
        spread = self.spread.update(sig)
        # The span of the part that alarmed; the spread's while neither did (it reacts first).
        self.span = self.centre.span if centre and not spread else self.spread.span
        return centre or spread

    @property
    def threshold(self) -> float:
        return 1.0 if self.spread is not None else self.centre.threshold

    @property
    def statistic(self) -> float:
        if self.spread is None:
            return self.centre.statistic
        return max(
            self.centre.statistic / self.centre.threshold, self.spread.statistic / self.spread.threshold
        )

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"centre": self.centre.state()}
        if self.spread is not None:
            out["spread"] = self.spread.state()
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        self.centre.load_state(state.get("centre", state))  # before 2026-12-05: the centre's own
        if self.spread is not None and "spread" in state:
            self.spread.load_state(state["spread"])


@dataclass
class EmbeddingCentre(WindowTest):
    """Is the window's mean projection far from the reference mean?

    When to choose it: to see a new mix of familiar texts move the embeddings as a whole, a small
    lasting shift that no single text shows; slower than :class:`EmbeddingSpread`.
    Method: Hotelling's T-squared (Hotelling 1931, Ann. Math. Statist. 2) of the window mean of
    the projections against the reference mean and precision.

    ``n (m - mu)^T P (m - mu)`` with the reference precision ``P`` of the projection.

    >>> det = EmbeddingCentre(threshold=3.0, window=2, every=1, mean=np.zeros(1), precision=np.eye(1))
    >>> det.update(Signal(0.0, 0.9, 0, (1.0,))), det.update(Signal(0.0, 0.9, 0, (2.0,)))
    (False, True)
    >>> det.statistic
    4.5
    """

    mean: np.ndarray = field(default_factory=lambda: np.zeros(1))
    precision: np.ndarray = field(default_factory=lambda: np.eye(1))
    window: int = WINDOW
    every: int = EVERY
    name: str = "embedding_centre"

    def _value(self, sig: Signal) -> list[float]:
        return list(sig.projection)

    def _stat(self, values: list[Any]) -> float:
        d = np.asarray(values, dtype=np.float64).mean(axis=0) - self.mean
        return float(len(values) * d @ self.precision @ d)


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
