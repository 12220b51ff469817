"""One micro-batch, from raw Kafka records to the records to produce. No Kafka in here.

The batch is validated message by message, scored in one model call, and turned into
``texts.scored`` and ``texts.dlq`` records. Scoring that fails is retried; if the batch still
fails, each message is scored alone so that one poison message is dead-lettered and the
rest are still scored. Nothing leaves this function unaccounted for:
``len(out.scored) + len(out.dead) == len(batch)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from models.drift.evidence import pack
from models.scoring import Scores
from schemas.drift import SIGNAL_TEXT_CHARS, DriftSignal, SignalBatch
from schemas.messages import (
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    DeadLetter,
    InputText,
    Origin,
    Rejection,
    dead_letter_key,
    dead_letter_record,
    now_iso,
    parse_input,
    scored_record,
)

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[str]], Awaitable[tuple[Scores, str]]]
"""Scores texts in one call; returns the scores and the model version that made them."""


@dataclass(frozen=True)
class BatchLimits:
    """What a batch needs of the settings: the input limits and how often to retry scoring."""

    max_text_chars: int = MAX_TEXT_CHARS
    max_message_bytes: int = MAX_MESSAGE_BYTES
    score_retries: int = 2  # retries of a failing batch before its messages go one by one


@dataclass(frozen=True)
class RawMessage:
    key: bytes | None
    value: bytes | None
    origin: Origin
    timestamp_ms: int | None = None


@dataclass
class BatchOutput:
    scored: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)
    dead: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    signals: list[SignalBatch] = field(default_factory=list)  # drift signals, by model version
    reasons: Counter[str] = field(default_factory=Counter)
    model_version: str | None = None
    # Per scored message, for metrics: predicted label, OOD flag, event time (epoch ms).
    labels: list[str] = field(default_factory=list)
    is_ood: list[bool] = field(default_factory=list)
    event_ms: list[float | None] = field(default_factory=list)
    embed_s: float = 0.0
    # The input partition of each scored and dead record: exactly-once commits per partition.
    scored_partitions: list[int] = field(default_factory=list)
    dead_partitions: list[int] = field(default_factory=list)


def _encode(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _dead(out: BatchOutput, raw: RawMessage, rejection: Rejection) -> None:
    out.reasons[rejection.reason] += 1
    record = dead_letter_record(DeadLetter(rejection, raw.origin, raw.key, raw.value))
    out.dead.append((dead_letter_key(raw.key), _encode(record)))
    out.dead_partitions.append(raw.origin.partition)


async def _score_with_retries(score: ScoreFn, texts: list[str], retries: int) -> tuple[Scores, str]:
    delay = 0.1
    for attempt in range(retries + 1):
        try:
            return await score(texts)
        except Exception:
            if attempt == retries:
                raise
            log.warning(
                "scoring a batch of %d failed (attempt %d), retrying", len(texts), attempt + 1, exc_info=True
            )
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _add_scored(out: BatchOutput, msgs: list[InputText], scores: Scores, version: str) -> None:
    """Append the records of ``msgs`` to ``out``, all or nothing: every record is written first,
    so one that cannot be (say, a string that is not valid UTF-8) leaves ``out`` untouched."""
    scored_at = now_iso()
    now_ms = time.time() * 1000.0
    scored, signals = [], []
    flagged = scores.is_ood
    for i, msg in enumerate(msgs):
        top_k = [
            {"label": label, "prob": round(float(p), 6)}
            for label, p in zip(scores.top_k_labels[i], scores.top_k_probs[i], strict=False)
        ]
        latency = now_ms - msg.timestamp_ms if msg.timestamp_ms else 0.0
        record = scored_record(
            msg,
            label=scores.labels[i],
            confidence=float(scores.confidence[i]),
            top_k=top_k,
            ood_score=float(scores.ood_scores[i]),
            ood_threshold=scores.ood_threshold,
            model_version=version,
            scored_at=scored_at,
            latency_ms=max(latency, 0.0),
        )
        scored.append((msg.id.encode("utf-8"), _encode(record)))
        if scores.projection is not None and scores.label_index is not None:
            foreign = scores.embeddings is not None and bool(flagged[i])
            signals.append(
                DriftSignal(
                    msg.id,
                    record["ood_score"],
                    record["confidence"],
                    int(scores.label_index[i]),
                    [round(float(v), 5) for v in scores.projection[i]],
                    record["origin"],
                    msg.timestamp_ms,
                    msg.text[:SIGNAL_TEXT_CHARS] if foreign else None,
                    pack(scores.embeddings[i]) if foreign and scores.embeddings is not None else None,
                )
            )
    out.scored += scored
    out.scored_partitions += [m.origin.partition for m in msgs]
    if signals:
        if out.signals and out.signals[-1].model_version == version:
            out.signals[-1].signals += signals
        else:
            out.signals.append(SignalBatch(version, signals))
    out.model_version = version
    out.embed_s += scores.embed_s
    out.labels += scores.labels
    out.is_ood += [bool(x) for x in scores.is_ood]
    out.event_ms += [float(m.timestamp_ms) if m.timestamp_ms else None for m in msgs]


def signal_records(out: BatchOutput) -> list[bytes]:
    """The batch's ``drift.signals`` records: one per model version (one in all but the rare
    batch that spans a model swap), signals in input order (schemas/drift.py)."""
    return [_encode(b.to_json()) for b in out.signals]


def signals_by_partition(out: BatchOutput) -> dict[int, list[bytes]]:
    """:func:`signal_records` split by the input partition each signal came from."""
    parts: dict[int, list[SignalBatch]] = {}
    for batch in out.signals:
        for signal in batch.signals:
            mine = parts.setdefault(int(signal.origin["partition"]), [])
            if not mine or mine[-1].model_version != batch.model_version:
                mine.append(SignalBatch(batch.model_version, []))
            mine[-1].signals.append(signal)
    return {p: [_encode(b.to_json()) for b in batches] for p, batches in parts.items()}


async def process_batch(batch: list[RawMessage], score: ScoreFn, limits: BatchLimits) -> BatchOutput:
    out = BatchOutput()
    valid: list[InputText] = []
    raws: list[RawMessage] = []
    for raw in batch:
        parsed = parse_input(
            raw.value,
            raw.origin,
            max_text_chars=limits.max_text_chars,
            max_message_bytes=limits.max_message_bytes,
            timestamp_ms=raw.timestamp_ms,
        )
        if isinstance(parsed, Rejection):
            _dead(out, raw, parsed)
        else:
            valid.append(parsed)
            raws.append(raw)
    if not valid:
        return out
    try:
        scores, version = await _score_with_retries(score, [m.text for m in valid], limits.score_retries)
        _add_scored(out, valid, scores, version)
        return out
    except Exception:
        log.exception(
            "batch of %d failed after %d retries; scoring its messages one by one",
            len(valid),
            limits.score_retries,
        )
    for msg, raw in zip(valid, raws, strict=False):
        try:
            scores, version = await score([msg.text])
            _add_scored(out, [msg], scores, version)
        except Exception as exc:
            _dead(out, raw, Rejection("scoring_failed", f"{type(exc).__name__}: {str(exc)[:300]}"))
    return out
