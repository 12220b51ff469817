"""Exactly-once bookkeeping with a failure injected at each step of a transaction.

Each case runs :class:`PartitionTransactions` against the session's real broker (transactions:
Apache Kafka), with a real transactional producer that raises once where the case says: the
output's delivery fails, the offsets cannot be added, the commit fails before or after it lands,
the producer cannot start again, another producer takes the transactional id mid-batch. After
each, a ``read_committed`` reader must see every batch committed exactly once and the group's
committed offset must be where the last committed batch ended: nothing committed that was not
produced, nothing produced twice, and the partition goes on.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import IllegalOperation, KafkaConnectionError, KafkaTimeoutError

from streamscore.streams.kafka.client import group_offsets
from streamscore.streams.kafka.delivery import Record
from streamscore.streams.kafka.transactions import PartitionTransactions, transactional_id


@pytest.fixture(autouse=True)
def needs_transactions(transactions: bool) -> None:
    if not transactions:
        pytest.skip("the session's broker runs no transactions (embedded): set KAFKA_HOME to run these")


@dataclass
class Faults:
    """Which step fails on its next call (each fault fires once), and what was injected."""

    pending: dict[str, BaseException] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)

    def fire(self, step: str) -> None:
        error = self.pending.pop(step, None)
        if error is not None:
            self.fired.append(step)
            raise error


def faulty_producer(faults: Faults) -> type[AIOKafkaProducer]:
    """A real ``AIOKafkaProducer`` whose steps raise once when ``faults`` says so."""

    class Faulty(AIOKafkaProducer):
        async def start(self) -> None:
            faults.fire("start")
            await super().start()

        async def begin_transaction(self) -> None:
            faults.fire("begin")
            await super().begin_transaction()

        async def send_batch(self, *args, **kwargs):
            future = await super().send_batch(*args, **kwargs)
            if "deliver" in faults.pending:  # the broker's answer to the batch is an error
                failed = asyncio.get_running_loop().create_future()
                failed.set_exception(faults.pending.pop("deliver"))
                faults.fired.append("deliver")
                return failed
            return future

        async def send_offsets_to_transaction(self, offsets, group_id) -> None:
            faults.fire("offsets")
            await super().send_offsets_to_transaction(offsets, group_id)

        async def commit_transaction(self) -> None:
            faults.fire("commit")
            await super().commit_transaction()
            faults.fire("commit_landed")  # committed, but the answer never came back

    return Faulty


@dataclass
class Run:
    bootstrap: str
    group: str
    topic: str
    out: str
    faults: Faults
    lost: list[int]
    tx: PartitionTransactions


async def _setup(bootstrap: str) -> Run:
    tag = uuid.uuid4().hex[:8]
    topic, out = f"tx-in-{tag}", f"tx-out-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in (topic, out)])
    finally:
        await admin.close()
    faults, lost = Faults(), []
    group = f"tx-{tag}"
    tx = PartitionTransactions(
        bootstrap,
        group,
        topic,
        on_lost=lost.append,
        make_producer=faulty_producer(faults),
        retry_pause_s=0.05,
    )
    await tx.assign([0])
    return Run(bootstrap, group, topic, out, faults, lost, tx)


def batch(run: Run, name: str, n: int = 5) -> list[Record]:
    return [(run.out, f"{name}{i}".encode(), f"{name}{i}".encode()) for i in range(n)]


async def take(run: Run, start: int, n: int = 5) -> list[bool]:
    return [await run.tx.is_new(0, offset) for offset in range(start, start + n)]


async def committed_outputs(run: Run) -> list[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(run.out, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]  # read_committed: the last stable offset
        values: list[str] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                values += [r.value.decode() for r in records]
        return values
    finally:
        await consumer.stop()


async def committed_offset(run: Run) -> int:
    tp = TopicPartition(run.topic, 0)
    return (await group_offsets(run.bootstrap, run.group, [tp]))[tp]


def names(*batches: list[Record]) -> list[str]:
    return [value.decode() for b in batches for _, _, value in b]


STEPS = {
    "deliver": KafkaTimeoutError(),  # producing the batch's records fails
    "begin": IllegalOperation("a producer left in a state where it cannot begin"),
    "offsets": KafkaTimeoutError(),  # adding the input offset to the transaction fails
    "commit": KafkaTimeoutError(),  # the commit fails before it reaches the broker
    "commit_landed": KafkaTimeoutError(),  # the commit lands, its answer is lost
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failed_step_leaves_each_batch_committed_once_and_the_partition_goes_on(kafka, step):
    async def scenario() -> tuple[Run, list[str], int]:
        run = await _setup(kafka)
        try:
            first, second, third = batch(run, "a"), batch(run, "b"), batch(run, "c")
            assert await take(run, 0) == [True] * 5
            assert await run.tx.commit(0, first, 5)
            run.faults.pending[step] = STEPS[step]
            assert await take(run, 5) == [True] * 5
            assert await run.tx.commit(0, second, 10)
            assert run.faults.fired == [step]
            assert await take(run, 10) == [True] * 5, "the partition must go on"
            assert await run.tx.commit(0, third, 15)
            return run, await committed_outputs(run), await committed_offset(run)
        finally:
            await run.tx.close()

    run, outputs, offset = asyncio.run(scenario())
    assert outputs == names(batch(run, "a"), batch(run, "b"), batch(run, "c"))
    assert offset == 15
    assert run.lost == []


def test_a_new_producer_that_cannot_start_at_first_is_tried_again(kafka):
    """The broker away a moment: the new epoch after a failed step is tried until it starts."""

    async def scenario() -> tuple[Run, list[str], int]:
        run = await _setup(kafka)
        try:
            first, second = batch(run, "a"), batch(run, "b")
            await take(run, 0, 10)
            run.faults.pending.update(offsets=KafkaTimeoutError(), start=KafkaConnectionError())
            assert await run.tx.commit(0, first, 5)
            assert await run.tx.commit(0, second, 10)
            assert sorted(run.faults.fired) == ["offsets", "start"]
            return run, await committed_outputs(run), await committed_offset(run)
        finally:
            await run.tx.close()

    run, outputs, offset = asyncio.run(scenario())
    assert outputs == names(batch(run, "a"), batch(run, "b"))
    assert offset == 10


async def _rival(run: Run) -> AIOKafkaProducer:
    """Another worker's producer under the same transactional id: starting it fences ours."""
    rival = AIOKafkaProducer(
        bootstrap_servers=run.bootstrap, transactional_id=transactional_id(run.group, run.topic, 0)
    )
    await rival.start()
    return rival


