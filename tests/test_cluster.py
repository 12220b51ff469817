"""Faults together on a replicated cluster: three Apache Kafka nodes, each on a host of its own (a
network namespace on one switch, tests/netns.py), every topic three replicas with
``min.insync.replicas=2``, and exactly-once workers. A worker killed at the same moment as the
node that leads the input's first partition, then the leader of the second hung for 20 s; a
worker cut off the network, then healed; the leader node cut off the network, then healed. A
``read_committed`` reader must then see every input once: 0 lost, 0 duplicated. The figures go
to the reliability report.

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
from streamscore.streams.kafka.topics import admin_client, partitions_of
from tests.conftest import kafka_home, start_worker, stop_worker
from tests.kafka_helpers import send_raw
from tests.netns import can_make_namespaces, make_switch
from tests.test_reliability import (
    NOTHING_WRONG,
    health,
    outcome,
    ready,
    report,
    start,
    stream,
    wait_scored,
    wait_split,
)

pytestmark = pytest.mark.integration
EXACTLY_ONCE = {"processing_guarantee": "exactly_once"}


@pytest.fixture(scope="module")
def network():
    """A small network of hosts on one switch: a host for each node and one for a worker, so a
    test can cut any of them off (tests/netns.py)."""
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2 (ip netns)")
    switch = make_switch(4)
    yield switch
    switch.remove()


@pytest.fixture(scope="module")
def namespace(network):
    """The worker's host, whose link to the network a test cuts."""
    return network.hosts[3]


@pytest.fixture(scope="module")
def cluster(network):
    home = kafka_home()
    if home is None:
        pytest.skip("a three-node cluster needs Apache Kafka: set KAFKA_HOME (.ci/run does)")
    nodes = network.hosts[:3]
    with KafkaCluster(
        home, nodes=3, node_hosts=tuple(h.address for h in nodes), node_commands=tuple(h.run for h in nodes)
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def replicated(monkeypatch):
    """Workers create their topics as on a production cluster (docs/reliability.md)."""
    monkeypatch.setenv("STREAMSCORE_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("STREAMSCORE_MIN_INSYNC_REPLICAS", "2")


def partitions(bootstrap: str, topic: str) -> list[dict]:
    """``topic``'s partitions as the cluster describes them (leader, replicas, in-sync replicas)."""

    async def ask() -> list[dict]:
        async with admin_client(bootstrap) as admin:
            return (await partitions_of(admin, [topic]))[topic]

    return asyncio.run(ask())


def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    return next(int(p["leader"]) for p in partitions(bootstrap, topic) if p["partition"] == partition)


def smallest_isr(bootstrap: str, topic: str) -> int:
    """The fewest in-sync replicas any partition of ``topic`` has."""
    return min(len(p["isr"]) for p in partitions(bootstrap, topic))


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
        assert result == NOTHING_WRONG
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
        assert result == NOTHING_WRONG
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


def test_the_leader_node_cut_off_the_network_loses_and_repeats_nothing_and_rejoins(
    cluster, network, trained_registry, tmp_path
):
    """A node partitioned away, not crashed: it runs on, alone, still the leader in its own eyes.
    With min.insync.replicas=2 it cannot accept a write alone and the quorum moves its partitions;
    healed, it drops what it had not replicated and catches up."""
    bootstrap = cluster.bootstrap_servers
    worker, url = start(bootstrap, trained_registry, tmp_path, **EXACTLY_ONCE)
    try:
        messages, good, bad = stream(6_000, "isolated")
        began = time.monotonic()
        send_raw(bootstrap, worker.topics["input"], messages)
        wait_scored(bootstrap, worker.topics["scored"], "isolated-", 600)
        leader = leader_of(bootstrap, worker.topics["input"], 0)
        host = network.hosts[leader - 1]
        host.cut()
        try:
            time.sleep(25)  # past the quorum's broker session (9 s): its partitions move
            moved = leader_of(bootstrap, worker.topics["input"], 0)
        finally:
            host.heal()
        result = outcome(bootstrap, worker.topics, "isolated", good, bad)
        report(
            "cluster_leader_node_cut_off_the_network_exactly_once",
            sent=len(messages),
            nodes=3,
            cut_node=leader,
            cut_seconds=25,
            seconds=round(time.monotonic() - began, 1),
            **result,
        )
        assert moved != leader, "the quorum should give the cut-off node's partitions to another"
        assert result == NOTHING_WRONG
        assert worker.process.poll() is None, worker.log()[-3000:]
        # Healed, the node catches up: every partition of the input is on three replicas again.
        deadline = time.monotonic() + 90
        while smallest_isr(bootstrap, worker.topics["input"]) < 3 and time.monotonic() < deadline:
            time.sleep(1)
        assert smallest_isr(bootstrap, worker.topics["input"]) == 3, "the healed node should be in sync again"
    finally:
        stop_worker(worker)
