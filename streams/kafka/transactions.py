"""Exactly-once: one Kafka transaction per input partition and round of micro-batches, with its input offset.

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

Whatever goes wrong in a transaction, the partition goes on. A refused or failed step aborts the
transaction by starting a new producer epoch under the same id (it also resets the sequence
numbers a refused batch left out of step), and before trying again the committed offset says
what happened: moved to the batch's end, the commit did land; moved elsewhere, another worker
owns the partition. A fenced producer (another worker started one under the id, or the broker
aborted a transaction that outlived ``transaction.timeout.ms``) marks its partition *lost*: its
messages are let go without output and the consumer group is asked to rebalance, after which
the partition's owner, perhaps this worker again, resumes from the committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
)

from streamscore.schemas.messages import PRODUCER_MAX_REQUEST_BYTES
from streamscore.streams.kafka.client import group_offsets
from streamscore.streams.kafka.delivery import TOO_LARGE, Record, RecordsTooLarge, send_batched

log = logging.getLogger("streamscore.worker")

FENCED = (ProducerFenced, InvalidProducerEpoch)
# What a transaction's steps raise when they fail (IllegalOperation: a producer left in a state
# where it cannot begin or end one). A new epoch follows each, as the Java client does after a
# refused batch (KIP-360): the broker and the producer may no longer agree on sequence numbers.
FAILED = (KafkaError, IllegalOperation)


def ignore_fenced_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Keep asyncio from logging, with a traceback, the fence we already handled.

    A fenced producer fails its pending record batches and its transaction, and aiokafka leaves
    the error on futures nobody awaits (a batch's drain waiter, the transaction's waiter); when
    they are collected, asyncio logs "Future exception was never retrieved: ProducerFenced" as
    if something had been missed. Every other report goes to the handler there was before.

    >>> loop, seen = asyncio.new_event_loop(), []
    >>> loop.set_exception_handler(lambda loop, context: seen.append(context["message"]))
    >>> ignore_fenced_leftovers(loop)
    >>> loop.call_exception_handler({"message": "Future exception was never retrieved", "exception": ProducerFenced()})
    >>> loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": ValueError()})
    >>> seen
    ['Task exception was never retrieved']
    >>> loop.close()
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "ignores_fenced_leftovers", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), FENCED) and "never retrieved" in context.get("message", ""):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.ignores_fenced_leftovers = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


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
    ``on_lost`` is told when a partition's producer was fenced while the group still gives it
    to this worker (the worker then asks the group to rebalance).
    """

    bootstrap_servers: str
    group_id: str
    topic: str
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # security: may hold a password
    on_lost: Callable[[int], None] = field(default=lambda partition: None, repr=False)
    make_producer: Callable[..., AIOKafkaProducer] = field(default=AIOKafkaProducer, repr=False)
    producers: dict[int, AIOKafkaProducer] = field(default_factory=dict)
    starts: dict[int, asyncio.Future[int]] = field(default_factory=dict)  # committed offset once fenced in
    next_offset: dict[int, int] = field(default_factory=dict)  # the next message new to this owner
    committed: dict[int, int] = field(default_factory=dict)  # the input offset our last commit wrote
    stale: set[int] = field(default_factory=set)  # partitions whose producer needs a new epoch first
    lost: set[int] = field(default_factory=set)  # fenced, awaiting the group's next word on them
    opening: set[int] = field(default_factory=set)  # being fenced in
    fenced: int = 0  # batches dropped because another worker had taken their partition
    retry_pause_s: float = 0.5  # the first pause before a refused transaction is tried again

    async def assign(self, partitions: Iterable[int]) -> None:
        """Fence the previous owners of ``partitions`` and read where each resumes: a producer
        per partition, started together, then one read of the group's offsets for them all."""
        new = [p for p in partitions if p not in self.producers and p not in self.opening]
        if not new:
            return
        starts = {p: self._start(p) for p in new}
        self.lost.difference_update(new)
        self.opening.update(new)
        try:
            started = await asyncio.gather(*(self._fence_in(p, starts[p]) for p in new))
            fenced_in = {
                p: producer for p, producer in zip(new, started, strict=True) if producer is not None
            }
            offsets = await self._committed_of(fenced_in, starts)
            for p, producer in fenced_in.items():
                if self.starts.get(p) is not starts[p] or starts[p].done():  # revoked meanwhile
                    await self._stop(producer)
                    continue
                self.producers[p] = producer
                self.next_offset[p] = self.committed[p] = offsets[p]
                starts[p].set_result(offsets[p])
            if fenced_in:
                log.info(
                    "%d partition(s) of %s transactional, resuming at %s",
                    len(fenced_in),
                    self.topic,
                    ", ".join(f"{p}: {offsets[p]}" for p in sorted(fenced_in)),
                )
        finally:
            self.opening.difference_update(new)

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Close the producers of partitions that go (their batches are committed by then)."""
        for p in partitions:
            start = self.starts.pop(p, None)
            if start is not None and not start.done():
                start.cancel()  # a take waiting for it drops its messages
            self.next_offset.pop(p, None)
            self.committed.pop(p, None)
            self.stale.discard(p)
            self.lost.discard(p)
            await self._stop(self.producers.pop(p, None))

    async def close(self) -> None:
        await self.revoke(set(self.starts) | set(self.producers) | self.lost)

    def _start(self, partition: int) -> asyncio.Future[int]:
        if partition not in self.starts:
            self.starts[partition] = asyncio.get_running_loop().create_future()
        return self.starts[partition]

    def _producer(self, partition: int) -> AIOKafkaProducer:
        return self.make_producer(
            bootstrap_servers=self.bootstrap_servers,
            transactional_id=transactional_id(self.group_id, self.topic, partition),
            max_request_size=PRODUCER_MAX_REQUEST_BYTES,  # as the at-least-once producer
            **self.options,
        )

    @staticmethod
    async def _stop(producer: AIOKafkaProducer | None) -> None:
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _fence_in(self, partition: int, start: asyncio.Future[int]) -> AIOKafkaProducer | None:
        """The partition's producer, started (which fences any earlier one); tried again while
        the broker cannot be reached; None if the partition goes meanwhile."""
        delay = self.retry_pause_s
        while not start.done():
            producer = self._producer(partition)
            try:
                await producer.start()  # InitProducerId: fences the previous owner, ends its transaction
                return producer
            except KafkaError as exc:
                await self._stop(producer)
                log.warning(
                    "partition %d of %s: could not fence it in (%s: %s); trying again in %.1fs",
                    partition, self.topic, type(exc).__name__, exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        return None

    async def _committed_of(
        self, producers: dict[int, AIOKafkaProducer], starts: dict[int, asyncio.Future[int]]
    ) -> dict[int, int]:
        """The committed offset of each partition of ``producers``, in one request, read once
        they are fenced in (so final); tried again while the broker cannot be reached."""
        delay = self.retry_pause_s
        while producers and not all(starts[p].done() for p in producers):
            try:
                return await self._group_offsets(producers)
            except KafkaError as exc:
                log.warning(
                    "could not read the committed offsets of %s (%s); trying again in %.1fs",
                    self.topic,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        return {p: 0 for p in producers}  # all revoked meanwhile: unused

    async def _renew(self, partition: int) -> None:
        """A new producer for a partition still ours, under the same transactional id: a new
        epoch, which aborts the transaction left open and starts the sequence numbers afresh."""
        old = self.producers.get(partition)
        if old is None:
            return  # revoked meanwhile
        await self._stop(old)
        producer = self._producer(partition)
        try:
            await producer.start()
        except BaseException:
            await self._stop(producer)
            raise
        if self.producers.get(partition) is old:
            self.producers[partition] = producer
            self.stale.discard(partition)
            log.info("partition %d of %s: a new transactional producer (new epoch)", partition, self.topic)
        else:  # revoked while it started
            await self._stop(producer)

    async def _lose(self, partition: int, next_offset: int) -> None:
        """Our producer of ``partition`` was fenced: let its messages go until the group speaks."""
        self.fenced += 1
        ignore_fenced_leftovers(asyncio.get_running_loop())
        log.warning(
            "partition %d of %s now belongs to another worker, or its transaction outlived the "
            "broker's timeout; its batch (up to offset %d) is left to its owner and the group is "
            "asked to rebalance",
            partition,
            self.topic,
            next_offset,
        )
        self.starts.pop(partition, None)
        self.next_offset.pop(partition, None)
        self.committed.pop(partition, None)
        self.stale.discard(partition)
        self.lost.add(partition)
        await self._stop(self.producers.pop(partition, None))
        self.on_lost(partition)

    async def _group_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The group's committed offset of each of ``partitions`` (0 where none), in one request."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        found = await group_offsets(self.bootstrap_servers, self.group_id, tps, self.options)
        return {tp.partition: max(found.get(tp, -1), 0) for tp in tps}

    async def _committed(self, partition: int) -> int:
        return (await self._group_offsets([partition]))[partition]

    async def is_new(self, partition: int, offset: int) -> bool:
        """Whether this owner should score the message at ``offset``: its partition is ours and
        no earlier transaction of ours or of a previous owner has committed it."""
        if partition in self.lost:
            return False  # its owner, after the rebalance, resumes from the committed offset
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
        the batch is then left to the owner. Records the broker refuses as too large abort
        the transaction and raise :class:`RecordsTooLarge` (sent again they would be refused
        again). A transaction that fails for another reason is aborted (a new producer epoch)
        and tried again, with a growing pause, unless the committed offset shows it landed.
        """
        delay = self.retry_pause_s
        while True:
            try:
                if partition in self.stale:
                    await self._renew(partition)
                    landed = await self._landed(partition, next_offset)
                    if landed is not None:
                        return landed
                producer = self.producers.get(partition)
                if producer is None:
                    return False
                await self._transact(producer, partition, records, next_offset)
                self.committed[partition] = next_offset
                return True
            except FENCED:
                await self._lose(partition, next_offset)
                return False
            except RecordsTooLarge:
                self.stale.add(partition)  # the refused batch still counted on the producer's side
                raise
            except FAILED as exc:
                self.stale.add(partition)
                log.warning(
                    "a transaction for partition %d was refused (%s: %s); aborting and retrying in %.1fs",
                    partition,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _landed(self, partition: int, next_offset: int) -> bool | None:
        """After a failed transaction and a new epoch: True if it committed after all, False if
        another worker has committed the partition since (it is no longer ours), None if not."""
        offset = await self._committed(partition)
        if offset == next_offset:
            self.committed[partition] = offset
            return True
        if offset != self.committed.get(partition, offset):
            await self._lose(partition, next_offset)
            return False
        return None

    async def _transact(
        self, producer: AIOKafkaProducer, partition: int, records: list[Record], next_offset: int
    ) -> None:
        await producer.begin_transaction()
        sent = await send_batched(producer, records)
        results = await asyncio.gather(*(d.future for d in sent), return_exceptions=True)
        too_large = [
            r for d, res in zip(sent, results, strict=True) if isinstance(res, TOO_LARGE) for r in d.records
        ]
        if too_large:
            raise RecordsTooLarge(too_large)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        offsets = {TopicPartition(self.topic, partition): next_offset}
        await producer.send_offsets_to_transaction(offsets, self.group_id)
        await producer.commit_transaction()
