"""``streamscore rescore``: a time (or offset) range of the input topic, scored again by a chosen
model into a topic of its own, beside the live workers and without touching their group.

The range of a partition is what Kafka's timestamp lookup defines: from the first record whose
timestamp is at or after ``--from`` up to, not including, the first at or after ``--to``.
Records inside it whose own timestamp lies outside the window (written out of time order) are
skipped and counted; ``lateness_ms`` reads on past ``--to`` by that much record time, to catch
window records written after later ones. The broker's timestamp index finds the start when it has one; a broker
without one (the embedded Tansu answers the earliest offset whatever the time) is detected by
reading the record it points at, and that partition is read from its beginning instead. The end
is fixed when the run starts, so a rescore ends even while producers keep writing.

``compare`` reads what the live workers wrote to ``texts.scored`` for the same input records
(matched by their origin: topic, partition, offset) and reports label and OOD agreement, the
OOD-score correlation and the ids whose verdict changed.

>>> parse_time("2026-11-23T10:00:00Z", now_ms=0)
1795428000000
>>> parse_time("-2h", now_ms=7_200_000)
0
>>> parse_offsets("0=10,2=7")
{0: 10, 2: 7}
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamscore.models.batch import OutputLimits, RawMessage, process_batch
from streamscore.schemas.messages import Origin, record_bytes_allowed, ts_to_ms
from streamscore.streams.commands.progress import bar
from streamscore.streams.kafka.client import wait_for_partitions
from streamscore.streams.kafka.security import client_options
from streamscore.streams.kafka.topics import ensure_topics, max_message_bytes
from streamscore.streams.settings import Settings
from streamscore.streams.worker.serving import ModelHolder

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


async def _start_by_time(
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
            start, how = await _start_by_time(consumer, tp, window.from_ms, first, end)
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


@dataclass
class RescoreResult:
    input_topic: str
    output_topic: str
    model_version: str
    window: dict[str, Any]
    partitions: list[PartitionRange]
    rescored: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    comparison: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["dead_lettered"] = dict(self.dead_lettered)
        out["msgs_per_s"] = round(self.rescored / self.seconds, 1) if self.seconds > 0 else None
        out["seconds"] = round(self.seconds, 3)
        for p in out["partitions"]:
            p.pop("done")
            p.pop("entered")
        return out


def _summary_of(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "label", "confidence", "ood_score", "is_ood", "model_version")
    return {k: record.get(k) for k in keep}


async def rescore(
    settings: Settings,
    bootstrap: str,
    window: Window,
    holder: ModelHolder,
    output_topic: str,
    *,
    compare: bool = False,
    max_changed: int = 1_000,
    progress: bool = False,
) -> RescoreResult:
    """Score the window of ``settings.input_topic`` with ``holder``'s model into ``output_topic``."""
    window.check()
    began = time.monotonic()
    security = client_options(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **security,
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, **security)
    try:
        ranges = await plan_ranges(consumer, settings.input_topic, window)
        # Rescored records keep their event time; on a topic with a time retention Apache Kafka
        # would delete old history at its next retention check (minutes), so a topic rescore
        # creates keeps its records until the user deletes it.
        await ensure_topics(
            bootstrap,
            {output_topic: max(1, len(ranges))},
            security,
            configs={output_topic: {"retention.ms": "-1"}},
        )
        # A scored record its topic would refuse is counted as dead-lettered (output_too_large).
        topic_bytes = (await max_message_bytes(bootstrap, [output_topic], security))[output_topic]
        limits = replace(settings.batch_limits, output=OutputLimits(scored=record_bytes_allowed(topic_bytes)))
        await producer.start()
        result = RescoreResult(
            settings.input_topic, output_topic, holder.version, _window_json(window), ranges
        )
        bar = _bar(sum(r.stop - r.start for r in ranges), progress, f"rescore → {output_topic}")
        new: dict[tuple[str, int, int], dict[str, Any]] = {}
        unconfirmed: list[asyncio.Future] = []  # the next batch is scored while these are in flight
        async for records in read_window(consumer, settings.input_topic, ranges, window, settings.batch_size):
            batch = [
                RawMessage(rec.key, rec.value, Origin(rec.topic, rec.partition, rec.offset), rec.timestamp)
                for rec in records
            ]
            out = await process_batch(batch, holder.score, limits)
            result.dead_lettered.update(out.reasons)
            # The rescored record keeps its input's event time, so time ranges line up.
            stamps = {(r.origin.partition, r.origin.offset): r.timestamp_ms for r in batch}
            for key, value in out.scored:
                record = json.loads(value)
                o = record["origin"]
                ts = stamps[(o["partition"], o["offset"])]
                unconfirmed.append(await producer.send(output_topic, value=value, key=key, timestamp_ms=ts))
                if compare:
                    new[(o["topic"], o["partition"], o["offset"])] = _summary_of(record)
            if len(unconfirmed) > 10 * settings.batch_size:
                await asyncio.gather(*unconfirmed)
                unconfirmed.clear()
            result.rescored += len(out.scored)
            if bar is not None:
                bar.update(len(records))
        await asyncio.gather(*unconfirmed)
        if bar is not None:
            bar.close()
        if compare:
            live = await live_results(consumer, settings.scored_topic, set(new), window.from_ms)
            result.comparison = compare_results(new, live, max_changed)
            result.comparison["live_topic"] = settings.scored_topic
        result.seconds = time.monotonic() - began
        return result
    finally:
        await producer.stop()
        await consumer.stop()


