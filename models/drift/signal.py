"""What a detector sees of one scored message, what every detector offers, and threshold search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


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
    for _ in range(steps):
        mid = (lo + hi) / 2
        if alarm_rate(mid) > 1.0 / ert:
            lo = mid
        else:
            hi = mid
    return hi
