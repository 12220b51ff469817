"""Faust on aiokafka with a short fetch wait, so a quiet stream is scored in milliseconds.

Faust asks every fetch to wait up to 1.5 s for data (``fetch_max_wait_ms=1500``, fixed in its
aiokafka driver). Apache Kafka answers a waiting fetch as soon as a record arrives, but the
embedded Tansu broker holds it for the whole wait (docs/performance-log.md). A short wait costs one small fetch request per wait period when idle.
``StreamApp(fetch_wait_ms=...)`` sets it (``Settings.fetch_wait_ms``); on Apache Kafka a longer
wait costs no latency and fewer idle requests.

For exactly-once (streams/kafka/transactions.py) the same app reads ``read_committed`` and leaves
the offsets of its ``transactional_topics`` alone: their transactions commit those. Faust would
otherwise also commit them, later and outside any transaction, which can move a committed
offset back behind a transaction's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as driver

from streamscore.streams.kafka import internals

FETCH_MAX_WAIT_MS = 50


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        app = cast("StreamApp", self.app)  # only StreamApp uses it
        internals.set_fetch_wait(consumer, app.fetch_wait_ms)
        if app.transactional_topics:
            internals.set_read_committed(consumer)
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Mapping[Any, int]) -> bool:
        skip = cast("StreamApp", self.app).transactional_topics
        mine = {tp: offset for tp, offset in offsets.items() if tp.topic not in skip}
        return await super()._commit(mine) if mine else True


class _Transport(driver.Transport):
    Consumer = _Consumer


class StreamApp(faust.App):
    """A ``faust.App`` whose Kafka consumer waits at most ``fetch_wait_ms`` for a fetch."""

    def __init__(
        self,
        *args: Any,
        fetch_wait_ms: int = FETCH_MAX_WAIT_MS,
        transactional_topics: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> None:
        self.fetch_wait_ms = fetch_wait_ms
        self.transactional_topics = transactional_topics
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
