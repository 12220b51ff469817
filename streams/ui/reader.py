"""Keeps a :class:`FleetView` current from Kafka: follows ``drift.episodes`` and the DLQ from their
start, and samples the scored and input topics' offsets and the worker group's commits.

It reads without a consumer group, so it never joins or disturbs the workers' group. A broker
that stops answering is shown on the page (``view.problem``) and retried; topics that do not exist
yet are looked for again at every sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streamscore.streams.kafka import internals
from streamscore.streams.kafka.security import client_options
from streamscore.streams.settings import Settings
from streamscore.streams.ui.fleet import FleetView

log = logging.getLogger("streamscore.ui")

SAMPLE_EVERY_S = 2.0  # offsets, lag and the latest scored records
PEEK_BACK = 5  # the last record of a partition is among its last few offsets (transaction markers)


class FleetReader:
    """Reads the fleet's topics into ``view`` until :meth:`stop`."""

    def __init__(self, settings: Settings, bootstrap: str, view: FleetView) -> None:
        self.settings, self.bootstrap, self.view = settings, bootstrap, view
        options = dict(bootstrap_servers=bootstrap, **client_options(settings))
        consumer = dict(group_id=None, enable_auto_commit=False, isolation_level="read_committed")
        self.follow = AIOKafkaConsumer(auto_offset_reset="earliest", **consumer, **options)
        # Seeks back to each partition's last records; never disturbs ``follow``.
        self.peek = AIOKafkaConsumer(auto_offset_reset="earliest", **consumer, **options)
        self.admin = AIOKafkaAdminClient(**options)
        self.followed: set[TopicPartition] = set()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        await self._start()
        try:
            next_sample = 0.0
            while not self.stopping.is_set():
                try:
                    if time.monotonic() >= next_sample:
                        next_sample = time.monotonic() + SAMPLE_EVERY_S
                        await self.sample()
                    await self.read()
                    self.view.problem = None
                except Exception as exc:  # the page says what is wrong; the reader keeps trying
                    self.view.problem = (
                        f"cannot read the topics from {self.bootstrap}: {exc or type(exc).__name__}"
                    )
                    log.warning("%s", self.view.problem)
                    await self._pause(SAMPLE_EVERY_S)
        finally:
            await self._close()

    def stop(self) -> None:
        self.stopping.set()

    async def _start(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.follow.start()
                await self.peek.start()
                await self.admin.start()
                return
            except Exception as exc:
                self.view.problem = (
                    f"cannot reach the broker at {self.bootstrap}: {exc or type(exc).__name__}"
                )
                log.warning("%s; retrying", self.view.problem)
                await self._close()
                await self._pause(5.0)

    async def _close(self) -> None:
        for client in (self.follow, self.peek):
            try:
                await client.stop()
            except Exception:  # never started, or the broker is gone: nothing to release
                pass
        try:
            await self.admin.close()
        except Exception:
            pass

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def read(self) -> None:
        """Read what arrived on the followed topics (waits up to half a second)."""
        if not self.followed:
            await self._pause(0.5)
            return
        batch = await self.follow.getmany(timeout_ms=500, max_records=2_000)
        for tp, records in batch.items():
            add = (
                self.view.add_episode
                if tp.topic == self.settings.episodes_topic
                else self.view.add_dead_letter
            )
            for record in records:
                add(record.value)

    async def sample(self) -> None:
        """Find the topics (new partitions too), then sample offsets, lag and the latest scored."""
        s = self.settings
        parts = await internals.topics_partitions(self.follow, self._topics())
        self.view.missing = [t for t, p in parts.items() if not p]
        wanted = {TopicPartition(t, p) for t in (s.episodes_topic, s.dlq_topic) for p in parts[t] or ()}
        if wanted != self.followed:
            # A new assignment forgets positions: keep those of the partitions already read.
            positions = {tp: await self.follow.position(tp) for tp in self.followed & wanted}
            self.follow.assign(sorted(wanted))
            for tp, offset in positions.items():
                self.follow.seek(tp, offset)
            new = sorted(wanted - self.followed)
            if new:
                await self.follow.seek_to_beginning(*new)
            self.followed = wanted
        scored = [TopicPartition(s.scored_topic, p) for p in sorted(parts[s.scored_topic] or ())]
        inputs = [TopicPartition(s.input_topic, p) for p in sorted(parts[s.input_topic] or ())]
        ends = await self.peek.end_offsets(scored + inputs) if scored or inputs else {}
        lag = await self._lag(inputs, ends)
        self.view.sample_offsets(time.monotonic(), sum(ends[tp] for tp in scored), lag)
        await self._peek_latest(scored, ends)

    def _topics(self) -> list[str]:
        s = self.settings
        return [s.episodes_topic, s.dlq_topic, s.scored_topic, s.input_topic]

    async def _lag(self, inputs: list[TopicPartition], ends: dict[TopicPartition, int]) -> dict[int, int]:
        """Messages of each input partition that the worker group has not committed yet."""
        if not inputs:
            return {}
        committed = await self.admin.list_consumer_group_offsets(self.settings.group_id, partitions=inputs)
        done: dict[TopicPartition, int] = {}
        for tp in inputs:
            meta: Any = committed.get(tp)
            if meta is not None and meta.offset >= 0:
                done[tp] = meta.offset
        never = [tp for tp in inputs if tp not in done]  # nothing committed: all of it is behind
        if never:
            done.update(await self.peek.beginning_offsets(never))
        return {tp.partition: max(ends[tp] - done[tp], 0) for tp in inputs}

    async def _peek_latest(self, scored: list[TopicPartition], ends: dict[TopicPartition, int]) -> None:
        """The last record of each scored partition: the model version that is serving there."""
        filled = [tp for tp in scored if ends[tp] > 0]
        if not filled:
            return
        self.peek.assign(filled)
        for tp in filled:
            self.peek.seek(tp, max(ends[tp] - PEEK_BACK, 0))
        batch = await self.peek.getmany(*filled, timeout_ms=1_000)
        for tp, records in batch.items():
            if records:
                self.view.add_scored(tp.partition, records[-1].value)
