"""The score agent's stages without a broker: batch merging, order, offset safety, backpressure,
in-flight limits, resending what the broker refused, poison-message splitting, failing stages.

The producer here is a stand-in that holds each batch's future until the test confirms or
refuses it, so a test can look at the pipeline between "sent" and "confirmed". The same stages
run against real brokers in tests/test_worker.py and tests/test_reliability.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from aiokafka.errors import MessageSizeTooLargeError

from streamscore.models.batch import BatchLimits, BatchOutput, OutputLimits, RawMessage, process_batch
from streamscore.models.scoring import Scores
from streamscore.streams.worker.offsets import OffsetTracker
from streamscore.streams.worker.scoring_guard import ScoringGuard
from streamscore.streams.worker.stages import Batch, Intake, OutputTopics, Stages, Take, raw


class _Builder:
    def __init__(self, room: int) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []
        self.room = room

    def append(self, key: bytes | None, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass


class HeldProducer:
    """Takes partition batches like aiokafka's producer; the test settles their futures."""

    def __init__(self, partitions: int = 2, batch_room: int = 1_000) -> None:
        self.partitions = partitions
        self.batch_room = batch_room
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]], asyncio.Future]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> _Builder:
        return _Builder(self.batch_room)

    async def send_batch(self, builder: _Builder, topic: str, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, builder.records, future))
        return future

    async def send(self, topic: str, value: bytes, key: bytes | None, partition: int) -> asyncio.Future:
        builder = _Builder(1)
        builder.append(key, value, None)
        return await self.send_batch(builder, topic, partition)

    def settle(self, ok: bool = True, error: Exception | None = None, topic: str | None = None) -> int:
        """Confirm (or refuse, with ``error``) every batch not settled yet, of ``topic`` or all;
        returns how many."""
        n = 0
        for t, _, _, future in self.sent:
            if not future.done() and topic in (None, t):
                future.set_result(None) if ok else future.set_exception(error or ConnectionError("refused"))
                n += 1
        return n

    def values(self, topic: str) -> list[dict]:
        return [
            json.loads(v)
            for t, _, recs, f in self.sent
            if t == topic and f.done() and not f.exception()
            for _, v in recs
        ]


def fake_scores(texts: list[str]) -> Scores:
    n = len(texts)
    return Scores(
        labels=["a"] * n,
        confidence=np.full(n, 0.9),
        top_k_labels=[["a"]] * n,
        top_k_probs=np.ones((n, 1)),
        ood_scores=np.zeros(n),
        ood_threshold=0.5,
    )


async def score_ok(texts: list[str]) -> tuple[Scores, str]:
    return fake_scores(texts), "v1"


TOPICS = OutputTopics("scored", "dlq", "signals")


def make_stages(
    producer: HeldProducer,
    score: Callable[[list[RawMessage]], Any] | None = None,
    batch_size: int = 4,
    in_flight: int = 2,
    retries: int = 0,
) -> tuple[Stages, list[Any], list[Batch]]:
    acked: list[Any] = []
    confirmed: list[Batch] = []

    async def ack(handles: list[Any]) -> None:
        acked.extend(handles)

    def score_batch(messages: list[RawMessage]) -> Any:
        return process_batch(messages, score_ok, BatchLimits(score_retries=retries))

    stages = Stages(
        intake=Intake(batch_size),
        score=score or score_batch,
        in_flight=in_flight,
        outputs=TOPICS,
        producer=lambda: producer,
        ack=ack,
        confirmed=lambda batch, out, seconds: confirmed.append(batch),
    )
    return stages, acked, confirmed


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def take(offsets: list[int], partition: int = 0) -> Take:
    return Take([raw(o, partition) for o in offsets], [(partition, o) for o in offsets])


# ------------------------------------------------------------------------------------ intake


def test_intake_merges_queued_takes_in_order_and_holds_one_that_does_not_fit():
    async def run() -> list[list[int]]:
        intake = Intake(batch_size=5)
        for offsets in ([0, 1], [2, 3], [4, 5], [6]):
            await intake.put(take(offsets))
        batches = [await intake.next_batch() for _ in range(2)]
        return [[m.origin.offset for m in b.messages] for b in batches] + [[h[1] for h in batches[1].handles]]

    assert asyncio.run(run()) == [[0, 1, 2, 3], [4, 5, 6], [4, 5, 6]]