def _window_json(window: Window) -> dict[str, Any]:
    return {k: v for k, v in asdict(window).items() if v is not None}


def _bar(total: int, show: bool, desc: str) -> Any:
    return bar(total, desc) if show else None


async def live_results(
    consumer: AIOKafkaConsumer, scored_topic: str, origins: set[tuple[str, int, int]], from_ms: int | None
) -> dict[tuple[str, int, int], dict[str, Any]]:
    """What the live workers wrote for ``origins`` (the last record per origin wins)."""
    if not origins:
        return {}
    parts = await wait_for_partitions(consumer, scored_topic)
    tps = [TopicPartition(scored_topic, p) for p in parts]
    consumer.assign(tps)
    firsts, ends = await consumer.beginning_offsets(tps), await end_offsets(consumer, tps)
    ranges = []
    for tp in tps:
        # A scored record is written after its input, so --from bounds it from below too.
        start, how = (
            await _start_by_time(consumer, tp, from_ms, firsts[tp], ends[tp])
            if from_ms is not None
            else (firsts[tp], "offsets")
        )
        ranges.append(PartitionRange(tp.partition, start, ends[tp], how))
    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    async for records in read_window(consumer, scored_topic, ranges, Window(from_offsets=0), 1_000):
        for rec in records:
            try:
                value = json.loads(rec.value)
                o = value["origin"]
                key = (o["topic"], int(o["partition"]), int(o["offset"]))
            except (ValueError, KeyError, TypeError):
                continue
            if key in origins:
                found[key] = _summary_of(value)
    return found


