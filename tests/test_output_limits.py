"""Inputs under the broker's limit whose outputs would be over it (issue 37, item 1): a real worker
dead-letters them as ``output_too_large`` and the stream goes on, under both guarantees, and every
record it writes fits its topic's ``max.message.bytes``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import WorkerHandle, small_clinc_rows, start_worker, stop_worker
from tests.kafka_helpers import collect, send_raw
from tests.test_reliability import report, start

pytestmark = pytest.mark.integration

# The two inputs of the issue: a 600 KB id (its scored record carries it as key and in the
# value) and a 960 KB meta of numbers written 1E9, which re-encode as 1000000000.0 (3.1 MB).
BIG_ID = json.dumps({"id": "i" * 600_000, "text": "my card was declined"}).encode()
NUMBERS = b'{"text": "where is my parcel", "meta": {"n": [' + b",".join([b"1E9"] * 240_000) + b"]}}"


def good(prefix: str, n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    rows = [r for r in small_clinc_rows() if r["label"] != "oos"]
    return [
        (f"{prefix}-{i}".encode(), json.dumps({"id": f"{prefix}-{i}", "text": rows[i]["text"]}).encode())
        for i in range(start, start + n)
    ]


@dataclass
class Outcome:
    """What a worker wrote for the messages of one prefix, and whether it was still running."""

    scored: list[dict]
    dead: list[dict]
    alive: bool

    def report(self, test: str, good: set[str], dead_keys: set[str]) -> None:
        """Lost and duplicated ids as a ``read_committed`` reader sees them, for the reliability
        table (docs/reliability.md)."""
        s, d = Counter(r["id"] for r in self.scored), Counter(x["key"] for x in self.dead)
        lost = len(good - set(s)) + len(dead_keys - set(d))
        duplicated = sum(c - 1 for c in s.values()) + sum(c - 1 for c in d.values())
        report(
            test,
            sent=len(good) + len(dead_keys),
            lost=lost,
            duplicated=duplicated,
            dead=dict(Counter(x["reason"] for x in self.dead)),
        )


def outcome(
    kafka: str, worker: WorkerHandle, messages: list[tuple[bytes, bytes]], n_scored: int, n_dead: int
) -> Outcome:
    """Send ``messages`` (keys ``<prefix>-...``), read back the scored and dead-letter records of
    their prefix (a settle after the counts, so that repeats would show), then stop the worker."""
    prefix = messages[0][0].decode().split("-")[0]
    try:
        send_raw(kafka, worker.topics["input"], messages)
        scored = collect(
            kafka,
            worker.topics["scored"],
            n_scored,
            timeout_s=300,
            settle_s=3,
            match=lambda r: r["id"].startswith(prefix + "-"),
        )
        dead = collect(
            kafka,
            worker.topics["dlq"],
            n_dead,
            timeout_s=60,
            settle_s=1,
            match=lambda d: d["key"].startswith(prefix + "-"),
        )
        return Outcome(scored, dead, worker.process.poll() is None)
    finally:
        stop_worker(worker)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_inputs_whose_scored_record_is_too_large_are_dead_lettered_and_the_stream_goes_on(
    kafka, trained_registry, tmp_path, transactions, guarantee
):
    """200 good texts, the two inputs, 200 good texts: all 400 scored once, both dead-lettered
    (before: the worker stopped at-least-once, and retried its transaction forever exactly-once)."""
    if guarantee == "exactly_once" and not transactions:
        pytest.skip("the session's broker runs no transactions (embedded): set KAFKA_HOME to run this")
    assert len(BIG_ID) < 1_000_000 and len(NUMBERS) < 1_000_000
    worker, _ = start(kafka, trained_registry, tmp_path, processing_guarantee=guarantee)
    messages = good("lim", 200) + [(b"lim-big-id", BIG_ID), (b"lim-numbers", NUMBERS)]
    out = outcome(kafka, worker, messages + good("lim", 200, start=200), 400, 2)
    out.report(
        f"outputs_too_large_{guarantee}", {f"lim-{i}" for i in range(400)}, {"lim-big-id", "lim-numbers"}
    )
    scored, dead = out.scored, out.dead
    counts = Counter(r["id"] for r in scored)
    assert set(counts) == {f"lim-{i}" for i in range(400)} and max(counts.values()) == 1
    by_key = {d["key"]: d for d in dead}
    assert sorted(by_key) == ["lim-big-id", "lim-numbers"] and len(dead) == 2
    for key, value in ((b"lim-big-id", BIG_ID), (b"lim-numbers", NUMBERS)):
        d = by_key[key.decode()]
        assert d["reason"] == "output_too_large", d["detail"]
        assert d["value_sha256"] == hashlib.sha256(value).hexdigest() and d["value_bytes"] == len(value)
    assert "'id' 600,000 (as key and in the value)" in by_key["lim-big-id"]["detail"]
    assert "'meta' 3,120,007" in by_key["lim-numbers"]["detail"]
    assert out.alive, worker.log()[-3000:]
    assert "MessageSizeTooLargeError" not in worker.log()


async def _create(bootstrap: str, topics: dict[str, int], partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(t, partitions, 1, topic_configs={"max.message.bytes": str(n)})
                for t, n in topics.items()
            ]
        )
    finally:
        await admin.close()


def test_the_worker_keeps_to_each_topics_own_max_message_bytes(kafka, trained_registry, tmp_path):
    """Topics created with smaller limits: a scored record over the scored topic's is dead-lettered,
    one under it is scored; a dead letter carries only as much of the value as its topic takes."""
    tag = uuid.uuid4().hex[:8]
    asyncio.run(_create(kafka, {f"texts.scored-{tag}": 150_000, f"texts.dlq-{tag}": 100_000}))
    worker, _ = start(kafka, trained_registry, tmp_path, tag=tag)
    fits = json.dumps({"id": "small-fits", "text": "freeze my card", "meta": {"b": "m" * 100_000}})
    over = json.dumps({"id": "small-over", "text": "freeze my card", "meta": {"b": "m" * 200_000}})
    bad = b"not json " + b"z" * 300_000
    messages = [(b"small-fits", fits.encode()), (b"small-over", over.encode()), (b"small-bad", bad)]
    out = outcome(kafka, worker, messages + good("small", 20), 21, 2)
    scored, dead = out.scored, out.dead
    assert {r["id"] for r in scored} == {"small-fits"} | {f"small-{i}" for i in range(20)}
    by_key = {d["key"]: d for d in dead}
    assert by_key["small-over"]["reason"] == "output_too_large"
    assert "more than the 149,900 the scored topic takes" in by_key["small-over"]["detail"]
    assert by_key["small-bad"]["reason"] == "invalid_json" and by_key["small-bad"]["value_truncated"]
    for d in dead:
        assert (
            len(json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode()) + len(d["key"]) <= 99_900
        )
    assert out.alive, worker.log()[-3000:]


def test_a_dead_letter_topic_too_small_for_dead_letters_stops_the_start_with_one_line(
    kafka, trained_registry, tmp_path
):
    tag = uuid.uuid4().hex[:8]
    asyncio.run(_create(kafka, {f"texts.dlq-{tag}": 10_000}, partitions=1))
    worker = start_worker(kafka, trained_registry, tmp_path, tag=tag, metrics_port="0")
    code = worker.process.wait(timeout=180)
    log = worker.log()
    assert code == 1, log[-2000:]
    said = log.strip().splitlines()[-1]
    assert said.startswith(
        f"streamscore worker: error: topic 'texts.dlq-{tag}' takes records of at most 10,000 bytes"
    )
    assert "max.message.bytes=1048588" in said and "Traceback" not in log


async def _lower(bootstrap: str, topic: str, max_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(max_bytes)}
        )
        await admin.alter_configs([resource])
    finally:
        await admin.close()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_limit_lowered_while_the_worker_runs_dead_letters_what_no_longer_fits(
    kafka, trained_registry, tmp_path, transactions, broker_kind, guarantee
):
    """The broker refuses a record the worker fitted to the limit it read at start: the worker
    reads the limits again and dead-letters it (before: resent or retried without end)."""
    if broker_kind == "embedded":
        pytest.skip("the embedded broker enforces no max.message.bytes: set KAFKA_HOME to run this")
    if guarantee == "exactly_once" and not transactions:
        pytest.skip("the session's broker runs no transactions")
    worker, _ = start(kafka, trained_registry, tmp_path, processing_guarantee=guarantee)
    try:
        send_raw(kafka, worker.topics["input"], good("low", 20))
        collect(
            kafka,
            worker.topics["scored"],
            20,
            timeout_s=120,
            settle_s=0,
            match=lambda r: r["id"].startswith("low-"),
        )
        asyncio.run(_lower(kafka, worker.topics["scored"], 100_000))
        time.sleep(2)  # the brokers apply the topic's new config
    except BaseException:
        stop_worker(worker)
        raise
    over = json.dumps({"id": "low-over", "text": "freeze my card", "meta": {"b": "m" * 150_000}}).encode()
    out = outcome(kafka, worker, [(b"low-over", over)] + good("low", 20, start=20), 40, 1)
    out.report(f"limit_lowered_while_running_{guarantee}", {f"low-{i}" for i in range(40)}, {"low-over"})
    scored, dead = out.scored, out.dead
    counts = Counter(r["id"] for r in scored)
    assert set(counts) == {f"low-{i}" for i in range(40)}, worker.log()[-3000:]
    if guarantee == "exactly_once":
        assert max(counts.values()) == 1
    assert len(dead) == 1 and dead[0]["reason"] == "output_too_large"
    assert "more than the 99,900 the scored topic takes" in dead[0]["detail"]
    assert "refused 1 record(s) as too large" in worker.log()
    assert out.alive, worker.log()[-3000:]
