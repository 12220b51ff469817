"""What the sliding-window tests share: the window, its checks, and threshold simulation."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamscore.models.drift.signal import Signal, bisect_threshold

SIM_STREAMS = 40  # simulated stationary streams per calibration


@dataclass
class WindowTest:
    """A two-sample-style test of the last ``window`` messages against the training reference.

    Checked every ``every`` messages once the window is full; after an alarm the window starts
    empty, so one burst raises one alarm. Subclasses define ``_value(sig)`` and ``_stat(window)``.
    """

    threshold: float
    window: int = 500
    every: int = 25
    seen: int = 0
    last: float = 0.0
    buffer: deque = field(default_factory=deque)
    name: str = "window_test"

    def _value(self, sig: Signal) -> Any:
        raise NotImplementedError

    def _stat(self, values: list[Any]) -> float:
        raise NotImplementedError

    def update(self, sig: Signal) -> bool:
        self.buffer.append(self._value(sig))
        if len(self.buffer) > self.window:
            self.buffer.popleft()
        self.seen += 1
        if len(self.buffer) < self.window or self.seen % self.every:
            return False
        self.last = self._stat(list(self.buffer))
        if self.last > self.threshold:
            self.buffer.clear()
            return True
        return False

    @property
    def statistic(self) -> float:
        return self.last

    @property
    def span(self) -> int:
        return self.window

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen, "last": self.last, "buffer": [_plain(v) for v in self.buffer]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.seen, self.last = int(state["seen"]), float(state["last"])
        self.buffer = deque(state["buffer"], maxlen=None)


def _plain(v: Any) -> Any:
    return v.tolist() if isinstance(v, np.ndarray) else v


def _window_alarm_rate(stats: np.ndarray, threshold: float, window: int, every: int) -> float:
    """Alarm rate of a window test from precomputed check statistics (streams × checks)."""
    gap = max(1, window // every)  # after an alarm the window refills before the next check
    alarms = 0
    for row in stats:
        t = 0
        hits = np.flatnonzero(row > threshold)
        for h in hits:
            if h >= t:
                alarms += 1
                t = int(h) + gap
    return alarms / (stats.shape[0] * stats.shape[1] * every)


WindowStats = Callable[[np.random.Generator, int, np.ndarray], np.ndarray]
"""``(rng, steps, ends)`` → the statistic at each check (window ending at ``ends``) of one
simulated stationary stream of ``steps`` messages."""


def window_threshold(ert: float, window: int, every: int, seed: int, window_stats: WindowStats) -> float:
    """Threshold of a window test so that simulated stationary streams alarm once per ``ert``."""
    rng = np.random.default_rng(seed)
    steps = int(max(2_000, 30 * ert / SIM_STREAMS))
    ends = np.arange(window, steps + 1, every)
    stats = np.stack([window_stats(rng, steps, ends) for _ in range(SIM_STREAMS)])
    return bisect_threshold(
        lambda th: _window_alarm_rate(stats, th, window, every),
        ert,
        float(stats.min()),
        float(stats.max()) * 4 + 1.0,
        40,
    )