def test_intake_applies_backpressure_when_its_queue_is_full():
    async def run() -> tuple[bool, bool]:
        intake = Intake(batch_size=100, max_takes=2)
        await intake.put(take([0]))
        await intake.put(take([1]))
        third = asyncio.ensure_future(intake.put(take([2])))
        await asyncio.sleep(0.05)
        blocked = not third.done()
        await intake.next_batch()  # drains the queue: room again
        await asyncio.wait_for(third, 1.0)
        return blocked, third.done()

    assert asyncio.run(run()) == (True, True)


# ----------------------------------------------------------------------------- offset safety


def test_offsets_commit_only_below_the_first_unconfirmed_message_per_partition():
    t = OffsetTracker()
    t.take([(0, 0), (0, 1), (1, 0)])
    t.take([(0, 2), (0, 3), (1, 1)])
    t.confirm([(0, 2), (0, 3), (1, 1)])  # the later batch first
    assert t.committable() == {0: 0, 1: 0} and t.in_flight() == 3
    t.confirm([(0, 0), (0, 1), (1, 0)])
    assert t.committable() == {0: 4, 1: 2} and t.in_flight() == 0
    assert t.position(0) == 4 and t.position(7) is None


# -------------------------------------------------------------------- the stages, end to end


def test_a_batch_is_acknowledged_only_after_the_broker_confirms_it_and_in_input_order():
    async def run() -> None:
        producer = HeldProducer()
        stages, acked, confirmed = make_stages(producer, batch_size=3)
        stages.ensure_running(lambda error: pytest.fail(f"a stage failed: {error!r}"))
        await stages.take(take([0, 1, 2]))
        await stages.take(take([3, 4]))
        await until(lambda: len({(t, p) for t, p, _, _ in producer.sent}) >= 1 and producer.sent != [])
        await asyncio.sleep(0.05)
        assert acked == [] and stages.offsets.committable() == {0: 0}  # sent, not confirmed
        while len(acked) < 5:
            producer.settle()
            await asyncio.sleep(0.01)
        assert acked == [(0, o) for o in range(5)]
        assert [[m.origin.offset for m in b.messages] for b in confirmed] == [[0, 1, 2], [3, 4]]
        assert stages.offsets.committable() == {0: 5}
        ids = [r["id"] for r in producer.values("scored")]
        assert sorted(ids) == [f"m{o}" for o in range(5)]
        for task in stages.tasks:
            task.cancel()

    asyncio.run(run())


def test_records_the_broker_refuses_are_resent_and_the_batch_waits_for_them():
    async def run() -> None:
        producer = HeldProducer()
        stages, acked, _ = make_stages(producer)
        stages.ensure_running(lambda error: pytest.fail(f"a stage failed: {error!r}"))
        await stages.take(take([0, 1]))
        await until(lambda: producer.sent != [])
        await asyncio.sleep(0.02)
        producer.settle(ok=False)  # the broker refuses: deliver() resends after a pause
        await until(lambda: any(not f.done() for *_, f in producer.sent), timeout_s=3.0)
        assert acked == []
        producer.settle()
        await until(lambda: len(acked) == 2)
        scored = producer.values("scored")
        assert sorted(r["id"] for r in scored) == ["m0", "m1"]  # once each among the confirmed
        for task in stages.tasks:
            task.cancel()

    asyncio.run(run())


def test_records_refused_as_too_large_are_scored_again_to_the_limits_read_again():
    """A topic's max.message.bytes went down while the worker ran: the refused records are not
    sent again as they are (before: forever); the limits are read again and what no longer fits
    is dead-lettered, and the batch is acknowledged."""

    async def run() -> None:
        producer = HeldProducer()
        limits = BatchLimits()
        refits = []

        async def refit() -> None:
            nonlocal limits
            refits.append(1)
            limits = BatchLimits(output=OutputLimits(scored=100))  # a scored record is about 300 bytes

        async def score(messages: list[RawMessage]) -> BatchOutput:
            return await process_batch(messages, score_ok, limits)

        stages, acked, _ = make_stages(producer, score=score)
        stages.refit = refit
        stages.ensure_running(lambda error: pytest.fail(f"a stage failed: {error!r}"))
        await stages.take(take([0, 1]))
        await until(lambda: producer.sent != [])
        await asyncio.sleep(0.02)
        producer.settle(ok=False, error=MessageSizeTooLargeError(), topic="scored")
        await until(lambda: any(t == "dlq" for t, *_ in producer.sent))
        assert refits == [1] and acked == []
        producer.settle()
        await until(lambda: len(acked) == 2)
        dead = producer.values("dlq")
        assert [(d["reason"], d["origin"]["offset"]) for d in dead] == [
            ("output_too_large", 0),
            ("output_too_large", 1),
        ]
        assert producer.values("scored") == []
        for task in stages.tasks:
            task.cancel()

    asyncio.run(run())


