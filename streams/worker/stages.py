"""The score agent's stages: intake → score → send → confirm, joined by bounded queues.

A pipeline, so the encoder never waits for Kafka: the intake fills the next batch while
``in_flight`` batches are scored at once (their forward passes share the encoder's threads:
models/encode_pool.py), their outputs are sent in input order, and the broker confirms one
batch while the next ones are scored. A batch's messages are acknowledged (so their offsets may
be committed) only once all its outputs are confirmed. Every queue is bounded: a slow broker
stops the intake (backpressure). Nothing here knows Faust: messages arrive as
:class:`~models.batch.RawMessage` with an opaque handle each, which goes back to
``ack`` once confirmed.

>>> async def demo():
...     intake = Intake(batch_size=3)
...     await intake.put(Take([raw(0), raw(1)], ["h0", "h1"]))
...     await intake.put(Take([raw(2)], ["h2"]))
...     await intake.put(Take([raw(3), raw(4)], ["h3", "h4"]))
...     first, second = await intake.next_batch(), await intake.next_batch()
...     return [m.origin.offset for m in first.messages], second.handles
>>> asyncio.run(demo())
([0, 1, 2], ['h3', 'h4'])
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from streamscore.models.batch import BatchOutput, RawMessage, signal_records, signals_by_partition
from streamscore.schemas.messages import Origin
from streamscore.streams.kafka.delivery import Delivery, Record, RecordsTooLarge, deliver, send_batched
from streamscore.streams.kafka.transactions import PartitionTransactions
from streamscore.streams.worker.offsets import OffsetTracker

log = logging.getLogger("streamscore.worker")

INTAKE_TAKES = 8  # takes queued before the intake blocks Faust (backpressure)
SENT_UNCONFIRMED = 2  # batches handed to the producer and not yet confirmed
ROUND_BATCHES = 16  # scored batches an exactly-once round may commit together (transact_stage)


def raw(offset: int, partition: int = 0) -> RawMessage:
    """A message for examples and tests: ``{"id": "m<offset>", "text": "t<offset>"}``."""
    value = f'{{"id": "m{offset}", "text": "t{offset}"}}'.encode()
    return RawMessage(key=f"m{offset}".encode(), value=value, origin=Origin("texts", partition, offset))


@dataclass(slots=True)
class Take:
    """What one Faust ``take`` handed over: messages and, per message, a handle to acknowledge."""

    messages: list[RawMessage]
    handles: list[Any]


@dataclass(slots=True)
class Batch:
    """One micro-batch: the messages scored together, their handles, when it was formed."""

    messages: list[RawMessage]
    handles: list[Any]
    taken_at: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Scoring:
    """A batch handed to the scorers; ``job`` never raises (models/batch.py)."""

    batch: Batch
    job: asyncio.Future[BatchOutput]


@dataclass(slots=True)
class Sent:
    """A scored batch whose records the producer holds, awaiting the broker's confirmation."""

    batch: Batch
    out: BatchOutput
    records: list[Record]
    deliveries: list[Delivery]


@dataclass(frozen=True)
class OutputTopics:
    """Where a batch's outputs go."""

    scored: str
    dlq: str
    signals: str

    def records(self, out: BatchOutput) -> list[Record]:
        return (
            [(self.scored, k, v) for k, v in out.scored]
            + [(self.dlq, k, v) for k, v in out.dead]
            + [(self.signals, None, v) for v in signal_records(out)]
        )

    def records_by_partition(self, out: BatchOutput) -> dict[int, list[Record]]:
        """The batch's records per input partition they came from (one transaction each)."""
        parts: dict[int, list[Record]] = {}
        for (k, v), p in zip(out.scored, out.scored_partitions, strict=True):
            parts.setdefault(p, []).append((self.scored, k, v))
        for (dead_key, dead), p in zip(out.dead, out.dead_partitions, strict=True):
            parts.setdefault(p, []).append((self.dlq, dead_key, dead))
        for p, signals in signals_by_partition(out).items():
            parts.setdefault(p, []).extend((self.signals, None, v) for v in signals)
        return parts


class Intake:
    """Takes from Faust, merged into micro-batches of at most ``batch_size`` messages.

    Small batches embed at up to twice the cost per text, so takes that queue up while the
    scorers are busy are merged into the next batch rather than dispatched one by one; a take
    that does not fit is held, whole and in order, for the batch after.
    """

    def __init__(self, batch_size: int, max_takes: int = INTAKE_TAKES) -> None:
        self.batch_size = batch_size
        self.queue: asyncio.Queue[Take] = asyncio.Queue(maxsize=max_takes)
        self.held: Take | None = None

    async def put(self, take: Take) -> None:
        """Waits while ``max_takes`` takes are queued: backpressure on the consumer."""
        await self.queue.put(take)

    async def next_batch(self) -> Batch:
        take = self.held or await self.queue.get()
        self.held = None
        messages, handles = list(take.messages), list(take.handles)
        while not self.queue.empty():
            take = self.queue.get_nowait()
            if len(messages) + len(take.messages) > self.batch_size:
                self.held = take
                break
            messages += take.messages
            handles += take.handles
        return Batch(messages, handles)


