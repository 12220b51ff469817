"""The micro-batch logic: every message is scored or dead-lettered, even when scoring breaks."""

import asyncio
import json

import numpy as np

from models.scoring import Scores
from schemas.messages import Origin
from streams.worker.batch import BatchLimits, RawMessage, process_batch, signal_records


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