def compare_results(
    new: dict[tuple[str, int, int], dict[str, Any]],
    live: dict[tuple[str, int, int], dict[str, Any]],
    max_changed: int = 1_000,
) -> dict[str, Any]:
    """Agreement of the rescored records with the live ones for the same input records.

    >>> a = {("t", 0, 1): {"id": "a", "label": "x", "ood_score": 1.0, "is_ood": False, "confidence": 0.9, "model_version": "v2"}}
    >>> b = {("t", 0, 1): {"id": "a", "label": "y", "ood_score": 2.0, "is_ood": True, "confidence": 0.8, "model_version": "v1"}}
    >>> c = compare_results(a, b)
    >>> c["label_agreement"], c["changed_total"], c["changed"][0]["live_label"]
    (0.0, 1, 'y')
    """
    both = sorted(set(new) & set(live))
    out: dict[str, Any] = {
        "compared": len(both),
        "missing_live": len(set(new) - set(live)),
        "live_model_versions": dict(Counter(live[k]["model_version"] for k in both)),
    }
    if not both:
        return {**out, "label_agreement": None, "is_ood_agreement": None, "changed_total": 0, "changed": []}
    a = np.array([new[k]["ood_score"] for k in both], dtype=np.float64)
    b = np.array([live[k]["ood_score"] for k in both], dtype=np.float64)
    same_label = [new[k]["label"] == live[k]["label"] for k in both]
    same_ood = [new[k]["is_ood"] == live[k]["is_ood"] for k in both]
    changed = [
        {
            "id": new[k]["id"],
            "origin": {"topic": k[0], "partition": k[1], "offset": k[2]},
            "live_label": live[k]["label"],
            "label": new[k]["label"],
            "live_is_ood": live[k]["is_ood"],
            "is_ood": new[k]["is_ood"],
            "live_ood_score": live[k]["ood_score"],
            "ood_score": new[k]["ood_score"],
            "live_model_version": live[k]["model_version"],
        }
        for k, sl, so in zip(both, same_label, same_ood, strict=True)
        if not (sl and so)
    ]
    out.update(
        {
            "label_agreement": float(np.mean(same_label)),
            "is_ood_agreement": float(np.mean(same_ood)),
            "ood_score_pearson": _corr(a, b),
            "ood_score_spearman": _corr(_ranks(a), _ranks(b)),
            "ood_score_mean_abs_diff": float(np.mean(np.abs(a - b))),
            "changed_total": len(changed),
            "changed": changed[:max_changed],
        }
    )
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.asarray(rankdata(x), dtype=np.float64)


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 1.0 if len(a) and np.array_equal(a, b) else None
    return float(np.corrcoef(a, b)[0, 1])


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def describe(result: RescoreResult) -> str:
    """The human summary printed at the end of a rescore."""
    r = result
    rate = f" ({r.rescored / r.seconds:.0f}/s)" if r.seconds > 0 and r.rescored else ""
    lines = [
        f"rescored {r.rescored} messages of {r.input_topic} with model {r.model_version} into "
        f"{r.output_topic} in {r.seconds:.1f}s{rate}"
    ]
    for p in r.partitions:
        extra = f", {p.outside_window} out of time order skipped" if p.outside_window else ""
        lines.append(
            f"  partition {p.partition}: offsets {p.start}..{p.stop} ({p.how}), {p.in_window} in the window{extra}"
        )
    if r.dead_lettered:
        lines.append(
            "  not scorable (dead-lettered when first seen): "
            + ", ".join(f"{k} {v}" for k, v in r.dead_lettered.items())
        )
    c = r.comparison
    if c is not None:
        if not c["compared"]:
            lines.append(f"compare: no live results in {c['live_topic']} for these records")
        else:
            lines.append(
                f"compare with {c['live_topic']} ({c['compared']} records, live models {c['live_model_versions']}): "
                f"label agreement {c['label_agreement']:.2%}, OOD verdict agreement {c['is_ood_agreement']:.2%}, "
                f"OOD score correlation {_fmt(c['ood_score_pearson'])} (Spearman {_fmt(c['ood_score_spearman'])})"
            )
            for ch in c["changed"][:20]:
                lines.append(
                    f"  {ch['id']}: {ch['live_label']} → {ch['label']}, OOD {ch['live_is_ood']} → {ch['is_ood']}"
                )
            if c["changed_total"] > 20:
                lines.append(f"  … {c['changed_total'] - 20} more changed (--json lists them)")
        if c["missing_live"]:
            lines.append(
                f"  {c['missing_live']} records have no live result (not scored yet, or dead-lettered)"
            )
    return "\n".join(lines)
