"""Predicted labels: a G-test of the window's label mix against the training mix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamscore.models.drift.signal import Signal
from streamscore.models.drift.window import WindowTest, window_threshold

WINDOW, EVERY = 500, 25  # messages in the window; checked every this many


@dataclass
class LabelShift(WindowTest):
    """G-test of the predicted-label counts in the window against the reference label mix.

    When to choose it: a label test over a fixed window of messages, easy to read and to explain
    (``train --drift-label-test window``); slower than :class:`LabelMix` on the same shift.
    Method: the G-test (the log-likelihood ratio test of Wilks 1938, Ann. Math. Statist. 9) of the
    window's label counts against the reference prior.

    >>> det = LabelShift(threshold=10.0, window=4, every=2, prior=np.array([0.5, 0.5]))
    >>> [det.update(Signal(0.0, 0.9, 1, ())) for _ in range(4)]
    [False, False, False, False]
    >>> round(det.statistic, 2)
    5.55
    """

    prior: np.ndarray = field(default_factory=lambda: np.ones(1))
    window: int = WINDOW
    every: int = EVERY
    name: str = "label_shift"

    def _value(self, sig: Signal) -> int:
        return sig.label

    def _stat(self, values: list[Any]) -> float:
        counts = np.bincount(np.asarray(values, dtype=np.int64), minlength=len(self.prior))
        return float(g_statistic(counts[None, :], self.prior)[0])


def g_statistic(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``2 Σ o log(o / e)`` per row of ``counts`` against ``prior`` (already smoothed, sums to 1)."""
    n = counts.sum(axis=1, keepdims=True)
    expected = n * prior[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log(counts / expected), 0.0)
    return 2.0 * terms.sum(axis=1)


def label_prior(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """The label mix of ``labels``, with half a count added to each label so none is impossible.

    >>> label_prior(np.array([0, 0, 1]), 3).round(3).tolist()
    [0.556, 0.333, 0.111]
    """
    labels = np.asarray(labels, dtype=np.int64)
    return (np.bincount(labels, minlength=n_labels) + 0.5) / (len(labels) + 0.5 * n_labels)


def calibrate_label_shift(
    labels: np.ndarray,
    n_labels: int,
    ert: float,
    window: int = WINDOW,
    every: int = EVERY,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """``(prior, threshold)``: the label mix of ``labels`` (predicted labels of held-out
    in-distribution texts), and a threshold from bootstrap streams of them, each tested against
    the mix of its own bootstrap resample (so the threshold covers the error of a prior counted
    on a few hundred texts, as ``calibrate_cusum`` does for its moments)."""
    labels = np.asarray(labels, dtype=np.int64)
    prior = label_prior(labels, n_labels)

    def window_stats(rng: np.random.Generator, steps: int, ends: np.ndarray) -> np.ndarray:
        own_prior = label_prior(rng.choice(labels, size=len(labels)), n_labels)
        cum = np.zeros((steps + 1, n_labels), dtype=np.int32)
        np.add.at(cum[1:], (np.arange(steps), rng.choice(labels, size=steps)), 1)
        cum = cum.cumsum(axis=0)
        return g_statistic(cum[ends] - cum[ends - window], own_prior)

    return prior, window_threshold(ert, window, every, seed, window_stats)