def test_fenced_mid_batch_the_partition_is_let_go_until_the_group_gives_it_back(kafka):
    unhandled: list[str] = []  # errors asyncio reports as never retrieved (logged with a traceback)

    async def scenario() -> tuple[Run, list[str], list[str], int]:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: unhandled.append(f"{context['message']}: {context.get('exception')!r}")
        )
        run = await _setup(kafka)
        try:
            first, second = batch(run, "a"), batch(run, "b")
            await take(run, 0)
            assert await run.tx.commit(0, first, 5)
            assert await take(run, 5) == [True] * 5
            rival = await _rival(run)  # another worker takes the partition mid-batch
            await rival.stop()
            assert not await run.tx.commit(0, second, 10), "a fenced batch must not commit"
            assert run.lost == [0], "the worker must ask the group to rebalance"
            # Until the group speaks, the partition's messages are not this worker's to score:
            # nothing waits on it (a take used to wait forever here).
            assert await asyncio.wait_for(take(run, 10), 5) == [False] * 5
            before = await committed_outputs(run)
            await run.tx.revoke([0])  # the rebalance gives the partition back to this worker
            await run.tx.assign([0])
            assert await take(run, 5) == [True] * 5, "it resumes where the last commit ended"
            assert await run.tx.commit(0, second, 10)
            return run, before, await committed_outputs(run), await committed_offset(run)
        finally:
            await run.tx.close()

    run, before, after, offset = asyncio.run(scenario())
    gc.collect()  # a future is reported when it is collected
    assert unhandled == [], "the fenced producer's error must be seen, not left for asyncio to log"
    assert before == names(batch(run, "a"))
    assert after == names(batch(run, "a"), batch(run, "b"))
    assert offset == 10
    assert run.tx.fenced == 1


