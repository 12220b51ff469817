"""The micro-batch logic: every message is scored or dead-lettered, even when scoring breaks."""

import asyncio
import base64
import json

import numpy as np

from streamscore.models.batch import (
    BatchLimits,
    OutputLimits,
    RawMessage,
    process_batch,
    signal_records,
    signals_by_partition,
)
from streamscore.models.scoring import Scores
from streamscore.schemas.messages import Origin


def fake_scores(texts):
    n = len(texts)
    return Scores(
        labels=["a"] * n,
        confidence=np.full(n, 0.9),
        top_k_labels=[["a", "b"]] * n,
        top_k_probs=np.tile([0.9, 0.1], (n, 1)),
        ood_scores=np.zeros(n),
        ood_threshold=0.5,
    )


def raw(i, value):
    return RawMessage(key=str(i).encode(), value=value, origin=Origin("t", 0, i), timestamp_ms=1)


def test_poison_message_is_isolated_and_the_rest_scored():
    calls = []

    async def score(texts):
        calls.append(len(texts))
        if "poison" in texts:
            raise RuntimeError("model blew up")
        return fake_scores(texts), "v9"

    batch = [
        raw(i, json.dumps({"id": f"m{i}", "text": "poison" if i == 3 else f"t{i}"}).encode())
        for i in range(6)
    ]
    batch.append(raw(6, b"{broken"))
    out = asyncio.run(process_batch(batch, score, BatchLimits(score_retries=1)))
    assert len(out.scored) + len(out.dead) == len(batch)
    assert sorted(json.loads(v)["id"] for _, v in out.scored) == ["m0", "m1", "m2", "m4", "m5"]
    reasons = sorted(json.loads(v)["reason"] for _, v in out.dead)
    assert reasons == ["invalid_json", "scoring_failed"]
    assert calls[:2] == [6, 6]  # the whole batch, then one retry, before going one by one
    assert all(json.loads(v)["model_version"] == "v9" for _, v in out.scored)


def test_transient_failure_is_retried_without_loss():
    state = {"n": 0}

    async def flaky(texts):
        state["n"] += 1
        if state["n"] == 1:
            raise TimeoutError("transient")
        return fake_scores(texts), "v1"

    batch = [raw(i, json.dumps({"text": f"t{i}"}).encode()) for i in range(4)]
    out = asyncio.run(process_batch(batch, flaky, BatchLimits(score_retries=2)))
    assert len(out.scored) == 4 and not out.dead and state["n"] == 2
    rec = json.loads(out.scored[0][1])
    assert rec["origin"] == {"topic": "t", "partition": 0, "offset": 0} and rec["id"] == "t-0-0"
    assert rec["top_k"] == [{"label": "a", "prob": 0.9}, {"label": "b", "prob": 0.1}]
    assert rec["is_ood"] is False and rec["latency_ms"] > 0


def test_lone_surrogate_escapes_are_dead_lettered_not_fatal():
    async def score(texts):
        for t in texts:
            t.encode("utf-8")  # what the tokenizer needs
        return fake_scores(texts), "v1"

    batch = [
        raw(0, b'{"text": "ok"}'),
        raw(1, b'{"text": "bad \\ud800 x"}'),
        raw(2, b'{"text": "fine", "meta": {"k": "\\udfff"}}'),
        raw(3, b'{"id": "\\ud800", "text": "x"}'),
        raw(4, b'{"text": "a real pair \\ud83d\\ude00 is fine"}'),
    ]
    out = asyncio.run(process_batch(batch, score, BatchLimits()))
    assert [k for k, _ in out.scored] == [b"t-0-0", b"t-0-4"]
    assert out.reasons == {"invalid_utf8": 3}
    assert len(out.scored) + len(out.dead) == len(batch)


def test_a_record_that_cannot_be_written_is_dead_lettered_alone():
    def broken_labels(texts):
        s = fake_scores(texts)
        s.labels = ["\udc80" if t == "poison" else "a" for t in texts]  # cannot be UTF-8 encoded
        return s

    async def score_broken(texts):
        return broken_labels(texts), "v1"

    batch = [raw(i, json.dumps({"text": t}).encode()) for i, t in enumerate(["one", "poison", "two"])]
    out = asyncio.run(process_batch(batch, score_broken, BatchLimits(score_retries=0)))
    assert len(out.scored) == 2 and out.reasons == {"scoring_failed": 1}
    assert len(out.labels) == len(out.scored) == len(out.is_ood) == len(out.event_ms)


