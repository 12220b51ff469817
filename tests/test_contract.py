"""The topic schemas in schemas/json/ and the worker's own checks say the same thing."""

import asyncio
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamscore.models.batch import BatchLimits, RawMessage, process_batch
from streamscore.models.scoring import Scores
from streamscore.schemas.contract import SCHEMAS, SchemaError, schema_role, validate
from streamscore.schemas.drift import AlertWindow, DriftAlert, DriftSignal, SignalBatch
from streamscore.schemas.messages import (
    DLQ_REASONS,
    DeadLetter,
    InputText,
    Origin,
    Rejection,
    dead_letter_record,
    parse_input,
)

ORIGIN = Origin("texts", 1, 9)

TS_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-10, max_value=10**16),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "2026-11-23T10:00:00Z",
            "2026-11-23 10:00:00.123+01:00",
            "2026-11-23",
            "2026-13-23T10:00:00Z",  # no 13th month: the form is right, the date is not
            "23/11/2026",
            "yesterday",
            "",
            True,
            [],
        ]
    ),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.floats(allow_nan=False))
TEXTS = st.one_of(
    st.text(max_size=30), st.sampled_from(["", " ", "\t\n", "\u2003", "x" * 10_001, "ok"]), SCALARS
)
INPUTS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=5), SCALARS),
        "text": TEXTS,
        "source": st.one_of(st.text(max_size=5), SCALARS),
        "ts": TS_VALUES,
        "meta": st.one_of(st.dictionaries(st.text(max_size=3), SCALARS, max_size=2), SCALARS),
    },
)


def _valid(role, obj) -> bool:
    try:
        validate(role, obj)
        return True
    except SchemaError:
        return False


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(INPUTS)
def test_the_worker_accepts_exactly_what_the_texts_schema_accepts(obj):
    accepted = isinstance(parse_input(json.dumps(obj).encode(), ORIGIN), InputText)
    schema_ok = _valid("texts", obj)
    if obj.get("ts") == "2026-13-23T10:00:00Z":
        # The schema checks a time's form; the worker also checks that the day exists.
        assert not accepted
        return
    assert accepted == schema_ok, obj


@pytest.mark.parametrize(
    "ts, unit", [(1795430000, "seconds"), (1795430000.5, "seconds"), (1795430000000000, "microseconds")]
)
def test_numeric_ts_in_another_unit_is_refused_with_the_fix(ts, unit):
    out = parse_input(json.dumps({"text": "x", "ts": ts}).encode(), ORIGIN)
    assert isinstance(out, Rejection) and out.reason == "wrong_type"
    assert f"epoch {unit}" in out.detail and "milliseconds" in out.detail
    assert not _valid("texts", {"text": "x", "ts": ts})


def test_every_dead_letter_reason_is_the_schemas():
    assert set(DLQ_REASONS) == set(SCHEMAS["texts.dlq"]["properties"]["reason"]["enum"])
    for reason in DLQ_REASONS:
        dl = DeadLetter(Rejection(reason, "why"), ORIGIN, b"k", b"\xff\xfe")
        validate("texts.dlq", dead_letter_record(dl))
    with pytest.raises(SchemaError, match="reason"):
        validate("texts.dlq", {**dead_letter_record(dl), "reason": "because"})


def test_a_scored_batch_and_its_signals_match_their_schemas():
    async def score(texts):
        n = len(texts)
        scores = Scores(
            labels=["a"] * n,
            confidence=np.full(n, 0.9),
            top_k_labels=[["a", "b"]] * n,
            top_k_probs=np.tile([0.9, 0.1], (n, 1)),
            ood_scores=np.array([-3.2, 2.0])[:n],  # the second text is foreign
            ood_threshold=0.5,
            label_index=np.zeros(n, dtype=int),
            projection=np.zeros((n, 4)),
            embeddings=np.ones((n, 4)),
        )
        return scores, "v1"

    msgs = [{"id": "a", "text": "hello", "ts": "2026-11-23T10:00:00Z", "meta": {"k": 1}}, {"text": "no id"}]
    raw = [
        RawMessage(None, json.dumps(m).encode(), Origin("texts", 0, i), 1_795_430_000_000)
        for i, m in enumerate(msgs)
    ]
    out = asyncio.run(process_batch(raw, score, BatchLimits()))
    assert len(out.scored) == 2
    for _key, value in out.scored:
        validate("texts.scored", json.loads(value))
    for batch in out.signals:
        validate("drift.signals", batch.to_json())
    signals = [s.to_json() for b in out.signals for s in b.signals]
    assert "text" not in signals[0] and signals[1]["text"] == "no id" and signals[1]["embedding"]
    with pytest.raises(SchemaError, match="at confidence"):
        validate("texts.scored", {**json.loads(out.scored[0][1]), "confidence": 1.5})


def test_drift_records_match_their_schemas():
    signal = DriftSignal("a1", 0.3, 0.9, 2, [0.1, -0.2], ORIGIN.as_dict(), 17)
    validate("drift.signals", SignalBatch("v1", [signal]).to_json())
    window = AlertWindow(3, 9, None, 1_795_430_000_000, 7)
    for status in ("drift", "resolved"):
        alert = DriftAlert(
            "label_shift-v1-3-0", "label_shift", "predicted_label", status, 21.5, 20.0, window, "v1",
            "held-out texts", 10000.0, 1, "2026-12-04T00:00:00Z", "label_shift: predicted_label changed",
        )  # fmt: skip
        validate("drift.alerts", alert.to_json())
    with pytest.raises(SchemaError, match="status"):
        validate("drift.alerts", {**alert.to_json(), "status": "maybe"})


def test_topic_names_map_to_their_schema():
    assert schema_role("drift.alerts-prod") == "drift.alerts"
    assert schema_role("texts.dlq") == "texts.dlq"
    assert schema_role("payments") is None