def test_no_more_than_in_flight_batches_are_scored_at_once():
    async def run() -> int:
        producer = HeldProducer()
        running, most = [0], [0]
        release = asyncio.Event()

        async def slow_score(messages: list[RawMessage]) -> BatchOutput:
            running[0] += 1
            most[0] = max(most[0], running[0])
            await release.wait()
            running[0] -= 1
            return await process_batch(messages, score_ok, BatchLimits())

        stages, acked, _ = make_stages(producer, score=slow_score, batch_size=1, in_flight=2)
        stages.ensure_running(lambda error: pytest.fail(f"a stage failed: {error!r}"))
        for o in range(6):
            await stages.take(take([o]))
        await asyncio.sleep(0.1)
        assert running[0] == 2
        release.set()
        while len(acked) < 6:
            producer.settle()
            await asyncio.sleep(0.01)
        for task in stages.tasks:
            task.cancel()
        return most[0]

    assert asyncio.run(run()) == 2


def test_a_poison_message_goes_to_the_dead_letter_topic_and_its_batch_mates_are_scored():
    async def score(texts: list[str]) -> tuple[Scores, str]:
        if "poison" in texts:
            raise RuntimeError("model blew up")
        return fake_scores(texts), "v1"

    async def run() -> tuple[list[str], list[str], list[Any]]:
        producer = HeldProducer()
        stages, acked, _ = make_stages(
            producer, score=lambda m: process_batch(m, score, BatchLimits(score_retries=1))
        )
        stages.ensure_running(lambda error: pytest.fail(f"a stage failed: {error!r}"))
        messages = [raw(0), RawMessage(b"m1", b'{"id": "m1", "text": "poison"}', raw(1).origin), raw(2)]
        await stages.take(Take(messages, ["h0", "h1", "h2"]))
        while len(acked) < 3:
            producer.settle()
            await asyncio.sleep(0.01)
        for task in stages.tasks:
            task.cancel()
        return (
            [r["id"] for r in producer.values("scored")],
            [r["reason"] for r in producer.values("dlq")],
            acked,
        )

    scored, reasons, acked = asyncio.run(run())
    assert sorted(scored) == ["m0", "m2"] and reasons == ["scoring_failed"] and acked == ["h0", "h1", "h2"]


def test_a_stage_that_fails_is_reported_and_nothing_is_acknowledged():
    class BrokenProducer(HeldProducer):
        async def partitions_for(self, topic: str) -> set[int]:
            raise RuntimeError("metadata gone")

    async def run() -> tuple[list[BaseException], list[Any]]:
        errors: list[BaseException] = []
        stages, acked, _ = make_stages(BrokenProducer())
        stages.ensure_running(errors.append)
        await stages.take(take([0]))
        await until(lambda: errors != [])
        for task in stages.tasks:
            task.cancel()
        return errors, acked

    errors, acked = asyncio.run(run())
    assert "metadata gone" in str(errors[0]) and acked == []


def test_exactly_once_splits_a_batch_into_one_set_of_records_per_input_partition():
    from streamscore.schemas.drift import DriftSignal, SignalBatch

    bad = RawMessage(b"m9", b"{not json", raw(9, partition=1).origin)
    messages = [raw(0, 0), raw(5, 1), raw(1, 0), bad]
    out = asyncio.run(process_batch(messages, score_ok, BatchLimits()))
    out.signals = [
        SignalBatch(
            "v1", [DriftSignal(m, 1.0, 0.9, 0, [0.0], {"partition": p}) for m, p in [("m0", 0), ("m5", 1)]]
        ),
        SignalBatch("v2", [DriftSignal("m1", 1.0, 0.9, 0, [0.0], {"partition": 0})]),
    ]
    parts = TOPICS.records_by_partition(out)
    ids = {
        p: [(topic, (key or b"").decode()) for topic, key, _ in records if topic != "signals"]
        for p, records in parts.items()
    }
    assert ids == {0: [("scored", "m0"), ("scored", "m1")], 1: [("scored", "m5"), ("dlq", "m9")]}
    signals = {p: [json.loads(v) for t, _, v in records if t == "signals"] for p, records in parts.items()}
    assert [(s["model_version"], [x["id"] for x in s["signals"]]) for s in signals[0]] == [
        ("v1", ["m0"]),
        ("v2", ["m1"]),
    ]
    assert [[x["id"] for x in s["signals"]] for s in signals[1]] == [["m5"]]
    # No scored or dead record lost or repeated in the split.
    split = sorted(r for rs in parts.values() for r in rs if r[0] != "signals")
    assert split == sorted(r for r in TOPICS.records(out) if r[0] != "signals")


