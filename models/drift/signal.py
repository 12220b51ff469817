"""What a detector sees of one scored message, what every detector offers, and threshold search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Signal:
    """What the drift agent sees of one scored message."""

    ood_score: float
    confidence: float
    label: int  # index into the model's labels
    projection: tuple[float, ...]  # low-dimensional view of the embedding


class Detector(Protocol):
    """One online test: ``update`` says whether this signal raised an alarm."""

    name: str

    def update(self, sig: Signal) -> bool: ...

    @property
    def threshold(self) -> float: ...

    @property
    def statistic(self) -> float: ...

    @property
    def span(self) -> int: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


def bisect_threshold(
    alarm_rate: Callable[[float], float], ert: float, lo: float, hi: float, steps: int
) -> float:
    """The lowest threshold (to bisection precision) whose simulated alarm rate is at most ``1/ert``.

    >>> round(bisect_threshold(lambda h: 1.0 / (1.0 + h), 100.0, 0.0, 1000.0, 40), 3)
    99.0
    """
    return bisect_thresholds(lambda hs: np.array([alarm_rate(h) for h in hs]), ert, lo, hi, steps, depth=1)


def bisect_thresholds(
    alarm_rates: Callable[[np.ndarray], np.ndarray],
    ert: float,
    lo: float,
    hi: float,
    steps: int,
    depth: int = 3,
) -> float:
    """The lowest threshold whose alarm rate is at most ``1/ert``, ``steps`` bisection steps from
    ``lo``-``hi``, ``depth`` steps a pass: ``alarm_rates`` takes every threshold those steps could
    try (2**depth - 1 of them) at once. A vectorised simulation pays numpy's overhead per step
    once for all of them: 7 thresholds cost 1.5 times one, so three steps a pass take half the
    time of one at a time.

    >>> rates = lambda hs: 1.0 / (1.0 + hs)
    >>> one_at_a_time = bisect_thresholds(rates, 100.0, 0.0, 1000.0, 30, depth=1)
    >>> bisect_thresholds(rates, 100.0, 0.0, 1000.0, 30) == one_at_a_time
    True
    """
    done = 0
    while done < steps:
        levels = min(depth, steps - done)
        # The tree of the midpoints these levels could visit, children of node i at 2i+1 (the
        # lower half) and 2i+2 (the upper), each computed as a step at a time computes it.
        bounds = [(lo, hi)]
        for i in range(2 ** (levels - 1) - 1):
            a, b = bounds[i]
            mid = (a + b) / 2
            bounds += [(a, mid), (mid, b)]
        mids = [(a + b) / 2 for a, b in bounds]
        rates = alarm_rates(np.array(mids))
        node = 0
        for _ in range(levels):
            if rates[node] > 1.0 / ert:
                lo, node = mids[node], 2 * node + 2
            else:
                hi, node = mids[node], 2 * node + 1
        done += levels
    return hi
