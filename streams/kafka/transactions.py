"""Exactly-once: one Kafka transaction per micro-batch and input partition, with its input offset.

A transactional producer alone is not enough. aiokafka speaks the first versions of the
transaction protocol, whose ``TxnOffsetCommit`` carries no consumer-group generation (no KIP-447
fencing), so the broker cannot tell a worker that lost its partitions (paused, cut off) from
their new owner. As Kafka Streams did before KIP-447, each input partition has its own
transactional id, ``streamscore.<group>.<topic>.<partition>``. Whoever takes a partition starts a
producer with that id first: that fences the previous owner's producer (its next transaction is
refused) and completes or aborts whatever transaction it left open. Only then is the partition's
committed offset read, so it is final; a message below it (a consumer that sought back before
the old owner's last transaction ended) is a repeat and is dropped.

Readers of the outputs must read ``read_committed`` to skip aborted transactions' records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from streamscore.schemas.messages import PRODUCER_MAX_REQUEST_BYTES
from streamscore.streams.kafka.client import group_offsets
from streamscore.streams.kafka.delivery import TOO_LARGE, Record, RecordsTooLarge, send_batched

log = logging.getLogger("streamscore.worker")

FENCED = (ProducerFenced, InvalidProducerEpoch)
# The broker and the producer no longer agree on the partition's sequence numbers (a batch the
# broker refused still counted on the producer's side): every later transaction would be refused
# the same way until the producer starts a new epoch, as the Java client does (KIP-360).
SEQUENCE_LOST = (OutOfOrderSequenceNumber, UnknownProducerId)


def transactional_prefix(group_id: str) -> str:
    """What every transactional id of a worker group starts with (the ACL to grant: docs/reliability.md, Kafka ACLs)."""
    return f"streamscore.{group_id}."


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    """The transactional id of one input partition: the same on every worker of the group.

    >>> transactional_id("streamscore", "texts", 2)
    'streamscore.streamscore.texts.2'
    """
    return f"{transactional_prefix(group_id)}{topic}.{partition}"


@dataclass
class PartitionTransactions:
    """The transactional producers of the input partitions this worker owns.

    ``assign`` and ``revoke`` follow the consumer group; ``is_new`` says whether a message is
    this owner's to score; ``commit`` writes a batch's records and its next offset atomically.
    """

    bootstrap_servers: str
    group_id: str
    topic: str
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # security: may hold a password
    producers: dict[int, AIOKafkaProducer] = field(default_factory=dict)
    starts: dict[int, asyncio.Future[int]] = field(default_factory=dict)  # committed offset once fenced in
    next_offset: dict[int, int] = field(default_factory=dict)  # the next message new to this owner
    fenced: int = 0  # batches dropped because another worker had taken their partition

    async def assign(self, partitions: Iterable[int]) -> None:
        """Fence the previous owners of ``partitions`` and read where each resumes."""
        new = [p for p in partitions if p not in self.producers]
        await asyncio.gather(*(self._open(p) for p in new))

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Close the producers of partitions that go (their batches are committed by then)."""
        for p in partitions:
            start = self.starts.pop(p, None)
            if start is not None and not start.done():
                start.cancel()  # a take waiting for it drops its messages
            self.next_offset.pop(p, None)
            producer = self.producers.pop(p, None)
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()

    async def close(self) -> None:
        await self.revoke(list(self.starts) + list(self.producers))

    def _start(self, partition: int) -> asyncio.Future[int]:
        if partition not in self.starts:
            self.starts[partition] = asyncio.get_running_loop().create_future()
        return self.starts[partition]

    def _producer(self, partition: int) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            transactional_id=transactional_id(self.group_id, self.topic, partition),
            max_request_size=PRODUCER_MAX_REQUEST_BYTES,  # as the at-least-once producer
            **self.options,
        )

    async def _open(self, partition: int) -> None:
        start = self._start(partition)
        producer = self._producer(partition)
        await producer.start()  # InitProducerId: fences the previous owner, ends its transaction
        self.producers[partition] = producer
        offset = await self._committed(partition)
        self.next_offset[partition] = offset
        if not start.done():
            start.set_result(offset)
        log.info("partition %d of %s: transactional, resuming at offset %d", partition, self.topic, offset)

    async def _renew(self, partition: int) -> None:
        """A new producer for a partition still ours, under the same transactional id: a new
        epoch, whose sequence numbers start afresh (SEQUENCE_LOST)."""
        old = self.producers.get(partition)
        if old is None:
            return  # revoked meanwhile
        with contextlib.suppress(Exception):
            await old.stop()
        producer = self._producer(partition)
        await producer.start()
        if self.producers.get(partition) is old:
            self.producers[partition] = producer
        else:  # revoked while it started
            await producer.stop()
        log.info("partition %d of %s: a new transactional producer (new epoch)", partition, self.topic)

    async def _committed(self, partition: int) -> int:
        tp = TopicPartition(self.topic, partition)
        found = await group_offsets(self.bootstrap_servers, self.group_id, [tp], self.options)
        return max(found.get(tp, -1), 0)

    async def is_new(self, partition: int, offset: int) -> bool:
        """Whether this owner should score the message at ``offset``: its partition is ours and
        no earlier transaction of ours or of a previous owner has committed it."""
        start = self._start(partition)
        try:
            await start  # the partition's producer fenced in
        except asyncio.CancelledError:
            if start.cancelled():  # revoked before it was ready: not ours
                return False
            raise
        if offset < self.next_offset.get(partition, 0):
            return False
        self.next_offset[partition] = offset + 1
        return True

    async def commit(self, partition: int, records: list[Record], next_offset: int) -> bool:
        """Write ``records`` and commit ``next_offset`` for ``partition`` in one transaction.

        Returns False when the partition is no longer ours (its producer was fenced or closed):
        the batch is then left to the new owner. Records the broker refuses as too large abort
        the transaction and raise :class:`RecordsTooLarge` (sent again they would be refused
        again). A transaction the broker refuses for another reason is aborted and tried again,
        with a growing pause.
        """
        delay = 0.5
        while True:
            producer = self.producers.get(partition)
            if producer is None:
                return False
            try:
                await producer.begin_transaction()
                sent = await send_batched(producer, records)
                results = await asyncio.gather(*(d.future for d in sent), return_exceptions=True)
                too_large = [
                    r
                    for d, res in zip(sent, results, strict=True)
                    if isinstance(res, TOO_LARGE)
                    for r in d.records
                ]
                if too_large:
                    await producer.abort_transaction()
                    await self._renew(partition)  # the refused batch still counted on its side
                    raise RecordsTooLarge(too_large)
                for res in results:
                    if isinstance(res, BaseException):
                        raise res
                offsets = {TopicPartition(self.topic, partition): next_offset}
                await producer.send_offsets_to_transaction(offsets, self.group_id)
                await producer.commit_transaction()
                return True
            except FENCED:
                self.fenced += 1
                log.warning(
                    "partition %d of %s now belongs to another worker; its batch (up to offset %d) "
                    "is left to the new owner",
                    partition,
                    self.topic,
                    next_offset,
                )
                await self.revoke([partition])
                return False
            except KafkaError as exc:
                log.warning(
                    "a transaction for partition %d was refused (%s: %s); aborting and retrying in %.1fs",
                    partition,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await producer.abort_transaction()  # raises when the producer cannot go on
                if isinstance(exc, SEQUENCE_LOST):
                    await self._renew(partition)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
