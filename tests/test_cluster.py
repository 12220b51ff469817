"""Faults together on a replicated cluster: three Apache Kafka nodes (every topic three replicas,
``min.insync.replicas=2``), two exactly-once workers, and a worker killed at the same moment as
the node that leads the input's first partition; once it is back, the leader of the second hangs for 20 s. A
``read_committed`` reader must then see every input once: 0 lost, 0 duplicated. The figures go to the reliability report.

Needs ``KAFKA_HOME`` (``.ci/run`` sets it); on the embedded broker alone it is skipped and says so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from streamscore.streams.kafka.cluster import KafkaCluster, brokers_seen
from tests.conftest import kafka_home, stop_worker
from tests.kafka_helpers import send_raw
from tests.test_reliability import health, outcome, report, start, stream, wait_scored

pytestmark = pytest.mark.integration
EXACTLY_ONCE = {"processing_guarantee": "exactly_once"}


@pytest.fixture(scope="module")
def cluster():
    home = kafka_home()
    if home is None:
        pytest.skip("a three-node cluster needs Apache Kafka: set KAFKA_HOME (.ci/run does)")
    with KafkaCluster(home, nodes=3) as running:
        yield running


@pytest.fixture(autouse=True)
def replicated(monkeypatch):
    """Workers create their topics as on a production cluster (docs/reliability.md)."""
    monkeypatch.setenv("STREAMSCORE_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("STREAMSCORE_MIN_INSYNC_REPLICAS", "2")


def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    async def ask() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
            return next(int(p["leader"]) for p in described["partitions"] if p["partition"] == partition)
        finally:
            await admin.close()

    return asyncio.run(ask())


def test_the_cluster_has_three_brokers_that_see_each_other(cluster):
    assert brokers_seen([n.address for n in cluster.members]) == [{1, 2, 3}] * 3


def test_a_worker_and_the_leader_node_killed_together_lose_and_repeat_nothing(
    cluster, trained_registry, tmp_path
):
    bootstrap = cluster.bootstrap_servers
    first, _ = start(bootstrap, trained_registry, tmp_path, **EXACTLY_ONCE)
    second, second_url = start(bootstrap, trained_registry, tmp_path, tag=first.tag, **EXACTLY_ONCE)
    try:
        deadline = time.monotonic() + 120
        while len(health(second_url).get("partitions", [])) == 3 and time.monotonic() < deadline:
            time.sleep(1)  # until the group has split the partitions between the two
        messages, good, bad = stream(8_000, "cluster")
        began = time.monotonic()
        send_raw(bootstrap, first.topics["input"], messages)
        wait_scored(bootstrap, first.topics["scored"], "cluster-", 800)
        leader = leader_of(bootstrap, first.topics["input"], 0)
        # Both at once: the node that leads the input's first partition, and a worker.
        cluster.kill_node(leader)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        time.sleep(15)  # the survivor goes on with two nodes of three (min.insync.replicas=2)
        cluster.start_node(leader)
        cluster.wait_ready()
        # Then another node hangs (SIGSTOP: its connections stay open, nothing answers) for 20 s.
        frozen = leader_of(bootstrap, first.topics["input"], 1)
        cluster.freeze_node(frozen)
        time.sleep(20)
        cluster.freeze_node(frozen, frozen=False)
        result = outcome(bootstrap, first.topics, "cluster", good, bad)
        report(
            "cluster_leader_node_and_worker_killed_exactly_once",
            sent=len(messages),
            nodes=3,
            killed_node=leader,
            frozen_node=frozen,
            seconds=round(time.monotonic() - began, 1),
            **result,
        )
        assert result == {"lost": 0, "duplicated": 0, "wrong_topic": 0}
        assert second.process.poll() is None, second.log()[-3000:]
        assert health(second_url).get("partitions") == [0, 1, 2], "the survivor should hold every partition"
    finally:
        stop_worker(second)
        if first.process.poll() is None:
            stop_worker(first)
        for node in cluster.members:  # the next test finds the whole cluster
            if not node.running:
                cluster.start_node(node.node_id)