def test_a_model_that_fails_on_every_text_holds_the_stream_and_dead_letters_nothing():
    """A broken encoder used to dead-letter the whole stream as scoring_failed at full speed and
    commit it. Now the batch is held (nothing acknowledged, no more input taken, the worker
    reported failing) until the model scores again; then every message is scored once."""
    model = {"broken": True}

    async def score(texts: list[str]) -> tuple[Scores, str]:
        if model["broken"]:
            raise RuntimeError("CUDA error: device lost")
        return fake_scores(texts), "v1"

    async def run() -> tuple[list[str], list[str], list[Any], list[Any], list[str | None], bool]:
        producer = HeldProducer()
        said: list[str | None] = []
        guard = ScoringGuard(score, said.append, first_pause_s=0.01, max_pause_s=0.05)

        def guarded(messages: list[RawMessage]) -> Any:
            return guard.score(messages, lambda m: process_batch(m, score, BatchLimits(score_retries=0)))

        stages, acked, _ = make_stages(producer, score=guarded, batch_size=4, in_flight=1)
        stages.ensure_running(lambda error: pytest.fail(f"a stage failed: {error!r}"))
        await stages.take(take([0, 1, 2, 3]))
        for n in range(20):  # more input than the queues hold: the intake must stop taking
            taking = asyncio.ensure_future(stages.take(take([4 + 4 * n, 5 + 4 * n, 6 + 4 * n, 7 + 4 * n])))
            await asyncio.sleep(0.02)
            if not taking.done():
                break
        stopped_taking = not taking.done()
        await asyncio.sleep(0.2)
        producer.settle()
        held_acked = list(acked)
        model["broken"] = False
        await taking
        while len(acked) < 4 * (n + 2):
            producer.settle()
            await asyncio.sleep(0.01)
        for task in stages.tasks:
            task.cancel()
        return (
            [r["id"] for r in producer.values("scored")],
            producer.values("dlq"),
            held_acked,
            acked,
            said,
            stopped_taking,
        )

    scored, dead, held_acked, acked, said, stopped_taking = asyncio.run(run())
    assert held_acked == [], "nothing may be acknowledged while the model cannot score"
    assert stopped_taking, "the worker must stop taking input while it holds a batch"
    assert dead == []
    assert sorted(scored, key=lambda i: int(i[1:])) == [f"m{i}" for i in range(len(acked))]
    assert said == ["RuntimeError: CUDA error: device lost", None]


def test_the_probe_is_a_new_text_each_time_so_no_cached_embedding_answers_it():
    probes: list[str] = []

    async def model(texts: list[str]) -> None:
        probes.extend(texts)
        raise RuntimeError("encoder gone")

    async def run() -> None:
        guard = ScoringGuard(model, lambda _: None)
        await guard.probe()
        await guard.probe()

    asyncio.run(run())
    assert len(probes) == 2 and probes[0] != probes[1]


def test_a_batch_of_poison_messages_alone_is_still_dead_lettered_when_the_model_works():
    async def score(texts: list[str]) -> tuple[Scores, str]:
        if any("poison" in t for t in texts):
            raise RuntimeError("tokenizer blew up on this text")
        return fake_scores(texts), "v1"

    async def run() -> tuple[list[str], list[str | None]]:
        said: list[str | None] = []
        guard = ScoringGuard(score, said.append, first_pause_s=0.01)
        poison = [RawMessage(b"p", b'{"id": "p", "text": "poison"}', raw(0).origin)]
        out = await asyncio.wait_for(
            guard.score(poison, lambda m: process_batch(m, score, BatchLimits(score_retries=0))), 5
        )
        return [json.loads(v)["reason"] for _, v in out.dead], said

    reasons, said = asyncio.run(run())
    assert reasons == ["scoring_failed"] and said == []


