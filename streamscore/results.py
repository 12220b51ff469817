"""What scoring gives back, typed: a scored text, a dead letter, a batch of both. Each one's
``to_json()`` is the very record the worker writes to ``texts.scored`` or ``texts.dlq``.

>>> r = ScoredText.from_json({"id": "t1", "source": None, "ts": None, "meta": {}, "label": "card",
...     "confidence": 0.9, "top_k": [{"label": "card", "prob": 0.9}], "ood_score": -9.4, "is_ood": False,
...     "ood_threshold": -7.2, "model_version": "v0001", "scored_at": "2026-12-07T00:00:00.000Z",
...     "latency_ms": 1.5, "origin": {"topic": "texts", "partition": 0, "offset": 3}})
>>> r.label, r.top_k[0].prob, r.origin.offset, r.to_json()["origin"]
('card', 0.9, 3, {'topic': 'texts', 'partition': 0, 'offset': 3})
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from streamscore.schemas.messages import Origin


@dataclass(frozen=True)
class LabelProb:
    """One of a text's most likely labels and its probability."""

    label: str
    prob: float


@dataclass(frozen=True)
class ScoredText:
    """One ``texts.scored`` record (its Kafka key is ``id``)."""

    id: str
    label: str
    confidence: float
    top_k: tuple[LabelProb, ...]
    ood_score: float
    is_ood: bool
    ood_threshold: float
    model_version: str
    scored_at: str
    latency_ms: float
    origin: Origin
    source: str | None = None
    ts: str | int | float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ScoredText:
        return cls(
            **{k: v for k, v in record.items() if k not in ("top_k", "origin")},
            top_k=tuple(LabelProb(**x) for x in record["top_k"]),
            origin=Origin(**record["origin"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The record as the worker writes it (schemas/json/texts.scored.schema.json)."""
        return {
            "id": self.id,
            "source": self.source,
            "ts": self.ts,
            "meta": self.meta,
            "label": self.label,
            "confidence": self.confidence,
            "top_k": [{"label": x.label, "prob": x.prob} for x in self.top_k],
            "ood_score": self.ood_score,
            "is_ood": self.is_ood,
            "ood_threshold": self.ood_threshold,
            "model_version": self.model_version,
            "scored_at": self.scored_at,
            "latency_ms": self.latency_ms,
            "origin": self.origin.as_dict(),
        }


@dataclass(frozen=True)
class DeadLetterRecord:
    """One ``texts.dlq`` record: why the message could not be scored, and its bytes."""

    reason: str
    detail: str
    origin: Origin
    key: str | None
    value_b64: str
    value_preview: str | None
    value_bytes: int
    value_truncated: bool
    value_sha256: str
    dead_lettered_at: str

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> DeadLetterRecord:
        return cls(**{**record, "origin": Origin(**record["origin"])})

    @property
    def value(self) -> bytes:
        """The original message value (its first part where ``value_truncated``)."""
        return base64.b64decode(self.value_b64)

    def to_json(self) -> dict[str, Any]:
        """The record as the worker writes it (schemas/json/texts.dlq.schema.json)."""
        return {
            "reason": self.reason,
            "detail": self.detail,
            "origin": self.origin.as_dict(),
            "key": self.key,
            "value_b64": self.value_b64,
            "value_preview": self.value_preview,
            "value_bytes": self.value_bytes,
            "value_truncated": self.value_truncated,
            "value_sha256": self.value_sha256,
            "dead_lettered_at": self.dead_lettered_at,
        }


Result = ScoredText | DeadLetterRecord
"""What one message came to: scored, or dead-lettered with the reason."""


@dataclass(frozen=True)
class Scored:
    """What came of a batch, each list in input order. Nothing is dropped: every item is in one
    list or the other."""

    records: list[ScoredText] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "records": [r.to_json() for r in self.records],
            "dead_letters": [d.to_json() for d in self.dead_letters],
        }
