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

from streamscore.streams.kafka.broker import free_port
from streamscore.streams.kafka.cluster import KafkaCluster, brokers_seen
from tests.conftest import kafka_home, start_worker, stop_worker
from tests.kafka_helpers import send_raw
from tests.netns import can_make_namespaces, make_namespace
from tests.test_reliability import health, outcome, ready, report, start, stream, wait_scored, wait_split

pytestmark = pytest.mark.integration
EXACTLY_ONCE = {"processing_guarantee": "exactly_once"}


@pytest.fixture(scope="module")
def namespace():
    """A network of its own for one worker, whose link to the cluster a test cuts."""
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2 (ip netns)")
    ns = make_namespace()
    yield ns
    ns.remove()


@pytest.fixture(scope="module")
def cluster(namespace):
    home = kafka_home()
    if home is None:
        pytest.skip("a three-node cluster needs Apache Kafka: set KAFKA_HOME (.ci/run does)")
    # The nodes listen where the namespace reaches this side of its link.
    with KafkaCluster(home, nodes=3, host=namespace.host_address) as running:
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
        wait_split(second_url)
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


def test_a_worker_cut_off_from_the_cluster_is_fenced_then_rejoins_and_nothing_repeats(
    cluster, namespace, trained_registry, tmp_path
):
    """A network partition, not a crash: the cut-off worker runs on, holding open transactions,
    while the group gives its partitions to the other; healed, its late work must be refused."""
    bootstrap = cluster.bootstrap_servers
    port = free_port()
    apart = start_worker(
        bootstrap, trained_registry, tmp_path, wrap=namespace.run,
        metrics_host="0.0.0.0", metrics_port=str(port), **EXACTLY_ONCE,
    )  # fmt: skip
    apart_url = f"http://{namespace.address}:{port}"
    ready(apart, apart_url)
    other, other_url = start(bootstrap, trained_registry, tmp_path, tag=apart.tag, **EXACTLY_ONCE)
    try:
        wait_split(other_url)
        messages, good, bad = stream(8_000, "apart")
        send_raw(bootstrap, apart.topics["input"], messages)
        wait_scored(bootstrap, apart.topics["scored"], "apart-", 800)
        namespace.cut()
        try:
            deadline = time.monotonic() + 60
            while len(health(other_url).get("partitions", [])) < 3 and time.monotonic() < deadline:
                time.sleep(1)  # the group's session for the cut-off worker runs out
            took_over = health(other_url).get("partitions")
            time.sleep(5)
        finally:
            namespace.heal()
        result = outcome(bootstrap, apart.topics, "apart", good, bad)
        report("cluster_worker_cut_off_then_healed_exactly_once", sent=len(messages), nodes=3, **result)
        assert took_over == [0, 1, 2], "the other worker should take every partition while the link is cut"
        assert result == {"lost": 0, "duplicated": 0, "wrong_topic": 0}
        # Healed, the cut-off worker finds its way back into the group and works again.
        deadline = time.monotonic() + 120
        while not health(apart_url).get("partitions") and time.monotonic() < deadline:
            time.sleep(1)
        assert apart.process.poll() is None, apart.log()[-3000:]
        assert health(apart_url).get("partitions"), "the healed worker should hold partitions again"
    finally:
        namespace.heal()
        stop_worker(other)
        stop_worker(apart)
