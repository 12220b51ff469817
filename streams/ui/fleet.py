"""What the page shows of the fleet, built from the records of the topics it reads; bounded in memory.

Everything comes from Kafka, not from a worker: the latest ``drift.episodes`` record of each
episode, the dead letters counted by reason with the latest few of each, and samples of the
scored and input topics' offsets (rate, consumer lag, the model versions serving).

>>> view = FleetView()
>>> view.add_episode(b'{"episode_id": "e1", "status": "open", "updated_at": "2026-12-05T10:00:00Z"}')
>>> view.add_dead_letter(b'{"reason": "invalid_json", "value_preview": "<b>"}')
>>> view.add_dead_letter(b'not json')
>>> [e["episode_id"] for e in view.open_episodes()], view.dead_letters["invalid_json"].count, view.unreadable
(['e1'], 1, 1)
>>> view.sample_offsets(0.0, scored_end=100, lag={0: 5})
>>> view.sample_offsets(10.0, scored_end=300, lag={0: 0})
>>> view.scored_rate(), view.total_lag()
(20.0, 0)
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_EPISODES = 200  # kept: every open episode, then the most recently updated resolved ones
MAX_REASONS = 32  # dead-letter reasons counted apart; the worker writes 11, the rest are "other"
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 300  # of a dead letter's detail, preview and key
RATE_WINDOW_S = 60.0  # the scored rate is the mean over this long


@dataclass
class DeadLetters:
    """One reason's dead letters: how many were read, and the latest few (newest first)."""

    count: int = 0
    latest: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EXAMPLES_PER_REASON))


@dataclass
class FleetView:
    """The fleet as the topics tell it; ``add_*`` and ``sample_offsets`` feed it, the page reads it."""

    episodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest record by episode id
    dead_letters: dict[str, DeadLetters] = field(default_factory=dict)
    unreadable: int = 0  # records of drift.episodes or the DLQ that were not what their schema says
    offsets: deque[tuple[float, int]] = field(default_factory=deque)  # (seconds, scored topic's end)
    lag: dict[int, int] = field(default_factory=dict)  # input partition → messages not yet committed
    latest_scored: dict[int, dict[str, Any]] = field(default_factory=dict)  # partition → its last record
    missing: list[str] = field(default_factory=list)  # topics that do not exist (yet)
    problem: str | None = None  # why the last read of the broker failed; None: it answered

    def add_episode(self, value: bytes | None) -> None:
        record = _object(value)
        if record is None or not isinstance(record.get("episode_id"), str):
            self.unreadable += 1
            return
        self.episodes[record["episode_id"]] = record
        if len(self.episodes) > MAX_EPISODES:
            # Drop the resolved episode updated longest ago (an open one only if all are open).
            oldest = min(self.episodes.values(), key=lambda e: (e.get("status") == "open", _when(e)))
            del self.episodes[oldest["episode_id"]]

    def add_dead_letter(self, value: bytes | None) -> None:
        record = _object(value)
        if record is None:
            self.unreadable += 1
            return
        reason = str(record.get("reason") or "unknown")[:64]
        if reason not in self.dead_letters and len(self.dead_letters) >= MAX_REASONS:
            reason = "other"
        letters = self.dead_letters.setdefault(reason, DeadLetters())
        letters.count += 1
        letters.latest.appendleft(
            {
                "detail": _cut(record.get("detail")),
                "preview": _cut(record.get("value_preview")),
                "key": _cut(record.get("key")),
                "origin": record.get("origin") if isinstance(record.get("origin"), dict) else {},
                "at": _cut(record.get("dead_lettered_at")),
            }
        )

    def add_scored(self, partition: int, value: bytes | None) -> None:
        """The last record read of a scored partition: which model scored it, and when."""
        record = _object(value)
        if record is not None:
            self.latest_scored[partition] = {
                "model_version": _cut(record.get("model_version")),
                "scored_at": _cut(record.get("scored_at")),
            }

    def sample_offsets(self, now_s: float, scored_end: int, lag: dict[int, int]) -> None:
        """Record the scored topic's end (summed over partitions) at ``now_s`` and the group's lag."""
        self.offsets.append((now_s, scored_end))
        while len(self.offsets) > 2 and now_s - self.offsets[1][0] >= RATE_WINDOW_S:
            self.offsets.popleft()
        self.lag = dict(lag)

    def scored_rate(self) -> float | None:
        """Scored messages per second over the last minute (None: fewer than two samples)."""
        if len(self.offsets) < 2 or self.offsets[-1][0] <= self.offsets[0][0]:
            return None
        (t0, n0), (t1, n1) = self.offsets[0], self.offsets[-1]
        return max(n1 - n0, 0) / (t1 - t0)

    def total_lag(self) -> int | None:
        return sum(self.lag.values()) if self.lag else None

    def serving(self) -> list[str]:
        """Model versions of the latest scored records, the most recently scored first."""
        latest = sorted(self.latest_scored.values(), key=lambda r: r["scored_at"], reverse=True)
        return list(dict.fromkeys(r["model_version"] for r in latest if r["model_version"]))

    def open_episodes(self) -> list[dict[str, Any]]:
        return sorted(
            (e for e in self.episodes.values() if e.get("status") == "open"), key=_when, reverse=True
        )

    def recent_episodes(self, n: int = 20) -> list[dict[str, Any]]:
        closed = [e for e in self.episodes.values() if e.get("status") != "open"]
        return sorted(closed, key=_when, reverse=True)[:n]

    def as_json(self) -> dict[str, Any]:
        return {
            "open_episodes": self.open_episodes(),
            "recent_episodes": self.recent_episodes(),
            "dead_letters": {
                reason: {"count": d.count, "latest": list(d.latest)}
                for reason, d in sorted(self.dead_letters.items(), key=lambda kv: -kv[1].count)
            },
            "unreadable": self.unreadable,
            "scored_per_s": self.scored_rate(),
            "lag": {str(p): n for p, n in sorted(self.lag.items())},
            "total_lag": self.total_lag(),
            "serving": self.serving(),
            "missing_topics": self.missing,
            "problem": self.problem,
        }


def _object(value: bytes | None) -> dict[str, Any] | None:
    try:
        record = json.loads(value) if value else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _cut(value: Any) -> str:
    return "" if value is None else str(value)[:EXAMPLE_CHARS]


def _when(episode: dict[str, Any]) -> str:
    return str(episode.get("updated_at") or "")
