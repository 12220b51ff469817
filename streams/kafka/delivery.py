"""Getting a micro-batch's records to the broker: one Kafka batch per partition, confirmed.

Faust's ``Topic.send`` does per record what a micro-batch needs once: a FutureMessage, its
callbacks and a future each, a large share of the event loop's time (docs/performance-log.md). Here the records are appended to aiokafka
``BatchBuilder``\\ s, one per topic partition (more when one fills), each submitted with one
``send_batch`` and confirmed by one future. Keys go to the partition the default Kafka
partitioner picks (murmur2, as the Java client and Faust's producer do), so a keyed record
lands where any other producer would put it; records of one partition keep their order.

>>> plan = plan_batches([("t", b"a", b"1"), ("t", b"b", b"2"), ("t", b"a", b"3")], {"t": [0, 1, 2]})
>>> [(tp, [v for _, _, v in recs]) for tp, recs in plan.items()]
[(('t', 1), [b'1', b'3']), (('t', 2), [b'2'])]
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.partitioner import DefaultPartitioner

log = logging.getLogger("streamscore.worker")

Record = tuple[str, bytes | None, bytes]
"""(topic, key, value)"""

_partition = DefaultPartitioner()
# Bigger records (a dead letter of a large input) are sent one by one, each in its own request.
SEND_ALONE_BYTES = 16 * 1024
# The broker's answer to a record (batch) over its topic's max.message.bytes: sent again, it
# would be refused again, and the partition behind it would wait forever.
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


class RecordsTooLarge(Exception):
    """The broker refused ``records`` as bigger than their topic takes."""

    def __init__(self, records: list[Record]) -> None:
        super().__init__(f"{len(records)} record(s) refused as too large for their topic")
        self.records = records


@dataclass
class Delivery:
    """Records handed to the producer together, and the future the broker's answer sets."""

    records: list[Record]
    future: Any


def plan_batches(
    records: list[Record], partitions: dict[str, list[int]]
) -> dict[tuple[str, int], list[Record]]:
    """The records of each (topic, partition), in their order; ``partitions``: each topic's,
    sorted by id (the partitioner indexes into that list)."""
    plan: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        topic, key, _ = record
        all_ = partitions[topic]
        plan.setdefault((topic, _partition(key, all_, all_)), []).append(record)
    return plan


def _too_big_to_batch(record: Record) -> bool:
    _, key, value = record
    return len(value) + len(key or b"") > SEND_ALONE_BYTES


async def send_batched(producer: Any, records: list[Record]) -> list[Delivery]:
    """Hand ``records`` to ``producer`` (an ``AIOKafkaProducer``) a partition batch at a time;
    waits only while the producer's buffer is full (backpressure), not for the broker."""
    partitions = {t: sorted(await producer.partitions_for(t)) for t in {r[0] for r in records}}
    deliveries = []
    for (topic, partition), recs in plan_batches(records, partitions).items():
        start = 0
        while start < len(recs):
            _, key, value = recs[start]
            if _too_big_to_batch(recs[start]):
                # As before batching: the producer's size check refuses what is too big to send.
                future = await producer.send(topic, value=value, key=key, partition=partition)
                deliveries.append(Delivery(recs[start : start + 1], future))
                start += 1
                continue
            builder = producer.create_batch()
            end = start
            while (
                end < len(recs)
                and not _too_big_to_batch(recs[end])
                and builder.append(key=recs[end][1], value=recs[end][2], timestamp=None) is not None
            ):
                end += 1
            builder.close()
            deliveries.append(
                Delivery(recs[start:end], await producer.send_batch(builder, topic, partition=partition))
            )
            start = end
    return deliveries


async def deliver(producer: Any, records: list[Record], sent: list[Delivery] | None = None) -> list[Record]:
    """Wait until the broker has confirmed every record (``sent``: already handed over),
    resending what it refused, with a growing pause, until it takes them; but records it refused
    as too large for their topic are returned, not sent again (they would never fit)."""
    delay = 0.5
    pending = records
    too_large: list[Record] = []
    while pending:
        sent = sent if sent is not None else await send_batched(producer, pending)
        results = await asyncio.gather(*(d.future for d in sent), return_exceptions=True)
        failed = []
        for d, res in zip(sent, results, strict=True):
            if isinstance(res, TOO_LARGE):
                too_large += d.records
            elif isinstance(res, BaseException):
                failed += d.records
        if failed:
            errors = {type(res).__name__ for res in results if isinstance(res, BaseException)}
            log.warning(
                "%d of %d records not confirmed by the broker (%s); resending in %.1fs",
                len(failed),
                len(pending),
                ", ".join(sorted(errors)),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        pending, sent = failed, None
    return too_large
