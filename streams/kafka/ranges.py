"""A time or offset range of a topic: where it starts and ends in each partition, and its records.

The range of a partition is what Kafka's timestamp lookup defines: from the first record whose
timestamp is at or after ``from`` up to, not including, the first at or after ``to``. Records
inside it whose own timestamp lies outside the window (written out of time order) are skipped and
counted; ``lateness_ms`` reads on past ``to`` by that much record time, to catch window records
written after later ones. The broker's timestamp index finds the start when it has one; a broker
without one (the embedded Tansu answers the earliest offset whatever the time) is detected by
reading the record it points at, and that partition is read from its beginning instead. The end
is fixed when the reading starts, so it ends even while producers keep writing. ``rescore`` and
``themes`` read their ranges through here.

>>> parse_time("2026-11-23T10:00:00Z", now_ms=0)
1795428000000
>>> parse_time("-2h", now_ms=7_200_000)
0
>>> parse_offsets("0=10,2=7")
{0: 10, 2: 7}
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamscore.schemas.messages import ts_to_ms
from streamscore.streams.kafka.client import wait_for_partitions

SCAN = "scan from beginning"
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """Epoch ms of ``--from``/``--to``: ISO-8601, epoch milliseconds, ``now`` or ``-15m`` (ago)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    text = text.strip()
    if text == "now":
        return now_ms
    rel = _RELATIVE.match(text)
    if rel:
        return now_ms - int(float(rel.group(1)) * _UNIT_MS[rel.group(2)])
    if text.isdigit():
        return int(text)
    try:
        return ts_to_ms(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO-8601 (2026-11-23T10:00:00Z), epoch milliseconds, "
            "'now' or a time ago such as -15m, -2h, -7d (write --from=-2h)"
        ) from None


def parse_offsets(text: str) -> int | dict[int, int]:
    """``N`` (every partition) or ``P=N,P=N`` (per partition)."""
    text = text.strip()
    try:
        if text.isdigit():
            return int(text)
        return {int(p): int(o) for p, _, o in (part.partition("=") for part in text.split(","))}
    except ValueError:
        raise ValueError(f"{text!r} is not an offset: use N, or P=N,P=N per partition") from None


@dataclass(frozen=True)
class Window:
    """What to rescore: a time range (epoch ms, ``to`` excluded) or offsets (``to`` excluded)."""

    from_ms: int | None = None
    to_ms: int | None = None
    from_offsets: int | dict[int, int] | None = None
    to_offsets: int | dict[int, int] | None = None
    lateness_ms: int = 0  # keep reading until a record this much past ``to_ms``

    def check(self) -> None:
        by_time = self.from_ms is not None or self.to_ms is not None
        by_offset = self.from_offsets is not None or self.to_offsets is not None
        if by_time == by_offset:
            raise ValueError(
                "give a time range (--from [--to]) or an offset range (--from-offset [--to-offset])"
            )
        if by_time and self.from_ms is None:
            raise ValueError("--to needs --from")
        if self.from_ms is not None and self.to_ms is not None and self.to_ms <= self.from_ms:
            raise ValueError("--to must be later than --from")
        if self.lateness_ms < 0:
            raise ValueError("--lateness cannot be negative")

    @property
    def by_time(self) -> bool:
        return self.from_ms is not None


@dataclass
class PartitionRange:
    """One partition's part of the window, and what reading it found."""

    partition: int
    start: int
    stop: int  # the partition's end offset when the run started; never read past it
    how: str  # "timestamp index", "scan from beginning" or "offsets"
    read: int = 0
    in_window: int = 0
    outside_window: int = 0  # timestamps out of order: inside the offsets, outside the times
    entered: bool = True  # False while a scan has not yet reached the window's first record
    done: bool = False


def _pick(spec: int | dict[int, int] | None, partition: int, default: int) -> int:
    if spec is None:
        return default
    if isinstance(spec, int):
        return spec
    return spec.get(partition, default)


async def _record_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> Any:
    consumer.seek(tp, offset)
    batch = await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
    records = batch.get(tp, [])
    return records[0] if records else None


