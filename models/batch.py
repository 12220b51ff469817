"""One micro-batch, from raw Kafka records to the records to produce. No Kafka in here.

The batch is validated message by message, scored in one model call, and turned into
``texts.scored`` and ``texts.dlq`` records. Scoring that fails is retried; if the batch still
fails, each message is scored alone so that one poison message is dead-lettered and the
rest are still scored. Every record fits what its topic takes (:class:`OutputLimits`): a scored
record that would not is dead-lettered as ``output_too_large``, a dead letter carries less of
the original, drift signals are split over several records. Nothing leaves this function
unaccounted for: ``len(out.scored) + len(out.dead) == len(batch)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from streamscore.models.drift.evidence import pack
from streamscore.models.scoring import Scores
from streamscore.schemas.drift import SIGNAL_TEXT_CHARS, DriftSignal, SignalBatch, signal_id
from streamscore.schemas.messages import (
    DEAD_LETTER_VALUE_BYTES,
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
    record_bytes_allowed,
    scored_record,
)

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[str]], Awaitable[tuple[Scores, str]]]
"""Scores texts in one call; returns the scores and the model version that made them."""


MIN_RECORD_BYTES = 64 * 1024  # a dead letter's fields besides the value take up to about 12 KB


@dataclass(frozen=True)
class OutputLimits:
    """The most bytes (key and value) one record may have on each output topic: what the topic's
    ``max.message.bytes`` and the producer's request size leave (Kafka's defaults unless the
    worker read the topics' own: streams/kafka/topics.py). Each at least :data:`MIN_RECORD_BYTES`."""

    scored: int = record_bytes_allowed()
    dead_letter: int = record_bytes_allowed()
    signals: int = record_bytes_allowed()


@dataclass(frozen=True)
class BatchLimits:
    """What a batch needs of the settings and topics: the input limits, how often to retry
    scoring, and how big an output record may be."""

    max_text_chars: int = MAX_TEXT_CHARS
    max_message_bytes: int = MAX_MESSAGE_BYTES
    score_retries: int = 2  # retries of a failing batch before its messages go one by one
    output: OutputLimits = OutputLimits()


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
    signal_record_bytes: int = record_bytes_allowed()  # signals are split over records of at most this