def test_after_a_failed_step_a_committed_offset_moved_by_another_owner_means_the_partition_is_lost(kafka):
    async def scenario() -> tuple[Run, list[str]]:
        run = await _setup(kafka)
        try:
            first, second = batch(run, "a"), batch(run, "b")
            await take(run, 0, 10)
            assert await run.tx.commit(0, first, 5)
            run.faults.pending["offsets"] = KafkaTimeoutError()

            async def rival_commits() -> None:
                # During the retry's pause: another owner commits up to offset 8.
                rival = await _rival(run)
                await rival.begin_transaction()
                await rival.send_offsets_to_transaction({TopicPartition(run.topic, 0): 8}, run.group)
                await rival.commit_transaction()
                await rival.stop()

            run.tx.retry_pause_s = 3.0
            commit = asyncio.ensure_future(run.tx.commit(0, second, 10))
            while "offsets" not in run.faults.fired:
                await asyncio.sleep(0.01)
            await rival_commits()
            assert not await commit
            return run, await committed_outputs(run)
        finally:
            await run.tx.close()

    run, outputs = asyncio.run(scenario())
    assert outputs == names(batch(run, "a"))
    assert run.lost == [0]


def test_a_partition_given_while_the_broker_cannot_be_reached_is_fenced_in_once_it_can(kafka):
    async def scenario() -> tuple[Run, list[str], list[bool]]:
        run = await _setup(kafka)
        try:
            first = batch(run, "a")
            await run.tx.revoke([0])
            run.faults.pending["start"] = KafkaConnectionError()
            await run.tx.assign([0])  # a rebalance while the broker is away a moment
            news = await take(run, 0)
            assert await run.tx.commit(0, first, 5)
            return run, await committed_outputs(run), news
        finally:
            await run.tx.close()

    run, outputs, news = asyncio.run(scenario())
    assert run.faults.fired == ["start"]
    assert news == [True] * 5
    assert outputs == names(batch(run, "a"))


def test_a_hundred_partitions_are_fenced_in_together_and_each_resumes_at_its_own_offset(kafka):
    async def scenario() -> tuple[list[int], list[int], list[str]]:
        tag = uuid.uuid4().hex[:8]
        topic, out, group = f"tx-in-{tag}", f"tx-out-{tag}", f"tx-{tag}"
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 100, 1), NewTopic(out, 1, 1)])
        finally:
            await admin.close()
        first = PartitionTransactions(kafka, group, topic)
        await first.assign(range(100))
        for p in range(0, 100, 10):  # ten partitions move on by p + 1 messages
            assert [await first.is_new(p, o) for o in range(p + 1)] == [True] * (p + 1)
            assert await first.commit(p, [(out, None, f"p{p}".encode())], p + 1)
        await first.close()
        heir = PartitionTransactions(kafka, group, topic)  # the next owner of all of them
        await heir.assign(range(100))
        try:
            resumed = [heir.next_offset[p] for p in range(100)]
            news = [p for p in range(100) if await heir.is_new(p, heir.next_offset[p])]
            run = Run(kafka, group, topic, out, Faults(), [], heir)
            return resumed, news, await committed_outputs(run)
        finally:
            await heir.close()

    resumed, news, outputs = asyncio.run(scenario())
    assert resumed == [p + 1 if p % 10 == 0 else 0 for p in range(100)]
    assert news == list(range(100))
    assert sorted(outputs) == sorted(f"p{p}" for p in range(0, 100, 10))
