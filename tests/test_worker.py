"""A real worker against a real broker: valid texts scored exactly once, bad ones dead-lettered."""

import base64
import hashlib
import json
import random
from collections import Counter

import pytest

from tests.conftest import small_clinc_rows
from tests.kafka_helpers import collect, send_json, send_raw

pytestmark = pytest.mark.integration

SCORED_FIELDS = {
    "id",
    "source",
    "ts",
    "meta",
    "label",
    "confidence",
    "top_k",
    "ood_score",
    "is_ood",
    "ood_threshold",
    "model_version",
    "scored_at",
    "latency_ms",
    "origin",
}


def test_valid_texts_scored_exactly_once(worker, trained_registry):
    from streamscore.models.registry import Registry

    artifact = Registry(trained_registry).load()
    rows = [r for r in small_clinc_rows() if r["split"] == "test" and r["label"] != "oos"][:120]
    msgs = [
        {
            "id": f"v{i}",
            "text": r["text"],
            "source": "test",
            "ts": 1767225600000 + i,
            "meta": {"true": r["label"]},
        }
        for i, r in enumerate(rows)
    ]
    send_json(worker.bootstrap, worker.topics["input"], msgs)
    kept = collect(
        worker.bootstrap,
        worker.topics["scored"],
        len(msgs),
        match=lambda r: r["id"].startswith("v"),
        records=True,
    )
    out = [k["value"] for k in kept]
    # Batches are scored on several threads at once, but their outputs go out in input order:
    # records of one input partition keep their order within each output partition.
    last: dict[tuple[int, int], int] = {}
    for k in sorted(kept, key=lambda k: (k["partition"], k["offset"])):
        origin = (k["partition"], k["value"]["origin"]["partition"])
        assert k["value"]["origin"]["offset"] > last.get(origin, -1), "outputs out of input order"
        last[origin] = k["value"]["origin"]["offset"]
    counts = Counter(r["id"] for r in out)
    assert set(counts) == {m["id"] for m in msgs}
    assert max(counts.values()) == 1, "an input was scored twice"
    for rec in out:
        assert set(rec) == SCORED_FIELDS
        assert rec["label"] in artifact.head.labels
        assert rec["model_version"] == artifact.version
        assert rec["ood_threshold"] == pytest.approx(artifact.ood_threshold, abs=1e-5)
        assert rec["is_ood"] == (rec["ood_score"] > rec["ood_threshold"])
        assert len(rec["top_k"]) == 3 and rec["top_k"][0]["label"] == rec["label"]
        assert rec["origin"]["topic"] == worker.topics["input"]
        assert rec["source"] == "test" and rec["meta"]["true"]
    accuracy = sum(r["label"] == r["meta"]["true"] for r in out) / len(out)
    assert accuracy > 0.85


BAD = {
    "invalid_json": b"{this is not json",
    "invalid_utf8": b'{"text": "caf\xe9"}',
    "missing_text": b'{"id": "x"}',
    "empty_text": b'{"text": "  "}',
    "text_too_long": json.dumps({"text": "a" * 501}).encode(),
    "wrong_type": b'{"text": 42}',
    "not_an_object": b"[1, 2, 3]",
    "empty_message": b"",
}


def test_each_kind_of_bad_input_is_dead_lettered_and_worker_continues(worker):
    send_raw(worker.bootstrap, worker.topics["input"], [(f"bad-{k}".encode(), v) for k, v in BAD.items()])
    send_json(
        worker.bootstrap, worker.topics["input"], [{"id": "after-bad", "text": "what is my account balance"}]
    )
    dead = collect(
        worker.bootstrap, worker.topics["dlq"], len(BAD), match=lambda d: (d["key"] or "").startswith("bad-")
    )
    by_key = {d["key"]: d for d in dead}
    assert len(dead) == len(BAD)
    for kind, value in BAD.items():
        d = by_key[f"bad-{kind}"]
        assert d["reason"] == kind, d
        assert base64.b64decode(d["value_b64"]) == value
        assert d["value_bytes"] == len(value) and d["value_truncated"] is False
        assert d["origin"]["topic"] == worker.topics["input"] and d["origin"]["offset"] >= 0
        assert d["detail"]
    scored = collect(
        worker.bootstrap, worker.topics["scored"], 1, settle_s=0, match=lambda r: r["id"] == "after-bad"
    )
    assert len(scored) == 1
    assert worker.process.poll() is None


def test_messages_near_the_size_limit_neither_stop_the_worker_nor_get_lost(worker):
    # Bad and 900 kB: its dead letter would be 1.2 MB with all of it, more than Kafka takes.
    big_bad = b"not json " + bytes(random.Random(3).choice(b"abcdef") for _ in range(900_000))
    # Valid and just under max_message_bytes: its scored record is a little over 1,000,000 bytes.
    meta = {"blob": "m" * 999_000}
    big_ok = json.dumps({"id": "near-limit-ok", "text": "where is my parcel", "meta": meta}).encode()
    assert 999_000 < len(big_ok) < 1_000_000
    send_raw(
        worker.bootstrap, worker.topics["input"], [(b"near-limit-bad", big_bad), (b"near-limit-ok", big_ok)]
    )
    send_json(
        worker.bootstrap, worker.topics["input"], [{"id": "after-near-limit", "text": "freeze my card"}]
    )
    dead = collect(
        worker.bootstrap, worker.topics["dlq"], 1, settle_s=0, match=lambda d: d["key"] == "near-limit-bad"
    )
    assert len(dead) == 1
    d = dead[0]
    assert d["reason"] == "invalid_json" and d["value_truncated"] is True
    assert d["value_bytes"] == len(big_bad)
    assert base64.b64decode(d["value_b64"]) == big_bad[:700_000]
    assert d["value_sha256"] == hashlib.sha256(big_bad).hexdigest()
    ids = {"near-limit-ok", "after-near-limit"}
    scored = collect(worker.bootstrap, worker.topics["scored"], 2, settle_s=0, match=lambda r: r["id"] in ids)
    assert {r["id"] for r in scored} == ids
    assert next(r for r in scored if r["id"] == "near-limit-ok")["meta"] == meta
    assert worker.process.poll() is None


def test_mixed_stream_of_1000_loses_nothing(worker):
    rng = random.Random(7)
    rows = [r for r in small_clinc_rows() if r["split"] in ("test", "val")]
    bad_values = list(BAD.values())
    messages, n_bad = [], 0
    for i in range(1000):
        key = f"mix-{i}".encode()
        if rng.random() < 0.15:
            messages.append((key, bad_values[i % len(bad_values)]))
            n_bad += 1
        else:
            messages.append((key, json.dumps({"id": f"mix-{i}", "text": rng.choice(rows)["text"]}).encode()))
    send_raw(worker.bootstrap, worker.topics["input"], messages)
    scored = collect(
        worker.bootstrap,
        worker.topics["scored"],
        1000 - n_bad,
        timeout_s=180,
        match=lambda r: r["id"].startswith("mix-"),
    )
    dead = collect(
        worker.bootstrap,
        worker.topics["dlq"],
        n_bad,
        timeout_s=60,
        match=lambda d: (d["key"] or "").startswith("mix-"),
    )
    assert len({r["id"] for r in scored}) == len(scored) == 1000 - n_bad
    assert len({d["key"] for d in dead}) == len(dead) == n_bad
    assert {r["id"] for r in scored} | {d["key"] for d in dead} == {f"mix-{i}" for i in range(1000)}
