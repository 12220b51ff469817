"""The few private parts of aiokafka and Faust we rely on, each behind one small function.

Neither library offers these publicly: a full metadata refresh (aiokafka's consumer refreshes
only the topics it tracks), Faust's running producer (we hand it whole partition batches, not
``Topic.send`` records), the consumer's fetch wait (Faust fixes it at 1.5 s) and isolation level
(Faust reads ``read_committed`` only in its own exactly-once mode), Faust's offset commit
(streams/kafka/faust_transport.py filters it), and a request that the group rebalance (aiokafka
has no ``enforce_rebalance``; exactly-once asks for one when a partition's producer is fenced), and
mode's worker shutdown steps that the worker bounds. :func:`check`
fails loudly, naming what moved, when an upgrade renames one; tests/test_kafka_internals.py runs
it against the installed versions.
"""

from __future__ import annotations

import inspect
from typing import Any


async def topic_partitions(consumer: Any, topic: str) -> set[int] | None:
    """``topic``'s partitions from fresh cluster metadata, or None if the topic does not exist."""
    return (await topics_partitions(consumer, [topic]))[topic]


async def topics_partitions(consumer: Any, topics: list[str]) -> dict[str, set[int] | None]:
    """Each topic's partitions (None: it does not exist) from one fetch of fresh cluster metadata."""
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - all topics, not only tracked ones
    return {topic: cluster.partitions_for_topic(topic) for topic in topics}


def faust_producer(app: Any) -> Any:
    """The ``AIOKafkaProducer`` of a Faust app: started before its agents, stopped after them."""
    return app.producer._ensure_producer()  # noqa: SLF001 - Faust has no public accessor


def set_fetch_wait(consumer: Any, ms: int) -> None:
    """Set an ``AIOKafkaConsumer``'s fetch wait before ``start()`` builds its fetcher."""
    consumer._fetch_max_wait_ms = ms  # noqa: SLF001 - aiokafka has no setter


def set_read_committed(consumer: Any) -> None:
    """Make an ``AIOKafkaConsumer`` that Faust built skip aborted transactions' records."""
    consumer._isolation_level = "read_committed"  # noqa: SLF001 - Faust picks it from its own EOS mode


def fetch_wait(consumer: Any) -> int:
    """An ``AIOKafkaConsumer``'s fetch wait in milliseconds."""
    return int(consumer._fetch_max_wait_ms)  # noqa: SLF001 - aiokafka has no getter


def request_rejoin(app: Any) -> None:
    """Ask a running Faust app's consumer to rejoin its group, so the group rebalances; safe from
    the app's loop (the consumer runs on a thread of its own)."""
    thread = app.consumer._thread  # noqa: SLF001 - Faust has no public accessor
    consumer = thread._ensure_consumer()  # noqa: SLF001
    thread.thread_loop.call_soon_threadsafe(consumer._coordinator.request_rejoin)  # noqa: SLF001


def check() -> None:
    """Raise if the installed aiokafka or Faust lacks what this module uses."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.client import AIOKafkaClient
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer
    from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
    from mode import Worker as ModeWorker

    missing = [
        name
        for owner, attr, name in (
            (AIOKafkaClient, "fetch_all_metadata", "aiokafka AIOKafkaClient.fetch_all_metadata"),
            (Producer, "_ensure_producer", "faust Producer._ensure_producer"),
            (FaustConsumer, "_commit", "faust Consumer._commit"),
            (AIOKafkaConsumerThread, "_ensure_consumer", "faust AIOKafkaConsumerThread._ensure_consumer"),
            (GroupCoordinator, "request_rejoin", "aiokafka GroupCoordinator.request_rejoin"),
            # streams/worker/run.py's BoundedShutdownWorker overrides these of mode's Worker
            (ModeWorker, "_schedule_shutdown", "mode Worker._schedule_shutdown"),
            (ModeWorker, "_gather_all", "mode Worker._gather_all"),
            (ModeWorker, "_sentinel_task", "mode Worker._sentinel_task"),
        )
        if not hasattr(owner, attr)
    ]
    init = inspect.getsource(AIOKafkaConsumer.__init__)  # the attributes are set there
    missing += [
        f"aiokafka AIOKafkaConsumer.{a}"
        for a in ("_client", "_fetch_max_wait_ms", "_isolation_level", "_coordinator")
        if f"self.{a} =" not in init
    ]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} changed: streams/kafka/internals.py does not support this "
            "aiokafka/faust version; pin the versions in pyproject.toml or update the adapter"
        )