ScoreBatch = Callable[[list[RawMessage]], Awaitable[BatchOutput]]
"""Scores a batch's messages into its outputs; never raises (models/batch.py)."""
Confirmed = Callable[[Batch, BatchOutput, float], None]
"""Told of each confirmed batch, its outputs and seconds since it was formed (metrics, logs)."""
Refit = Callable[[], Awaitable[None]]
"""Reads the output topics' limits again, for the batches scored from then on."""


@dataclass
class Stages:
    """The stages of one score agent and the queues between them.

    ``producer()`` gives the started Kafka producer; ``ack(handles)`` acknowledges confirmed
    messages to whatever committed their offsets (Faust, here). With ``transactions``
    (exactly-once) a batch's outputs and input offsets are committed together instead, one
    transaction per input partition for a round of batches (:meth:`transact_stage`,
    streams/kafka/transactions.py), and messages already
    committed by an earlier owner of their partition are dropped at the intake.

    Records the broker refuses as too large for their topic (its limit went down since the
    worker read it) are not sent again as they are: ``refit`` reads the limits again and the
    batch is scored again, so that what no longer fits is dead-lettered (:meth:`redo`).
    """

    intake: Intake
    score: ScoreBatch
    in_flight: int
    outputs: OutputTopics
    producer: Callable[[], Any]
    ack: Callable[[list[Any]], Awaitable[None]]
    confirmed: Confirmed
    offsets: OffsetTracker = field(default_factory=OffsetTracker)
    transactions: PartitionTransactions | None = None
    refit: Refit | None = None
    round_wait_s: float = 1.0  # exactly-once: how long a round waits for batches being scored
    tasks: list[asyncio.Task] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free_scorers = asyncio.Semaphore(self.in_flight)
        self.to_send: asyncio.Queue[Scoring] = asyncio.Queue(maxsize=self.in_flight)
        self.to_confirm: asyncio.Queue[Sent] = asyncio.Queue(maxsize=SENT_UNCONFIRMED)

    async def take(self, take: Take) -> None:
        """The agent's entry: record the offsets, queue the take (waits when the intake is full)."""
        if self.transactions is not None:
            take = await self.new_to_us(take, self.transactions)
            if not take.messages:
                return
        self.offsets.take((m.origin.partition, m.origin.offset) for m in take.messages)
        await self.intake.put(take)

    async def new_to_us(self, take: Take, transactions: PartitionTransactions) -> Take:
        """The messages of ``take`` this owner has to score; the others (committed already, or of
        a partition no longer ours) are acknowledged without output."""
        kept = Take([], [])
        repeats = []
        for message, handle in zip(take.messages, take.handles, strict=True):
            if await transactions.is_new(message.origin.partition, message.origin.offset):
                kept.messages.append(message)
                kept.handles.append(handle)
            else:
                repeats.append(handle)
        if repeats:
            log.info("skipped %d messages committed already or no longer ours", len(repeats))
            await self.ack(repeats)
        return kept

    async def score_stage(self) -> None:
        """A batch goes to the scorers only while fewer than ``in_flight`` are there: one per
        encoder thread and one more, so a thread that finishes finds work at once; what
        arrives meanwhile is merged into the next batch."""
        while True:
            await self.free_scorers.acquire()
            batch = await self.intake.next_batch()
            job = asyncio.ensure_future(self.score(batch.messages))
            job.add_done_callback(lambda _: self.free_scorers.release())
            await self.to_send.put(Scoring(batch, job))

    async def send_stage(self) -> None:
        """Outputs go to the producer in input order, a partition batch at a time."""
        while True:
            scoring = await self.to_send.get()
            out = await scoring.job
            records = self.outputs.records(out)  # built once: the signals are encoded here
            deliveries = await send_batched(self.producer(), records)
            await self.to_confirm.put(Sent(scoring.batch, out, records, deliveries))

    async def confirm_stage(self) -> None:
        """Waits for the broker (resending what it refused), then acknowledges the batch."""
        while True:
            sent = await self.to_confirm.get()
            out = sent.out
            refused = await deliver(self.producer(), sent.records, sent.deliveries)
            for attempt in itertools.count():
                if not refused:
                    break
                # At-least-once: the batch's records the broker took already are sent again.
                out = await self.redo(sent.batch.messages, RecordsTooLarge(refused), attempt)
                refused = await deliver(self.producer(), self.outputs.records(out))
            await self.ack(sent.batch.handles)
            self.offsets.confirm((m.origin.partition, m.origin.offset) for m in sent.batch.messages)
            self.confirmed(sent.batch, out, time.perf_counter() - sent.batch.taken_at)

    async def transact_stage(self) -> None:
        """Exactly-once: scored batches committed in rounds, one transaction per input partition
        and round (outputs and the next offset), in input order; the partitions of a round commit
        concurrently.

        A round is the next scored batch, joined by the batches after it that are already being
        scored, as each finishes, for up to ``round_wait_s`` and ``ROUND_BATCHES`` batches. Each
        partition's transaction costs the same whatever it holds (five round trips here, a log
        write per step and a marker per partition on the broker), so under a backlog a round
        pays it once for several batches, and the cost of exactly-once stays bounded as
        partitions grow (docs/reliability.md). At light load nothing else is in flight: a round
        is one batch and commits at once."""
        assert self.transactions is not None
        pending: collections.deque[Scoring] = collections.deque()
        while True:
            if not pending:
                pending.append(await self.to_send.get())
            while len(pending) < ROUND_BATCHES and not self.to_send.empty():
                pending.append(self.to_send.get_nowait())
            await pending[0].job
            round_ = [pending.popleft()]
            ready_at = time.perf_counter()
            while len(round_) < ROUND_BATCHES:
                if not pending and not self.to_send.empty():
                    pending.append(self.to_send.get_nowait())
                if not pending:
                    break  # nothing more in flight: no wait at light load
                if not pending[0].job.done():
                    left = self.round_wait_s - (time.perf_counter() - ready_at)
                    if left <= 0:
                        break
                    await asyncio.wait({pending[0].job}, timeout=left)
                    if not pending[0].job.done():
                        break
                round_.append(pending.popleft())
            await self.commit_round(round_)

    async def commit_round(self, round_: list[Scoring]) -> None:
        """One transaction per input partition for the scored batches of ``round_``, then each
        batch acknowledged and confirmed."""
        outs = [s.job.result() for s in round_]
        messages = [m for s in round_ for m in s.batch.messages]
        records: dict[int, list[Record]] = {}
        for out in outs:
            for p, recs in self.outputs.records_by_partition(out).items():
                records.setdefault(p, []).extend(recs)
        next_offsets: dict[int, int] = {}
        for m in messages:
            p = m.origin.partition
            next_offsets[p] = max(next_offsets.get(p, 0), m.origin.offset + 1)
        began = time.perf_counter()
        await asyncio.gather(
            *(self.commit(messages, p, records.get(p, []), n) for p, n in next_offsets.items())
        )
        log.debug(
            "a round of %d batch(es), %d messages: %d transactions in %.3f s",
            len(round_), len(messages), len(next_offsets), time.perf_counter() - began,
        )  # fmt: skip
        for scoring, out in zip(round_, outs, strict=True):
            batch = scoring.batch
            await self.ack(batch.handles)  # Faust's bookkeeping; it commits no offsets of these
            self.offsets.confirm((m.origin.partition, m.origin.offset) for m in batch.messages)
            self.confirmed(batch, out, time.perf_counter() - batch.taken_at)

    async def commit(
        self, messages: list[RawMessage], partition: int, records: list[Record], next_offset: int
    ) -> None:
        """One partition's transaction for a round of ``messages``; refused as too large (and so
        aborted), the partition's messages are scored again to the topics' current limits and
        committed."""
        assert self.transactions is not None
        for attempt in itertools.count():
            try:
                await self.transactions.commit(partition, records, next_offset)
                return
            except RecordsTooLarge as refused:
                mine = [m for m in messages if m.origin.partition == partition]
                out = await self.redo(mine, refused, attempt)
                records = self.outputs.records_by_partition(out).get(partition, [])

    async def redo(self, messages: list[RawMessage], refused: RecordsTooLarge, attempt: int) -> BatchOutput:
        """``messages`` scored again after the broker refused some of their records as too large,
        once the output topics' limits are read again (after a growing pause when tried before)."""
        log.warning(
            "the broker refused %d record(s) as too large for their topic (%s): reading the topics' "
            "limits again and scoring the %d messages of their batch again",
            len(refused.records),
            ", ".join(sorted({topic for topic, _, _ in refused.records})),
            len(messages),
        )
        if attempt:
            await asyncio.sleep(min(0.5 * 2**attempt, 30.0))
        if self.refit is not None:
            try:
                await self.refit()
            except Exception as exc:  # the broker may be away a moment: the next attempt reads again
                log.warning("could not read the output topics' limits again: %s", exc)
        return await self.score(messages)

    def ensure_running(self, on_stop: Callable[[BaseException], object]) -> None:
        """Start the stage tasks, or restart them after one ended; ``on_stop(error)`` is told
        when a stage fails (unacknowledged batches are then redone by the next worker)."""
        if self.tasks and not any(t.done() for t in self.tasks):
            return
        for t in self.tasks:
            t.cancel()
        stages = (
            (self.score_stage, self.transact_stage)
            if self.transactions is not None
            else (self.score_stage, self.send_stage, self.confirm_stage)
        )
        self.tasks = [asyncio.create_task(stage()) for stage in stages]

        def supervise(task: asyncio.Task) -> None:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                log.error("a scoring stage stopped: %r; stopping the worker", error)
                on_stop(error)

        for t in self.tasks:
            t.add_done_callback(supervise)
