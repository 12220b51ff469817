"""Exactly-once on a broker with transactions (Apache Kafka): kill -9, a second worker dying, and
a paused worker whose late transaction must be refused. A ``read_committed`` reader must see every
input once: 0 lost, **0 duplicated**. Figures go to the reliability report like the others.

These need the session's broker to run transactions: Apache Kafka from ``KAFKA_HOME`` (.ci/run
sets it) or ``KAFKA_BOOTSTRAP_SERVERS``. On the embedded broker they are skipped, and say so;
tests/test_reliability.py checks that the worker refuses exactly_once there.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from aiokafka import AIOKafkaProducer

from streamscore.streams.kafka.transactions import transactional_id
from tests.conftest import stop_worker
from tests.kafka_helpers import send_raw
from tests.test_reliability import (
    NOTHING_WRONG,
    health,
    kill_9_then_restart,
    metric,
    outcome,
    report,
    start,
    stream,
    two_workers_one_killed,
    wait_scored,
)

pytestmark = pytest.mark.integration
EXACTLY_ONCE = {"processing_guarantee": "exactly_once"}


@pytest.fixture(autouse=True)
def needs_transactions(transactions: bool) -> None:
    if not transactions:
        pytest.skip("the session's broker runs no transactions (embedded): set KAFKA_HOME to run these")


def test_kill_9_mid_stream_then_restart_repeats_nothing(kafka, trained_registry, tmp_path):
    sent, result = kill_9_then_restart(kafka, trained_registry, tmp_path, "eos9", **EXACTLY_ONCE)
    report("exactly_once_kill_9_then_restart", sent=sent, **result)
    assert result == NOTHING_WRONG


def test_two_workers_one_killed_the_other_repeats_nothing(kafka, trained_registry, tmp_path):
    sent, result, partitions = two_workers_one_killed(
        kafka, trained_registry, tmp_path, "eos2", **EXACTLY_ONCE
    )
    report("exactly_once_two_workers_one_killed", sent=sent, **result)
    assert result == NOTHING_WRONG
    assert partitions == [0, 1, 2], "the survivor should hold every partition"


def test_a_paused_worker_is_fenced_its_late_transaction_refused_and_it_comes_back(
    kafka, trained_registry, tmp_path
):
    """SIGSTOP a worker mid-stream until a second one holds all its partitions, then let it go on:
    the batches it was scoring must not be committed (the new owner redid them), and the paused
    worker must rejoin the group and score again (no partition of it left waiting)."""
    zombie, zombie_url = start(kafka, trained_registry, tmp_path, **EXACTLY_ONCE)
    messages, good, bad = stream(6_000, "zombie")
    send_raw(kafka, zombie.topics["input"], messages)
    wait_scored(kafka, zombie.topics["scored"], "zombie-", 1_500)
    zombie.process.send_signal(signal.SIGSTOP)
    try:
        heir, heir_url = start(kafka, trained_registry, tmp_path, tag=zombie.tag, **EXACTLY_ONCE)
        deadline = time.monotonic() + 120
        while health(heir_url).get("partitions") != [0, 1, 2] and time.monotonic() < deadline:
            time.sleep(1)  # the paused worker misses its heartbeats and leaves the group
        assert health(heir_url).get("partitions") == [0, 1, 2], heir.log()[-3000:]
        wait_scored(kafka, zombie.topics["scored"], "zombie-", 3_000)  # the heir is scoring
    finally:
        zombie.process.send_signal(signal.SIGCONT)
    try:
        result = outcome(kafka, zombie.topics, "zombie", good, bad)
        time.sleep(3)  # the zombie's late commits, if any, would land by now
        late = outcome(kafka, zombie.topics, "zombie", good, bad)
        deadline = time.monotonic() + 120
        while not health(zombie_url).get("partitions") and time.monotonic() < deadline:
            time.sleep(1)  # back in the group, it gets a share of the partitions again
        held = health(zombie_url).get("partitions")
        before = metric(zombie_url, "streamscore_messages_scored_total") or 0.0
        more, more_good, more_bad = stream(1_000, "back", seed=4)
        send_raw(kafka, zombie.topics["input"], more)
        after = outcome(kafka, zombie.topics, "back", more_good, more_bad)
        scored_since = (metric(zombie_url, "streamscore_messages_scored_total") or 0.0) - before
    finally:
        stop_worker(heir)
        stop_worker(zombie)
    log = zombie.log()
    report("exactly_once_paused_worker", sent=len(messages) + len(more), **result)
    assert result == NOTHING_WRONG
    assert late == result
    assert "now belongs to another worker" in log, log[-3000:]
    assert held, f"the paused worker holds no partition again: {log[-3000:]}"
    assert after == NOTHING_WRONG
    assert scored_since > 0, f"the paused worker scored nothing after it came back: {log[-3000:]}"


def test_a_worker_fenced_while_the_group_still_gives_it_its_partitions_goes_on(
    kafka, trained_registry, tmp_path
):
    """Fence every partition's producer mid-stream (as a transaction the broker timed out does)
    while the group changes nothing: the worker must ask for a rebalance, take its partitions
    again and score the whole stream once (its partitions used to wait forever)."""
    worker, url = start(kafka, trained_registry, tmp_path, **EXACTLY_ONCE)
    messages, good, bad = stream(3_000, "fenced")
    try:
        send_raw(kafka, worker.topics["input"], messages)
        wait_scored(kafka, worker.topics["scored"], "fenced-", 500)
        asyncio.run(_fence(kafka, f"streamscore-test-{worker.tag}", worker.topics["input"]))
        result = outcome(kafka, worker.topics, "fenced", good, bad)
        partitions = health(url).get("partitions")
    finally:
        stop_worker(worker)
    log = worker.log()
    report("exactly_once_fenced_in_place", sent=len(messages), **result)
    assert "asked to rebalance" in log, log[-3000:]
    assert result == NOTHING_WRONG, log[-3000:]
    assert partitions == [0, 1, 2]


async def _fence(bootstrap: str, group: str, topic: str) -> None:
    for partition in range(3):
        rival = AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id=transactional_id(group, topic, partition)
        )
        await rival.start()  # a new epoch under the worker's transactional id
        await rival.stop()
