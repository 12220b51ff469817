"""Input, scored and dead-letter messages: what goes in and out of Kafka, as plain dicts.

``parse_input`` never raises: it returns either an :class:`InputText` or a :class:`Rejection`
that says why the message cannot be scored, so that the worker can dead-letter it.

>>> origin = Origin("texts", 0, 7)
>>> parse_input(b'{"id": "a1", "text": "my card was declined"}', origin).text
'my card was declined'
>>> parse_input(b'{"id": "a1"}', origin).reason
'missing_text'
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streamscore.schemas.contract import dead_letter_reasons, ts_rules

MAX_TEXT_CHARS = 10_000  # default limits of an input message; Settings can change them
MAX_MESSAGE_BYTES = 1_000_000


@dataclass(frozen=True)
class Origin:
    """Where a message was read from."""

    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True)
class InputText:
    """A valid message of the ``texts`` topic."""

    id: str
    text: str
    origin: Origin
    source: str | None = None
    ts: str | int | float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    timestamp_ms: int | None = None  # the Kafka record timestamp


DLQ_REASONS = dead_letter_reasons()
"""Every ``reason`` a dead letter can carry: part of the contract (metrics label by them and
create a zero series for each up front); the list lives in ``json/texts.dlq.schema.json``."""

TS_PATTERN, TS_MS_MIN, TS_MS_END = ts_rules()
_TS_TEXT = re.compile(TS_PATTERN)


@dataclass(frozen=True)
class Rejection:
    """Why a message could not be scored."""

    reason: str
    detail: str


def ts_problem(ts: Any) -> str | None:
    """Why ``ts`` is not a contract time (ISO-8601 text or epoch milliseconds), or None.

    Epoch seconds and microseconds are refused, not guessed: their ranges do not overlap.

    >>> ts_problem(1795430000000), ts_problem("2026-11-23T10:00:00Z")
    (None, None)
    >>> ts_problem(1795430000)
    "'ts' 1795430000 looks like epoch seconds: send epoch milliseconds (x1000) or ISO-8601"
    """
    if isinstance(ts, bool) or not isinstance(ts, (int, float, str)):
        return f"'ts' must be ISO-8601 text or epoch milliseconds, got {type(ts).__name__}"
    if isinstance(ts, str):
        if _TS_TEXT.match(ts):
            try:
                datetime.fromisoformat(ts.replace("Z", "+00:00"))
                return None
            except ValueError:
                pass
        return f"'ts' must be ISO-8601 (2026-11-23T10:00:00Z) or epoch milliseconds, got {ts!r:.50}"
    if TS_MS_MIN <= ts < TS_MS_END:
        return None
    unit = "seconds" if ts < TS_MS_MIN else "microseconds or nanoseconds"
    fix = "x1000" if ts < TS_MS_MIN else "divide"
    return f"'ts' {ts!r:.30} looks like epoch {unit}: send epoch milliseconds ({fix}) or ISO-8601"


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def parse_input(
    raw: bytes | None,
    origin: Origin,
    *,
    max_text_chars: int = MAX_TEXT_CHARS,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    timestamp_ms: int | None = None,
) -> InputText | Rejection:
    """Validate one raw ``texts`` message against the contract."""
    obj = _json_object(raw, max_message_bytes)
    if isinstance(obj, Rejection):
        return obj
    return _input_text(obj, origin, max_text_chars, timestamp_ms)


def _json_object(raw: bytes | None, max_message_bytes: int) -> dict[str, Any] | Rejection:
    """The message's bytes as a JSON object, or why they are not one."""
    if not raw:
        return Rejection("empty_message", "the message value is empty")
    if len(raw) > max_message_bytes:
        return Rejection("message_too_large", f"{len(raw)} bytes, more than the limit of {max_message_bytes}")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("invalid_utf8", f"not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        obj = json.loads(decoded)
    except (ValueError, RecursionError) as exc:
        return Rejection("invalid_json", f"not valid JSON: {str(exc)[:200]}")
    if ("\\ud" in decoded or "\\uD" in decoded) and _has_lone_surrogate(obj):
        # JSON may escape half of a UTF-16 pair (\ud800); such a string cannot be encoded as
        # UTF-8 again, so the tokenizer and our own output would fail on it later.
        return Rejection("invalid_utf8", "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff)")
    if not isinstance(obj, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _input_text(
    obj: dict[str, Any], origin: Origin, max_text_chars: int, timestamp_ms: int | None
) -> InputText | Rejection:
    """The object's fields checked against the contract."""
    if "text" not in obj or obj["text"] is None:
        return Rejection("missing_text", "the object has no 'text' field")
    text = obj["text"]
    if not isinstance(text, str):
        return Rejection("wrong_type", f"'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        return Rejection("empty_text", "'text' is empty or only whitespace")
    if len(text) > max_text_chars:
        return Rejection("text_too_long", f"'text' has {len(text)} characters, the limit is {max_text_chars}")
    msg_id = obj.get("id")
    if msg_id is None:
        # Deterministic, so a replay of the same offsets gets the same id.
        msg_id = f"{origin.topic}-{origin.partition}-{origin.offset}"
    elif not isinstance(msg_id, str) or not msg_id:
        return Rejection("wrong_type", f"'id' must be a non-empty string, got {msg_id!r:.50}")
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        return Rejection("wrong_type", f"'source' must be a string, got {type(source).__name__}")
    ts = obj.get("ts")
    if ts is not None and (problem := ts_problem(ts)) is not None:
        return Rejection("wrong_type", problem)
    meta = obj.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        return Rejection("wrong_type", f"'meta' must be an object, got {type(meta).__name__}")
    return InputText(
        id=msg_id,
        text=text,
        origin=origin,
        source=source,
        ts=ts,
        meta=meta,
        timestamp_ms=timestamp_ms,
    )


def ts_to_ms(ts: str | int | float) -> int:
    """Epoch milliseconds of a valid ``ts``: ISO-8601 (no zone means UTC) or epoch milliseconds.

    >>> ts_to_ms("2026-11-23T10:00:00Z"), ts_to_ms(1795430000000)
    (1795428000000, 1795430000000)
    """
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return int(ts)
    when = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(round(when.timestamp() * 1000))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scored_record(
    msg: InputText,
    *,
    label: str,
    confidence: float,
    top_k: list[dict[str, Any]],
    ood_score: float,
    ood_threshold: float,
    model_version: str,
    scored_at: str,
    latency_ms: float,
) -> dict[str, Any]:
    """The ``texts.scored`` record for one input (docs/design.md)."""
    return {
        "id": msg.id,
        "source": msg.source,
        "ts": msg.ts,
        "meta": msg.meta,
        "label": label,
        "confidence": round(float(confidence), 6),
        "top_k": top_k,
        "ood_score": round(float(ood_score), 6),
        "is_ood": bool(ood_score > ood_threshold),
        "ood_threshold": round(float(ood_threshold), 6),
        "model_version": model_version,
        "scored_at": scored_at,
        "latency_ms": round(float(latency_ms), 3),
        "origin": msg.origin.as_dict(),
    }


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be scored, with everything needed to inspect or replay it."""

    rejection: Rejection
    origin: Origin
    key: bytes | None
    value: bytes | None


# What Kafka takes by default: a topic's record batch (max.message.bytes, unless the topic or
# broker sets it) and a producer's request (max.request.size). A batch of one record adds at most
# RECORD_OVERHEAD_BYTES to its key and value (61 of batch header, the record's own varints).
# Every record a worker writes must fit, or the broker refuses it and the partition stops there.
KAFKA_MAX_MESSAGE_BYTES = 1_048_588
PRODUCER_MAX_REQUEST_BYTES = 1_048_576
RECORD_OVERHEAD_BYTES = 100


def record_bytes_allowed(max_message_bytes: int = KAFKA_MAX_MESSAGE_BYTES) -> int:
    """The most bytes of key and value one record may have on a topic with ``max_message_bytes``.

    >>> record_bytes_allowed(), record_bytes_allowed(200_000)
    (1048476, 199900)
    """
    return min(max_message_bytes, PRODUCER_MAX_REQUEST_BYTES) - RECORD_OVERHEAD_BYTES


# A dead letter carries at most this many bytes of the original value (base64: 4/3 of it), fewer
# when the dead-letter topic takes less (models/batch.py fits it), and at most
# DEAD_LETTER_KEY_BYTES of its key: a record the broker refuses would stop the worker at that
# message again after every restart. The whole message stays in the input topic at ``origin``;
# ``value_sha256`` identifies it there.
DEAD_LETTER_VALUE_BYTES = 700_000
DEAD_LETTER_KEY_BYTES = 1_000


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The ``texts.dlq`` record's Kafka key: the original key (its first 1,000 bytes)."""
    return key[:DEAD_LETTER_KEY_BYTES] if key is not None else None


def dead_letter_record(dl: DeadLetter, carry_bytes: int = DEAD_LETTER_VALUE_BYTES) -> dict[str, Any]:
    """The ``texts.dlq`` record: reason, origin and the original bytes (base64), all of them up
    to ``carry_bytes`` (at most 700,000); ``value_truncated`` says when only that first part is carried.

    >>> r = dead_letter_record(DeadLetter(Rejection("invalid_json", "…"), Origin("texts", 0, 7), b"k", b"x" * 10**6))
    >>> (r["value_bytes"], len(base64.b64decode(r["value_b64"])), r["value_truncated"])
    (1000000, 700000, True)
    """
    carry_bytes = min(carry_bytes, DEAD_LETTER_VALUE_BYTES)
    value = dl.value or b""
    try:
        preview: str | None = value[:500].decode("utf-8")
    except UnicodeDecodeError:
        preview = None
    key = dead_letter_key(dl.key)
    return {
        "reason": dl.rejection.reason,
        "detail": dl.rejection.detail,
        "origin": dl.origin.as_dict(),
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "value_b64": base64.b64encode(value[:carry_bytes]).decode("ascii"),
        "value_preview": preview,
        "value_bytes": len(value),
        "value_truncated": len(value) > carry_bytes,
        "value_sha256": hashlib.sha256(value).hexdigest(),
        "dead_lettered_at": now_iso(),
    }
