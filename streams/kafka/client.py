"""Small Kafka clients for users: send texts to ``texts`` and read records back.

``tail`` reads with manual partition assignment and no consumer group, so watching a topic
never disturbs the workers' group or its committed offsets.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamscore.streams.kafka import internals


def text_messages(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Lines of JSON objects (or plain text) → input messages, with an id when missing."""
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = line
        msg = obj if isinstance(obj, dict) else {"text": line}
        if not msg.get("id"):
            msg = {"id": uuid.uuid4().hex, **msg}
        yield msg


async def produce(
    bootstrap_servers: str,
    topic: str,
    messages: Iterable[dict[str, Any]],
    options: dict[str, Any] | None = None,
) -> int:
    """Send messages keyed by id; returns how many the broker confirmed."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, **(options or {})
    )
    try:
        await producer.start()
        futures = []
        for msg in messages:
            value = json.dumps(msg, ensure_ascii=False).encode("utf-8")
            key = str(msg["id"]).encode("utf-8") if "id" in msg else None
            futures.append(await producer.send(topic, value=value, key=key))
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def wait_for_partitions(consumer: Any, topic: str, wait_s: float = 10.0, where: str = "") -> list[int]:
    """``topic``'s partitions, sorted, once the broker knows the topic; raises after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        parts = await internals.topic_partitions(consumer, topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} does not exist{where or ' on this broker'}")
        await asyncio.sleep(0.3)


async def read_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    from_beginning: bool = True,
    idle_timeout_s: float | None = None,
    limit: int | None = None,
    options: dict[str, Any] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield decoded records of ``topic`` until ``limit`` or ``idle_timeout_s`` without records."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",  # exactly-once outputs: skip aborted transactions
        **(options or {}),
    )
    try:
        await consumer.start()
        parts = await wait_for_partitions(consumer, topic, 30.0, where=f" on {bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        seen = 0
        last = time.monotonic()
        while limit is None or seen < limit:
            batch = await consumer.getmany(timeout_ms=200)
            if not batch:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            for tp in sorted(batch, key=lambda t: t.partition):
                for rec in batch[tp]:
                    try:
                        value = json.loads(rec.value) if rec.value else None
                    except ValueError:
                        value = {"undecodable": rec.value.decode("utf-8", "replace")}
                    yield {
                        "_partition": rec.partition,
                        "_offset": rec.offset,
                        "_timestamp": rec.timestamp,
                        "value": value,
                    }
                    seen += 1
                    if limit is not None and seen >= limit:
                        return
    finally:
        await consumer.stop()


def format_scored(rec: dict[str, Any]) -> str:
    """One human line for a scored record: id, label, confidence, OOD verdict."""
    v = rec.get("value") or {}
    if "label" not in v:
        return json.dumps(v, ensure_ascii=False)
    flag = "OOD " if v.get("is_ood") else "    "
    return (
        f"{flag}{v['label']:<28} p={v['confidence']:.2f} ood={v['ood_score']:+.3f} "
        f"(thr {v['ood_threshold']:+.3f}) {v['model_version']} id={v['id']}"
    )


def print_records(records: Iterable[dict[str, Any]], pretty: bool, out: IO[str] = sys.stdout) -> None:
    for rec in records:
        print(
            format_scored(rec) if pretty else json.dumps(rec["value"], ensure_ascii=False),
            file=out,
            flush=True,
        )


async def group_offsets(
    bootstrap_servers: str,
    group_id: str,
    partitions: list[TopicPartition] | None = None,
    options: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> dict[TopicPartition, int]:
    """A consumer group's committed offsets (-1: none), waiting while the broker is still setting
    up its group coordinator (a new Kafka cluster answers the first lookups "not available")."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import CoordinatorNotAvailableError, NotCoordinatorError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(options or {}))
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                found = await admin.list_consumer_group_offsets(group_id, partitions=partitions)
                return {tp: meta.offset for tp, meta in found.items()}
            except (CoordinatorNotAvailableError, NotCoordinatorError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.close()
