"""A real three-node Apache Kafka cluster (KRaft) from ``KAFKA_HOME``, for tests of faults together.

Each node is broker and controller in a JVM of its own, with its own ports and data folder, all
three in one controller quorum; internal topics keep three replicas and refuse a write that fewer
than two have (``min.insync.replicas=2``), as a production cluster does. A node can be killed
(``kill -9``), frozen (``SIGSTOP``) and brought back on the same data, so a test can take away the
leader of a partition, or the transaction coordinator, while workers are busy. Each node may
also run on a host of its own (``node_hosts``, ``node_commands``: a network namespace per node,
tests/netns.py), so that a test can cut one off the network while it runs.

>>> cluster = KafkaCluster(Path("."), nodes=2)
>>> cluster.members = [Node(1, 9092, 10, Path("a"), "10.0.0.11"), Node(2, 9092, 11, Path("b"), "10.0.0.12")]
>>> cluster.quorum()
'1@10.0.0.11:10,2@10.0.0.12:11'
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamscore.streams.kafka.apache import LOG4J2, java_command, quiet_aiokafka
from streamscore.streams.kafka.broker import dies_with_parent, exit_on_sigterm, free_port, stop_process

# What every node holds: three replicas of everything, two of them needed for a write.
CLUSTER_DEFAULTS = (
    "num.partitions=1",
    "auto.create.topics.enable=false",
    "default.replication.factor=3",
    "min.insync.replicas=2",
    "offsets.topic.replication.factor=3",
    "offsets.topic.num.partitions=3",
    "transaction.state.log.replication.factor=3",
    "transaction.state.log.min.isr=2",
    "transaction.state.log.num.partitions=3",
    "share.coordinator.state.topic.replication.factor=3",
    "share.coordinator.state.topic.min.isr=2",
    "unclean.leader.election.enable=false",
    "group.initial.rebalance.delay.ms=0",
)


@dataclass
class Node:
    """One node of the cluster: broker and controller in one JVM."""

    node_id: int
    port: int
    controller_port: int
    data: Path
    host: str = "127.0.0.1"
    command: tuple[str, ...] = ()  # what the JVM is started through (a network namespace's prefix)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class KafkaCluster:
    """``nodes`` Apache Kafka nodes from ``kafka_home/libs`` in one cluster, on loopback."""

    kafka_home: Path
    nodes: int = 3
    host: str = "127.0.0.1"  # where clients and the other nodes reach each node
    # Hosts of their own (tests/netns.py): each node's address, and the prefix its JVM runs
    # through (``ip netns exec NAME``), node 1 first; empty: every node on ``host``.
    node_hosts: tuple[str, ...] = ()
    node_commands: tuple[tuple[str, ...], ...] = ()
    run_dir: Path | None = None
    members: list[Node] = field(default_factory=list)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.address for n in self.members)

    def node(self, node_id: int) -> Node:
        """The node of ``node_id`` (1 to ``nodes``)."""
        return next(n for n in self.members if n.node_id == node_id)

    def quorum(self) -> str:
        """The controller quorum, every node's controller listener."""
        return ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.members)

    def start(self, timeout_s: float = 180.0) -> KafkaCluster:
        self.run_dir = Path(tempfile.mkdtemp(prefix="streamscore-cluster-"))
        (self.run_dir / "log4j2.properties").write_text(LOG4J2.format(log=self.run_dir / "kafka.log"))
        ports = [(free_port(), free_port()) for _ in range(self.nodes)]
        hosts = self.node_hosts or (self.host,) * self.nodes
        commands = self.node_commands or ((),) * self.nodes
        self.members = [
            Node(i, port, controller, self.run_dir / f"node-{i}", hosts[i - 1], commands[i - 1])
            for i, (port, controller) in enumerate(ports, start=1)
        ]
        cluster_id = subprocess.run(
            [*self._java(), "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        for node in self.members:
            node.data.mkdir(parents=True)
            (node.data / "server.properties").write_text(self._properties(node))
            fmt = subprocess.run(
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self._config(node)),
                ],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise RuntimeError(
                    f"formatting node {node.node_id} failed: {(fmt.stderr or fmt.stdout)[-500:]}"
                )
        exit_on_sigterm()
        try:
            for node in self.members:
                self.start_node(node.node_id)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, node_id: int) -> None:
        """Start (or bring back, on the data it had) one node."""
        node = self.node(node_id)
        with open(node.data / "stdout.log", "ab") as out:
            node.process = subprocess.Popen(
                [*dies_with_parent(), *node.command, *self._java(), "kafka.Kafka", str(self._config(node))],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill_node(self, node_id: int) -> None:
        """``kill -9``: no shutdown, no flush, no goodbye to the quorum or the group."""
        node = self.node(node_id)
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def freeze_node(self, node_id: int, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT): the node holds its connections but answers nothing."""
        node = self.node(node_id)
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until every running node answers and sees all running brokers (metadata from each)."""
        deadline = time.monotonic() + timeout_s
        want = {n.node_id for n in self.members if n.running}
        while True:
            dead = sorted(n.node_id for n in self.members if n.node_id in want and not n.running)
            if dead:
                raise RuntimeError(f"Kafka node(s) {dead} exited; logs in {self.run_dir}")
            seen = brokers_seen([n.address for n in self.members if n.node_id in want])
            if all(s == want for s in seen):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not come up within {timeout_s:.0f} s (seen: {seen})")
            time.sleep(1.0)

    def stop(self) -> None:
        """Every node at once: one by one, the last would wait for a quorum that is gone."""
        running = [n.process for n in self.members if n.process is not None and n.process.poll() is None]
        for process in running:
            os.kill(process.pid, signal.SIGCONT)  # a frozen node cannot stop
            process.terminate()
        for process in running:
            stop_process(process, timeout_s=10)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config(self, node: Node) -> Path:
        return node.data / "server.properties"

    def _java(self) -> list[str]:
        assert self.run_dir is not None
        return java_command(self.kafka_home, self.run_dir / "log4j2.properties", max_heap="512m")

    def _properties(self, node: Node) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node.node_id}",
                f"controller.quorum.voters={self.quorum()}",
                "controller.listener.names=CONTROLLER",
                f"listeners=PLAINTEXT://{node.address},CONTROLLER://{node.host}:{node.controller_port}",
                f"advertised.listeners=PLAINTEXT://{node.address}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={node.data}/log",
                *CLUSTER_DEFAULTS,
                "",
            ]
        )


def brokers_seen(addresses: list[str]) -> list[set[int]]:
    """The broker ids each of ``addresses`` lists in its metadata (empty: it did not answer)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def seen(address: str) -> set[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=address, request_timeout_ms=3_000)
        try:
            await admin.start()
            return {int(b["node_id"]) for b in (await admin.describe_cluster())["brokers"]}
        except Exception:
            return set()
        finally:
            await admin.close()

    with quiet_aiokafka():
        return [asyncio.run(seen(a)) for a in addresses]
