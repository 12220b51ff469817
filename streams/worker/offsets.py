"""Which input offsets are safe to commit: every message below them has its outputs confirmed.

The worker takes messages from a partition in offset order but confirms them a micro-batch at a
time, several batches in flight. An offset is safe to commit (the position a restarted worker
resumes from) only when every message before it on its partition is confirmed; a confirmed
batch behind an unconfirmed one moves nothing. At-least-once acknowledges the confirmed events
to Faust, which commits the same positions; a transaction per micro-batch would hand
:meth:`OffsetTracker.committable` to ``send_offsets_to_transaction`` instead.

>>> t = OffsetTracker()
>>> t.take([(0, 10), (0, 11), (1, 5)])
>>> t.take([(0, 12)])
>>> t.confirm([(0, 12)])  # confirmed, but 10 and 11 are still in flight
>>> t.committable()
{0: 10, 1: 5}
>>> t.confirm([(0, 10), (0, 11), (1, 5)])
>>> t.committable(), t.in_flight()
({0: 13, 1: 6}, 0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

Position = tuple[int, int]
"""(partition, offset) of one input message."""


@dataclass
class _Partition:
    pending: dict[int, None] = field(default_factory=dict)  # taken, not confirmed; in offset order
    next: int = 0  # one past the highest offset confirmed


@dataclass
class OffsetTracker:
    """Offsets taken and confirmed per input partition of one topic."""

    partitions: dict[int, _Partition] = field(default_factory=dict)

    def take(self, positions: Iterable[Position]) -> None:
        """Messages handed to the pipeline, in the order their partitions gave them."""
        for partition, offset in positions:
            self.partitions.setdefault(partition, _Partition()).pending[offset] = None

    def confirm(self, positions: Iterable[Position]) -> None:
        """Messages whose outputs the broker has confirmed."""
        for partition, offset in positions:
            part = self.partitions[partition]
            part.pending.pop(offset, None)
            part.next = max(part.next, offset + 1)

    def committable(self) -> dict[int, int]:
        """Per partition: the offset to commit, below which everything is confirmed."""
        return {p: next(iter(part.pending), part.next) for p, part in self.partitions.items()}

    def position(self, partition: int) -> int | None:
        """One past the last offset confirmed on ``partition`` (for lag); None before the first."""
        part = self.partitions.get(partition)
        return part.next if part is not None and part.next else None

    def in_flight(self) -> int:
        return sum(len(part.pending) for part in self.partitions.values())
