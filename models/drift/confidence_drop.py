"""Confidence: River's Page-Hinkley test on ``1 - confidence``, the model growing less sure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streamscore.models.drift import river_state
from streamscore.models.drift.signal import Signal, bisect_threshold

DELTA, MIN_INSTANCES = 0.005, 100


@dataclass
class ConfidenceDrop:
    """Page-Hinkley learns the stream's own mean, so it reports a change in the stream, not a
    distance to the reference; it complements the reference-based tests.

    When to choose it: to see the model grow less sure while the texts do not look foreign (new
    wording of known intents), including a slow slide that no fixed reference would date.
    Method: the Page-Hinkley test (Page 1954; Hinkley 1971, Biometrika 58) of a fall in the mean
    confidence, as River's ``drift.PageHinkley`` runs it.

    >>> det = ConfidenceDrop(threshold=2.0, min_instances=10)
    >>> any(det.update(Signal(0.0, 0.95, 0, ())) for _ in range(200))
    False
    >>> any(det.update(Signal(0.0, 0.40, 0, ())) for _ in range(50))
    True
    """

    threshold: float
    delta: float = DELTA
    min_instances: int = MIN_INSTANCES
    name: str = "confidence_drop"
    ph: Any = None

    def __post_init__(self) -> None:
        from river.drift import PageHinkley

        if self.ph is None:
            self.ph = PageHinkley(
                min_instances=self.min_instances, delta=self.delta, threshold=self.threshold, mode="up"
            )

    def update(self, sig: Signal) -> bool:
        self.ph.update(1.0 - sig.confidence)
        return bool(self.ph.drift_detected)

    @property
    def statistic(self) -> float:
        return river_state.statistic(self.ph)

    @property
    def span(self) -> int:
        return river_state.count(self.ph)

    def state(self) -> dict[str, Any]:
        return river_state.state(self.ph)

    def load_state(self, state: dict[str, Any]) -> None:
        river_state.load(self.ph, state)


def calibrate_confidence_drop(
    confidence: np.ndarray,
    ert: float,
    delta: float = DELTA,
    min_instances: int = MIN_INSTANCES,
    seed: int = 0,
) -> float:
    """Page-Hinkley threshold so that bootstrap streams of ``confidence`` alarm once per ``ert``."""
    rng = np.random.default_rng(seed)
    x = 1.0 - rng.choice(np.asarray(confidence, dtype=np.float64), size=int(max(20_000, 8 * ert)))

    def alarm_rate(threshold: float) -> float:
        det = ConfidenceDrop(threshold=threshold, delta=delta, min_instances=min_instances)
        alarms = 0
        for v in x:
            det.ph.update(v)
            alarms += det.ph.drift_detected
        return alarms / len(x)

    return bisect_threshold(alarm_rate, ert, 0.1, 500.0, 12)
