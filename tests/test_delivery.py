"""Records sent a partition batch at a time arrive once each, in order, where a plain producer
would have put them, on a real broker."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaProducer

from streamscore.streams.kafka.delivery import SEND_ALONE_BYTES, deliver, send_batched
from streamscore.streams.kafka.topics import ensure_topics
from tests.kafka_helpers import collect


async def _send_both_ways(bootstrap: str, batched: list, plain_topic: str, keys: list[bytes]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = await send_batched(producer, batched)
        await deliver(producer, batched, sent)
        # The reference: one plain send per key, as any other client would produce them.
        plain = [json.dumps({"key": k.decode()}).encode() for k in keys]
        await asyncio.gather(
            *[await producer.send(plain_topic, value=v, key=k) for k, v in zip(keys, plain, strict=True)]
        )
        return len(sent)
    finally:
        await producer.stop()


def test_batched_records_arrive_once_in_order_on_the_default_partition(kafka):
    tag = uuid.uuid4().hex[:8]
    scored, signals, plain = f"d-scored-{tag}", f"d-signals-{tag}", f"d-plain-{tag}"
    asyncio.run(ensure_topics(kafka, {scored: 3, signals: 1, plain: 3}))
    keys = [f"user-{k}".encode() for k in range(7)]
    # Keyed records; one of them a dead letter of a large input, bigger than any batch, so it
    # goes on its own between the others. ``seq`` is the position in what the worker sends.
    keyed = [keys[i % 7] for i in range(300)]
    keyed.insert(150, b"user-3")
    records = [
        (
            scored,
            k,
            json.dumps(
                {"key": k.decode(), "seq": i, "pad": "x" * (2 * SEND_ALONE_BYTES if i == 150 else 0)}
            ).encode(),
        )
        for i, k in enumerate(keyed)
    ]
    records += [(signals, None, json.dumps({"seq": 1000 + i}).encode()) for i in range(3)]

    n_deliveries = asyncio.run(_send_both_ways(kafka, records, plain, keys))
    assert n_deliveries < 20  # batches, not 304 single sends

    got = collect(kafka, scored, expected=301, records=True, settle_s=3)
    assert len(got) == 301
    seqs = [r["value"]["seq"] for r in got]
    assert sorted(seqs) == list(range(301))  # each once, the big one included
    reference = {r["value"]["key"]: r["partition"] for r in collect(kafka, plain, expected=7, records=True)}
    by_key: dict[str, list[tuple[int, int, int]]] = {}
    for r in got:
        by_key.setdefault(r["value"]["key"], []).append((r["partition"], r["offset"], r["value"]["seq"]))
    assert len({p for rows in by_key.values() for p, _, _ in rows}) > 1  # spread over partitions
    for key, rows in by_key.items():
        assert {p for p, _, _ in rows} == {reference[key]}, f"{key} not where a plain send puts it"
        in_log_order = [seq for _, _, seq in sorted(rows)]
        assert in_log_order == sorted(in_log_order), f"{key} out of order"
    assert [r["seq"] for r in collect(kafka, signals, expected=3, settle_s=1)] == [1000, 1001, 1002]
