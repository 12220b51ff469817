"""Confidence: River's Page-Hinkley test on ``1 - confidence``, the model growing less sure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streamscore.models.drift import river_state
from streamscore.models.drift.signal import Signal, bisect_threshold

DELTA, MIN_INSTANCES = 0.005, 100
ALPHA = 1 - 0.0001  # River's PageHinkley default forgetting factor, which ConfidenceDrop keeps


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
    stream = x.tolist()
    return bisect_threshold(
        lambda threshold: page_hinkley_alarms(stream, threshold, delta, min_instances) / len(stream),
        ert,
        0.1,
        500.0,
        12,
    )


def page_hinkley_alarms(
    x: list[float], threshold: float, delta: float = DELTA, min_instances: int = MIN_INSTANCES
) -> int:
    """How often River's ``PageHinkley`` (mode "up", restarting after each alarm) alarms on ``x``.

    Its arithmetic step for step, without a method call per value: calibration runs it over
    millions of values, about eight times faster than River's own object would.

    >>> page_hinkley_alarms([0.1] * 200 + [0.6] * 50, threshold=2.0, min_instances=10)
    1
    """
    alpha = ALPHA
    alarms, n, mean, total, lowest, alarmed = 0, 0.0, 0.0, 0.0, float("inf"), False
    for v in x:
        if alarmed:  # River resets the detector on the update after an alarm
            n, mean, total, lowest, alarmed = 0.0, 0.0, 0.0, float("inf"), False
        n += 1.0
        mean += (1.0 / n) * (v - mean)
        total = alpha * total + (v - mean) - delta
        if total < lowest:
            lowest = total
        if n >= min_instances:
            alarmed = total - lowest > threshold
            alarms += alarmed
    return alarms