def test_a_batch_sends_its_drift_signals_as_one_record_per_model_version():
    def with_signals(texts):
        s = fake_scores(texts)
        s.label_index = np.arange(len(texts))
        s.projection = np.ones((len(texts), 8))
        return s

    async def score(texts):
        if len(texts) > 1:  # the batch fails, so each message is scored alone...
            raise RuntimeError("batch failed")
        # ...and a model swap lands between the second and the third.
        return with_signals(texts), ("v1" if texts[0] in ("t0", "t1") else "v2")

    batch = [raw(i, json.dumps({"id": f"m{i}", "text": f"t{i}"}).encode()) for i in range(4)]
    batch.insert(2, raw(9, b"not json"))
    out = asyncio.run(process_batch(batch, score, BatchLimits(score_retries=0)))
    records = [json.loads(r) for r in signal_records(out)]
    assert [r["model_version"] for r in records] == ["v1", "v2"]
    assert [[s["id"] for s in r["signals"]] for r in records] == [["m0", "m1"], ["m2", "m3"]]
    first = records[0]["signals"][0]
    assert set(first) == {"id", "ood_score", "confidence", "label", "projection", "origin", "timestamp_ms"}
    assert first["origin"]["offset"] == 0 and len(first["projection"]) == 8
    # One record per batch whatever its size: the drift agent reads records, not messages.
    calls = []

    async def score_batch(texts):
        calls.append(len(texts))
        return with_signals(texts), "v1"

    big = [raw(i, json.dumps({"id": f"m{i}", "text": f"t{i}"}).encode()) for i in range(64)]
    out = asyncio.run(process_batch(big, score_batch, BatchLimits()))
    assert calls == [64] and len(signal_records(out)) == 1 and len(out.signals[0].signals) == 64


def foreign_scores(texts):
    """Every text foreign (OOD), with the embedding and projection its drift signal carries."""
    s = fake_scores(texts)
    n = len(texts)
    s.ood_scores = np.ones(n)
    s.label_index = np.zeros(n, dtype=int)
    s.projection = np.ones((n, 16))
    s.embeddings = np.random.default_rng(0).normal(size=(n, 384)).astype(np.float32)
    return s


def test_inputs_under_the_limit_whose_scored_record_is_over_it_are_dead_lettered():
    """Issue 37.1: a 600 KB id (key and value) and a 960 KB meta of numbers written 1E9, which
    re-encode as 1000000000.0 (3.1 MB), between good texts: no record over what Kafka takes."""

    async def score(texts):
        return foreign_scores(texts), "v1"

    big_id = "i" * 600_000
    numbers = b'{"text": "where is my parcel", "meta": {"n": [' + b",".join([b"1E9"] * 240_000) + b"]}}"
    assert len(numbers) < 1_000_000
    batch = [raw(i, json.dumps({"id": f"ok{i}", "text": f"t{i}"}).encode()) for i in range(3)]
    batch.insert(1, raw(10, json.dumps({"id": big_id, "text": "my card was declined"}).encode()))
    batch.insert(3, raw(11, numbers))
    out = asyncio.run(process_batch(batch, score, BatchLimits()))
    limits = BatchLimits().output
    assert sorted(json.loads(v)["id"] for _, v in out.scored) == ["ok0", "ok1", "ok2"]
    assert out.reasons == {"output_too_large": 2}
    assert len(out.labels) == len(out.is_ood) == len(out.event_ms) == len(out.scored_partitions) == 3
    dead = {json.loads(v)["origin"]["offset"]: json.loads(v) for _, v in out.dead}
    assert "'id' 600,000 (as key and in the value)" in dead[10]["detail"]
    assert "'meta' 3,120,007;" in dead[11]["detail"] and "send smaller 'id' and 'meta'" in dead[11]["detail"]
    assert dead[11]["value_bytes"] == len(numbers) and dead[11]["value_truncated"]
    for (key, value), cap in [
        *((r, limits.scored) for r in out.scored),
        *((r, limits.dead_letter) for r in out.dead),
    ]:
        assert len(key or b"") + len(value) <= cap
    signals = [s for r in signal_records(out) for s in json.loads(r)["signals"]]
    assert [s["id"] for s in signals] == ["ok0", "ok1", "ok2"]  # none for the dead-lettered


def test_every_record_fits_the_limits_the_topics_set():
    """Smaller topic limits: dead letters carry less of the value, scored records over the limit
    are dead-lettered, signals split over records that fit, long ids bounded in the signals."""

    async def score(texts):
        return foreign_scores(texts), "v1"

    limits = BatchLimits(output=OutputLimits(scored=80_000, dead_letter=70_000, signals=66_000))
    batch = [
        raw(i, json.dumps({"id": f"{i}-" + "x" * 5_000, "text": "🙂" * 400}).encode()) for i in range(64)
    ]
    batch[5] = raw(5, json.dumps({"id": "m5", "text": "hi", "meta": {"blob": "m" * 90_000}}).encode())
    batch[9] = raw(9, b"not json " + b"z" * 200_000)
    out = asyncio.run(process_batch(batch, score, limits))
    assert len(out.scored) == 62 and out.reasons == {"output_too_large": 1, "invalid_json": 1}
    for key, value in out.scored:
        assert len(key) + len(value) <= 80_000
    for key, value in out.dead:
        assert len(key or b"") + len(value) <= 70_000
        d = json.loads(value)
        assert d["value_truncated"] and 0 < len(base64.b64decode(d["value_b64"])) < d["value_bytes"]
    records = signal_records(out)
    assert len(records) > 1 and all(len(r) <= 66_000 for r in records)
    signals = [s for r in records for s in json.loads(r)["signals"]]
    assert [s["origin"]["offset"] for s in signals] == [i for i in range(64) if i not in (5, 9)]
    assert all(len(s["id"]) == 200 for s in signals) and len({s["id"] for s in signals}) == 62
    by_partition = signals_by_partition(out)[0]
    assert by_partition == records  # one input partition: the same records
