"""Plain aiokafka helpers for tests: send raw bytes, read a topic back (checked against its schema)."""

from __future__ import annotations

import asyncio
import json
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamscore.schemas.contract import schema_role, validate
from streamscore.streams.kafka.client import wait_for_partitions

# What workers write is checked against its topic's JSON Schema wherever a test reads it back:
# each of the first CHECK_ALL records of a read, then one in CHECK_EVERY (a check costs 30 times
# the read; the fault tests read tens of thousands of records of the same few kinds).
# The input topic is not: tests write bad input there on purpose.
OUTPUT_ROLES = {"texts.scored", "texts.dlq", "drift.signals", "drift.alerts"}
CHECK_ALL, CHECK_EVERY = 1_000, 10


async def _send(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def send_raw(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    asyncio.run(_send(bootstrap, topic, messages))


def send_json(bootstrap: str, topic: str, objs: list[dict]) -> None:
    send_raw(
        bootstrap, topic, [(str(o.get("id", "")).encode() or None, json.dumps(o).encode()) for o in objs]
    )


async def _collect(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float,
    settle_s: float,
    match,
    records: bool = False,
    distinct=None,
) -> list[dict]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    out: list[dict] = []
    role = schema_role(topic)
    role = role if role in OUTPUT_ROLES else None
    try:
        deadline = time.monotonic() + timeout_s
        try:
            parts = await wait_for_partitions(consumer, topic, timeout_s)
        except RuntimeError:  # no such topic yet: nothing to collect
            return out
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        settle_until = None
        read = 0
        keys: set = set()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                for r in recs:
                    v = json.loads(r.value)
                    read += 1
                    if role is not None and (read <= CHECK_ALL or read % CHECK_EVERY == 0):
                        validate(role, v)
                    if match(v):
                        out.append(_with_kafka_fields(v, r) if records else v)
                        if distinct is not None:
                            keys.add(distinct(v))
            if (len(keys) if distinct is not None else len(out)) >= expected:
                # Keep reading a little longer, so duplicates beyond the count would show.
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() > settle_until:
                    break
        return out
    finally:
        await consumer.stop()


def _with_kafka_fields(value: dict, rec) -> dict:
    return {"value": value, "timestamp": rec.timestamp, "partition": rec.partition, "offset": rec.offset}


def collect(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 90,
    settle_s: float = 2.0,
    match=lambda v: True,
    records: bool = False,
    distinct=None,
) -> list[dict]:
    """Values of ``topic`` that ``match``, waiting until ``expected`` arrived (then ``settle_s``
    more); ``records`` gives ``{"value", "timestamp", "partition", "offset"}`` instead.
    ``distinct`` (a value's key): wait until ``expected`` different keys arrived instead, so
    that repeats cannot end the wait before every key is in."""
    return asyncio.run(_collect(bootstrap, topic, expected, timeout_s, settle_s, match, records, distinct))