async def start_by_time(
    consumer: AIOKafkaConsumer, tp: TopicPartition, ts: int, first: int, end: int
) -> tuple[int, str]:
    """First offset with timestamp >= ``ts``: the broker's answer if a read confirms it, else the
    beginning (the reader then skips records before the window)."""
    if first >= end:
        return end, "empty partition"
    try:
        found = (await consumer.offsets_for_times({tp: ts}))[tp]
    except Exception:  # a broker without ListOffsets v1+
        return first, SCAN
    if found is None:
        last = await _record_at(consumer, tp, end - 1)
        if last is not None and last.timestamp < ts:
            return end, "timestamp index"
        return first, SCAN
    at = await _record_at(consumer, tp, found.offset)
    before = await _record_at(consumer, tp, found.offset - 1) if found.offset > first else None
    if at is not None and at.timestamp >= ts and (before is None or before.timestamp < ts):
        return found.offset, "timestamp index"
    return first, SCAN


async def end_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """One past each partition's last record, from the high watermark of a fetch.

    ListOffsets alone is not enough: the embedded Tansu broker answers the first offset of the
    last record batch + 1 (measured: 11 for 15 records sent in batches of 10 and 5), while its
    fetch responses carry the true high watermark. On Kafka the two agree.
    """
    reported = await consumer.end_offsets(tps)
    firsts = await consumer.beginning_offsets(tps)
    out = {}
    for tp in tps:
        end = reported[tp]
        if end > firsts[tp]:
            consumer.seek(tp, end - 1)
            await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
            end = max(end, consumer.highwater(tp) or 0)
        out[tp] = end
    return out


async def plan_ranges(consumer: AIOKafkaConsumer, topic: str, window: Window) -> list[PartitionRange]:
    parts = await wait_for_partitions(consumer, topic)
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    firsts = await consumer.beginning_offsets(tps)
    ends = await end_offsets(consumer, tps)
    ranges = []
    for tp in tps:
        first, end = firsts[tp], ends[tp]
        if window.by_time:
            assert window.from_ms is not None
            start, how = await start_by_time(consumer, tp, window.from_ms, first, end)
            ranges.append(PartitionRange(tp.partition, start, end, how, entered=how != SCAN))
        else:
            start = max(first, _pick(window.from_offsets, tp.partition, first))
            stop = min(end, _pick(window.to_offsets, tp.partition, end))
            ranges.append(PartitionRange(tp.partition, start, max(start, stop), "offsets"))
    return ranges


async def read_window(
    consumer: AIOKafkaConsumer, topic: str, ranges: list[PartitionRange], window: Window, batch: int
) -> AsyncIterator[list[Any]]:
    """Batches of the records in the window, partition ranges read side by side."""
    by_partition = {r.partition: r for r in ranges}
    for r in ranges:
        r.done = r.start >= r.stop
        if not r.done:
            consumer.seek(TopicPartition(topic, r.partition), r.start)
    while not all(r.done for r in ranges):
        active = [TopicPartition(topic, r.partition) for r in ranges if not r.done]
        fetched = await consumer.getmany(*active, timeout_ms=1_000, max_records=batch)
        out = []
        for tp, records in fetched.items():
            r = by_partition[tp.partition]
            for rec in records:
                if r.done or rec.offset >= r.stop:
                    r.done = True
                    break
                r.read += 1
                if window.by_time:
                    assert window.from_ms is not None
                    if window.to_ms is not None and rec.timestamp >= window.to_ms + window.lateness_ms:
                        r.done = True  # the first record at or after --to (+ lateness) ends the range
                        break
                    if window.to_ms is not None and rec.timestamp >= window.to_ms:
                        r.outside_window += 1
                        continue
                    if rec.timestamp < window.from_ms:
                        r.outside_window += r.entered  # before the start, a scan just reads on
                        continue
                    r.entered = True
                r.in_window += 1
                out.append(rec)
            if not r.done and await consumer.position(tp) >= r.stop:
                r.done = True
        if out:
            yield out