def _encode(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _dead(out: BatchOutput, raw: RawMessage, rejection: Rejection, max_bytes: int) -> None:
    out.reasons[rejection.reason] += 1
    key, value = _dead_letter(DeadLetter(rejection, raw.origin, raw.key, raw.value), max_bytes)
    out.dead.append((key, value))
    out.dead_partitions.append(raw.origin.partition)


def _dead_letter(dl: DeadLetter, max_bytes: int) -> tuple[bytes | None, bytes]:
    """The dead letter's key and value, carrying as much of the original value as ``max_bytes``
    leaves (base64 takes 4 bytes for 3).

    >>> dl = DeadLetter(Rejection("invalid_json", "…"), Origin("texts", 0, 7), b"k", b"x" * 10**6)
    >>> key, value = _dead_letter(dl, 100_000)
    >>> len(key) + len(value) <= 100_000 < len(key) + len(value) + 8, json.loads(value)["value_truncated"]
    (True, True)
    """
    key = dead_letter_key(dl.key)
    carry = DEAD_LETTER_VALUE_BYTES
    while True:
        value = _encode(dead_letter_record(dl, carry))
        over = len(value) + len(key or b"") - max_bytes
        if over <= 0 or carry == 0:
            return key, value
        carry = max(0, min(carry, len(dl.value or b"")) - (over * 3 + 3) // 4 - 3)


def _too_large(key: bytes, value: bytes, record: dict, max_bytes: int) -> Rejection:
    """Why a scored record cannot be sent, naming the fields that make it big."""
    sizes = {"id": len(key), **{f: len(_encode(record[f])) for f in ("meta", "source", "ts")}}
    big = sorted(((n, f) for f, n in sizes.items() if n >= 1_000), reverse=True)
    fields = ", ".join(f"'{f}' {n:,}" + (" (as key and in the value)" if f == "id" else "") for n, f in big)
    return Rejection(
        "output_too_large",
        f"its scored record would be {len(key) + len(value):,} bytes, more than the {max_bytes:,} the "
        f"scored topic takes (its max.message.bytes); largest fields in bytes: {fields or 'none'}; "
        "send smaller 'id' and 'meta'",
    )


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


def _add_scored(
    out: BatchOutput,
    msgs: list[InputText],
    raws: list[RawMessage],
    scores: Scores,
    version: str,
    limits: OutputLimits,
) -> None:
    """Append the records of ``msgs`` to ``out``, all or nothing: every record is written first,
    so one that cannot be (say, a string that is not valid UTF-8) leaves ``out`` untouched. A
    scored record bigger than its topic takes is dead-lettered instead, without a drift signal."""
    scored_at = now_iso()
    now_ms = time.time() * 1000.0
    scored, signals, kept, too_large = [], [], [], []
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
        key, value = msg.id.encode("utf-8"), _encode(record)
        if len(key) + len(value) > limits.scored:
            too_large.append((raws[i], _too_large(key, value, record, limits.scored)))
            continue
        scored.append((key, value))
        kept.append(i)
        if scores.projection is not None and scores.label_index is not None:
            foreign = scores.embeddings is not None and bool(flagged[i])
            signals.append(
                DriftSignal(
                    signal_id(msg.id),
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
    for raw, rejection in too_large:
        _dead(out, raw, rejection, limits.dead_letter)
    out.scored += scored
    out.scored_partitions += [msgs[i].origin.partition for i in kept]
    out.signal_record_bytes = limits.signals
    if signals:
        if out.signals and out.signals[-1].model_version == version:
            out.signals[-1].signals += signals
        else:
            out.signals.append(SignalBatch(version, signals))
    out.model_version = version
    out.embed_s += scores.embed_s
    out.labels += [scores.labels[i] for i in kept]
    out.is_ood += [bool(scores.is_ood[i]) for i in kept]
    out.event_ms += [float(m.timestamp_ms) if m.timestamp_ms else None for m in (msgs[i] for i in kept)]


def signal_records(out: BatchOutput) -> list[bytes]:
    """The batch's ``drift.signals`` records: one per model version (one in all but the rare
    batch that spans a model swap), signals in input order (schemas/drift.py); split into more
    where one would be bigger than ``out.signal_record_bytes``."""
    return [r for b in out.signals for r in _signal_chunks(b, out.signal_record_bytes)]


def signals_by_partition(out: BatchOutput) -> dict[int, list[bytes]]:
    """:func:`signal_records` split by the input partition each signal came from."""
    parts: dict[int, list[SignalBatch]] = {}
    for batch in out.signals:
        for signal in batch.signals:
            mine = parts.setdefault(int(signal.origin["partition"]), [])
            if not mine or mine[-1].model_version != batch.model_version:
                mine.append(SignalBatch(batch.model_version, []))
            mine[-1].signals.append(signal)
    return {
        p: [r for b in batches for r in _signal_chunks(b, out.signal_record_bytes)]
        for p, batches in parts.items()
    }


def _signal_chunks(batch: SignalBatch, max_bytes: int) -> list[bytes]:
    """``batch`` as one record, or where that is over ``max_bytes``, as consecutive records of
    its signals that each fit (a signal alone is a few KB: its id and text are bounded).

    >>> o = {"topic": "texts", "partition": 0, "offset": 1}
    >>> b = SignalBatch("v1", [DriftSignal(str(i), 0.1, 0.9, 1, [0.5] * 8, o) for i in range(50)])
    >>> whole, parts = _signal_chunks(b, 10**6), _signal_chunks(b, 2_000)
    >>> whole == [_encode(b.to_json())], len(parts), all(len(p) <= 2_000 for p in parts)
    (True, 5, True)
    >>> [s for p in parts for s in json.loads(p)["signals"]] == json.loads(whole[0])["signals"]
    True
    """
    whole = _encode(batch.to_json())
    if len(whole) <= max_bytes:
        return [whole]
    head = b'{"model_version":' + _encode(batch.model_version) + b',"signals":['
    records: list[bytes] = []
    parts: list[bytes] = []
    size = len(head) + 2
    for signal in batch.signals:
        part = _encode(signal.to_json())
        if parts and size + len(part) + 1 > max_bytes:
            records.append(head + b",".join(parts) + b"]}")
            parts, size = [], len(head) + 2
        parts.append(part)
        size += len(part) + 1
    records.append(head + b",".join(parts) + b"]}")
    return records


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
            _dead(out, raw, parsed, limits.output.dead_letter)
        else:
            valid.append(parsed)
            raws.append(raw)
    if not valid:
        return out
    try:
        scores, version = await _score_with_retries(score, [m.text for m in valid], limits.score_retries)
        _add_scored(out, valid, raws, scores, version, limits.output)
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
            _add_scored(out, [msg], [raw], scores, version, limits.output)
        except Exception as exc:
            reason = Rejection("scoring_failed", f"{type(exc).__name__}: {str(exc)[:300]}")
            _dead(out, raw, reason, limits.output.dead_letter)
    return out
