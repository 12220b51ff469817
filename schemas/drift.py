"""Drift signals (``drift.signals``) and drift alerts (``drift.alerts``) as typed records.

The score agent sends one ``drift.signals`` record per micro-batch and model version:
``{"model_version", "signals": [signal, ...]}``; the drift agent turns the signals into at most
one ``drift`` alert per detector episode and a ``resolved`` alert that closes it. The JSON on the
wire is what ``to_json`` gives.

>>> s = DriftSignal("a1", 0.3, 0.9, 2, [0.1, -0.2], {"topic": "texts", "partition": 0, "offset": 5}, 17)
>>> batch = SignalBatch("v1", [s]).to_json()
>>> signals_in(batch) == [s.to_json()] and batch["model_version"]
'v1'
>>> w = AlertWindow(first_offset=3, last_offset=9, first_time_ms=None, last_time_ms=None, n=7)
>>> a = DriftAlert("ood_cusum-v1-3-0", "ood_cusum", "ood_score", "drift", 21.5, 20.0, w, "v1",
...                "held-out texts", 10000.0, 1, "2026-12-04T00:00:00Z", "ood_cusum: ood_score changed")
>>> sorted(a.to_json()["window"].items())[:2]
[('first_offset', 3), ('first_time_ms', None)]
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Literal

AlertStatus = Literal["drift", "resolved"]
SIGNAL_TEXT_CHARS = 300  # a foreign text's share of drift.signals; explanations cut it shorter
SIGNAL_ID_CHARS = 200  # an id's share of drift.signals (and so of the evidence in drift.state)


def signal_id(message_id: str) -> str:
    """The id a drift signal carries: the message's, or for a longer one its first characters and
    a digest of all of it, so that a signal stays small and still tells long ids apart.

    >>> signal_id("t1"), len(signal_id("x" * 10**6)), signal_id("x" * 300) == signal_id("x" * 301)
    ('t1', 200, False)
    """
    if len(message_id) <= SIGNAL_ID_CHARS:
        return message_id
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{message_id[: SIGNAL_ID_CHARS - 17]}~{digest}"


@dataclass(frozen=True, slots=True)
class DriftSignal:
    """What the drift agent sees of one scored message."""

    id: str
    ood_score: float
    confidence: float
    label: int  # index into the model's labels
    projection: list[float]  # low-dimensional view of the embedding
    origin: dict[str, Any]  # where the input was read: topic, partition, offset
    timestamp_ms: int | None = None  # the input's Kafka timestamp
    # Foreign texts only (OOD score above the threshold): the text, cut to SIGNAL_TEXT_CHARS,
    # and the embedding (models/drift/evidence.pack), for the episode's evidence and themes.
    text: str | None = None
    embedding: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "ood_score": self.ood_score,
            "confidence": self.confidence,
            "label": self.label,
            "projection": self.projection,
            "origin": self.origin,
            "timestamp_ms": self.timestamp_ms,
        }
        if self.embedding is not None:
            out |= {"text": self.text, "embedding": self.embedding}
        return out


@dataclass(slots=True)
class SignalBatch:
    """One ``drift.signals`` record: a micro-batch's signals of one model version, in input order.

    One record per batch, not per message, because the drift agent reads every signal through
    one partition: per-message records cost far more (docs/performance-log.md).
    """

    model_version: str
    signals: list[DriftSignal]

    def to_json(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "signals": [s.to_json() for s in self.signals]}


def episode_record(
    episode_id: str,
    detector: str,
    model_version: str,
    status: Literal["open", "resolved"],
    alarms: int,
    updated_at: str,
    explanation: dict[str, Any],
) -> dict[str, Any]:
    """One ``drift.episodes`` record. Its ``messages`` are the explanation's: the episode's
    messages counted by its evidence, one count wherever the record is made."""
    return {
        "episode_id": episode_id,
        "detector": detector,
        "model_version": model_version,
        "status": status,
        "messages": explanation["messages"],
        "alarms": alarms,
        "updated_at": updated_at,
        "explanation": explanation,
    }


def signals_in(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The signals of one ``drift.signals`` record: a micro-batch's ``signals``, or the record
    itself when it is a single signal (the format before signals were batched)."""
    return list(record["signals"]) if "signals" in record else [record]


@dataclass(frozen=True, slots=True)
class AlertWindow:
    """The messages an alert speaks of: ``drift.signals`` offsets, input times, how many."""

    first_offset: int
    last_offset: int
    first_time_ms: int | None
    last_time_ms: int | None
    n: int


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """One ``drift.alerts`` record: an episode opened (``drift``) or closed (``resolved``)."""

    alert_id: str
    detector: str
    signal: str
    status: AlertStatus
    statistic: float
    threshold: float
    window: AlertWindow
    model_version: str
    reference: str  # what the detector compares against
    ert: float  # the calibrated mean run between false alarms, in messages
    alarms_in_episode: int
    detected_at: str
    message: str
    # What changed in the stream (models/drift/explain.py): moved labels, fallen confidence, the
    # most foreign texts and their themes; at most 16 KB. None when the model has no evidence.
    explanation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