def test_a_model_that_cannot_score_turns_health_to_failing_until_it_scores_again():
    from streamscore.streams.worker.metrics import WorkerMetrics

    metrics = WorkerMetrics.create()
    metrics.set_ready(True)
    assert metrics.health["status"] == "ok" and metrics.value("streamscore_scoring_up") == 1
    metrics.set_scoring("RuntimeError: CUDA error: device lost")
    assert metrics.health["status"] == "failing" and metrics.value("streamscore_scoring_up") == 0
    assert "device lost" in metrics.health["scoring"]
    metrics.set_scoring(None)
    assert metrics.health["status"] == "ok" and metrics.value("streamscore_scoring_up") == 1


# ----------------------------------------------------------------------- exactly-once rounds


class CountedTransactions:
    """Stands in for PartitionTransactions: every message is new, each commit is recorded."""

    def __init__(self) -> None:
        self.commits: list[tuple[int, list[str], int]] = []  # partition, scored ids, next offset

    async def is_new(self, partition: int, offset: int) -> bool:
        return True

    async def commit(self, partition: int, records: list[Any], next_offset: int) -> bool:
        ids = [key.decode() for topic, key, _ in records if topic == "scored"]
        self.commits.append((partition, ids, next_offset))
        return True


def gated_stages(round_wait_s: float) -> tuple[Stages, list[Any], CountedTransactions, dict[int, asyncio.Event]]:
    """Exactly-once stages whose scoring of the batch starting at offset o waits for gates[o]."""
    gates: dict[int, asyncio.Event] = {}

    async def gated_score(messages: list[RawMessage]) -> BatchOutput:
        first = messages[0].origin.offset
        await gates.setdefault(first, asyncio.Event()).wait()
        return await process_batch(messages, score_ok, BatchLimits())

    stages, acked, _ = make_stages(HeldProducer(), score=gated_score, batch_size=2, in_flight=4)
    tx = CountedTransactions()
    stages.transactions = tx  # type: ignore[assignment]  # the two methods the stages call
    stages.round_wait_s = round_wait_s
    return stages, acked, tx, gates


def test_exactly_once_commits_batches_scored_together_in_one_transaction_per_partition():
    """Under a backlog, the batches being scored when the first is ready join its round: one
    transaction per input partition for them all, records and acknowledgements in input order."""

    async def run() -> None:
        stages, acked, tx, gates = gated_stages(round_wait_s=5.0)
        stages.ensure_running(lambda error: pytest.fail(f"a stage failed: {error!r}"))
        for o in (0, 2, 4):  # three batches of two, each message of a batch on partitions 0 and 1
            await stages.take(Take([raw(o, 0), raw(o + 1, 1)], [o, o + 1]))
        await until(lambda: len(gates) == 3)
        gates[0].set()
        await asyncio.sleep(0.05)
        assert tx.commits == [], "the first batch waits for the batches being scored beside it"
        gates[2].set()
        gates[4].set()
        await until(lambda: len(acked) == 6)
        assert sorted(tx.commits) == [(0, ["m0", "m2", "m4"], 5), (1, ["m1", "m3", "m5"], 6)]
        assert acked == [0, 1, 2, 3, 4, 5]
        for task in stages.tasks:
            task.cancel()

    asyncio.run(run())


def test_exactly_once_commits_a_lone_batch_at_once_and_waits_at_most_round_wait_s_for_others():
    async def run() -> None:
        stages, acked, tx, gates = gated_stages(round_wait_s=0.3)
        stages.ensure_running(lambda error: pytest.fail(f"a stage failed: {error!r}"))
        await stages.take(take([0, 1]))
        await until(lambda: 0 in gates)
        gates[0].set()
        await until(lambda: len(acked) == 2, timeout_s=0.2)  # nothing else in flight: no wait
        assert tx.commits == [(0, ["m0", "m1"], 2)]

        await stages.take(take([2, 3]))
        await stages.take(take([4, 5]))
        await until(lambda: 4 in gates)
        gates[2].set()  # the batch at 4 is never scored in time: the round goes without it
        began = asyncio.get_running_loop().time()
        await until(lambda: len(acked) == 4, timeout_s=2.0)
        waited = asyncio.get_running_loop().time() - began
        assert 0.25 <= waited < 1.0, waited
        assert tx.commits[1:] == [(0, ["m2", "m3"], 4)]
        gates[4].set()
        await until(lambda: len(acked) == 6)
        assert tx.commits[2:] == [(0, ["m4", "m5"], 6)]
        for task in stages.tasks:
            task.cancel()

    asyncio.run(run())
