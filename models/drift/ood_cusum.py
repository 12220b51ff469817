"""OOD score: a one-sided CUSUM, fast on a rising share of foreign texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streamscore.models.drift.signal import Signal, bisect_thresholds


@dataclass
class OodCusum:
    """Upward CUSUM on the standardised OOD score.

    When to choose it: to see foreign texts arrive; the fastest of the four on an abrupt rise of
    the OOD rate, and it needs only the reference mean and spread of the scores.
    Method: one-sided cumulative sum (CUSUM) of Page (1954), "Continuous inspection schemes",
    Biometrika 41, on clipped z-scores with allowance ``k``.

    ``s = max(0, s + clip(z) - k)``; alarm when ``s > threshold``, then ``s`` restarts at 0.

    >>> det = OodCusum(mean=0.0, std=1.0, threshold=5.0)
    >>> [det.update_value(x) for x in (1.0, 1.0, 6.0)]
    [False, False, True]
    >>> det.statistic, det.s
    (7.25, 0.0)
    """

    mean: float
    std: float
    threshold: float
    k: float = 0.25  # allowance: shifts smaller than k standard deviations are ignored
    clip: float = 6.0  # one extreme text cannot raise an alarm alone
    s: float = 0.0
    last: float = 0.0  # s after the latest update, before a restart: what an alert reports
    run: int = 0  # messages since s was last 0: the span the statistic covers
    span: int = 0
    name: str = "ood_cusum"

    def update_value(self, x: float) -> bool:
        z = min(max((x - self.mean) / self.std, -self.clip), self.clip)
        self.s = self.last = max(0.0, self.s + z - self.k)
        self.span = self.run = self.run + 1 if self.s > 0 else 0
        if self.s > self.threshold:
            self.s, self.run = 0.0, 0
            return True
        return False

    def update(self, sig: Signal) -> bool:
        return self.update_value(sig.ood_score)

    @property
    def statistic(self) -> float:
        return self.last

    def state(self) -> dict[str, Any]:
        return {"s": self.s, "last": self.last, "run": self.run}

    def load_state(self, state: dict[str, Any]) -> None:
        self.s, self.last, self.run = float(state["s"]), float(state["last"]), int(state["run"])


def cusum_alarms(z: np.ndarray, k: float, thresholds: np.ndarray) -> np.ndarray:
    """Alarms (with restart) of a CUSUM run over each row of ``z`` (streams × steps), for each of
    ``thresholds`` at once: the calibration's inner loop, a step at a time across every stream.

    >>> z = np.array([[1.0, 1.0, 6.0, 1.0]])
    >>> cusum_alarms(z, 0.25, np.array([5.0, 1.0])).tolist()
    [1, 2]
    """
    columns = np.ascontiguousarray(z.T)  # a step's values, one per stream, side by side
    hs = np.asarray(thresholds, dtype=np.float64)[:, None]
    s = np.zeros((len(hs), z.shape[0]))
    hit = np.empty(s.shape, dtype=bool)
    counts = np.zeros(s.shape, dtype=np.int64)
    for column in columns:  # in place: numpy's call overhead, not the arithmetic, is the cost
        np.add(s, column, out=s)  # (s + z) - k, in that order: the detector's own arithmetic
        np.subtract(s, k, out=s)
        np.maximum(s, 0.0, out=s)
        np.greater(s, hs, out=hit)
        counts += hit
        np.copyto(s, 0.0, where=hit)
    return counts.sum(axis=1)


def score_moments(reference: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of reference OOD scores: what the CUSUM standardises by.

    >>> score_moments(np.array([1.0, 3.0]))
    (2.0, 1.0)
    """
    reference = np.asarray(reference, dtype=np.float64)
    return float(reference.mean()), float(reference.std() or 1.0)


def calibrate_cusum(
    reference: np.ndarray,
    ert: float,
    k: float = 0.25,
    clip: float = 6.0,
    streams: int = 200,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(mean, std, threshold)``: standardise by ``reference``, and set the threshold so that
    bootstrap streams of ``reference`` alarm once per ``ert``.

    Each simulated stream is standardised by the moments of its own bootstrap resample of the
    reference, not by the reference's: the deployed detector's moments come from a few hundred
    held-out texts and miss the traffic's by about one standard error, and a CUSUM with a small
    allowance ``k`` alarms far more often when its mean sits even a little low. The threshold
    covers that error, in whichever direction it falls.
    """
    mean, std = score_moments(reference)
    x = np.asarray(reference, dtype=np.float64)
    rng = np.random.default_rng(seed)
    resampled = rng.choice(x, size=(streams, len(x)))
    means, stds = resampled.mean(axis=1, keepdims=True), resampled.std(axis=1, keepdims=True) + 1e-12
    steps = int(max(1_000, 100 * ert / streams))  # about 100 alarms expected at the target
    z = np.clip((rng.choice(x, size=(streams, steps)) - means) / stds, -clip, clip)
    return mean, std, bisect_thresholds(lambda hs: cusum_alarms(z, k, hs) / z.size, ert, 0.5, 200.0, 30)
