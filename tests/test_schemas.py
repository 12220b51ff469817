import base64
import json

import pytest

from streamscore.schemas.messages import (
    DeadLetter,
    InputText,
    Origin,
    Rejection,
    dead_letter_record,
    parse_input,
)

ORIGIN = Origin("texts", 2, 41)


def reason(raw, **kw):
    out = parse_input(raw, ORIGIN, **kw)
    assert isinstance(out, Rejection), out
    return out.reason


def test_valid_message_keeps_fields():
    raw = json.dumps(
        {"id": "a", "text": "hello", "source": "web", "ts": "2026-01-02T03:04:05Z", "meta": {"k": 1}}
    ).encode()
    msg = parse_input(raw, ORIGIN, timestamp_ms=123)
    assert isinstance(msg, InputText)
    assert (msg.id, msg.text, msg.source, msg.ts, msg.meta, msg.timestamp_ms) == (
        "a",
        "hello",
        "web",
        "2026-01-02T03:04:05Z",
        {"k": 1},
        123,
    )


def test_missing_id_gets_deterministic_id_from_origin():
    a = parse_input(b'{"text": "x"}', ORIGIN)
    b = parse_input(b'{"text": "x"}', ORIGIN)
    assert isinstance(a, InputText) and a.id == b.id == "texts-2-41"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, "empty_message"),
        (b"", "empty_message"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"id": "a"}', "missing_text"),
        (b'{"text": null}', "missing_text"),
        (b'{"text": 12}', "wrong_type"),
        (b'{"text": ["a"]}', "wrong_type"),
        (b'{"text": "   \\n"}', "empty_text"),
        (b'{"text": "ok", "id": 5}', "wrong_type"),
        (b'{"text": "ok", "source": 5}', "wrong_type"),
        (b'{"text": "ok", "ts": "yesterday"}', "wrong_type"),
        (b'{"text": "ok", "ts": true}', "wrong_type"),
        (b'{"text": "ok", "meta": "x"}', "wrong_type"),
    ],
)
def test_invalid_messages_are_rejected_with_reason(raw, expected):
    assert reason(raw) == expected


def test_limits():
    assert reason(json.dumps({"text": "a" * 11}).encode(), max_text_chars=10) == "text_too_long"
    assert isinstance(
        parse_input(json.dumps({"text": "a" * 10}).encode(), ORIGIN, max_text_chars=10), InputText
    )
    assert reason(b'{"text": "' + b"a" * 200 + b'"}', max_message_bytes=100) == "message_too_large"


def test_epoch_ms_timestamp_accepted():
    assert isinstance(parse_input(b'{"text": "x", "ts": 1767225600000}', ORIGIN), InputText)


def test_dead_letter_keeps_original_bytes_and_origin():
    raw = b"\xff garbage"
    rec = dead_letter_record(DeadLetter(Rejection("invalid_utf8", "bad"), ORIGIN, b"k", raw))
    assert base64.b64decode(rec["value_b64"]) == raw
    assert rec["origin"] == {"topic": "texts", "partition": 2, "offset": 41}
    assert rec["reason"] == "invalid_utf8" and rec["key"] == "k"
    json.dumps(rec)  # serialisable as is
