"""``streamscore rescore``: a time (or offset) range of the input topic, scored again by a chosen
model into a topic of its own, beside the live workers and without touching their group.

The range is read as streams/kafka/ranges.py defines it (``--from``/``--to`` or offsets; the end
fixed when the run starts, so a rescore ends even while producers keep writing).

``compare`` reads what the live workers wrote to ``texts.scored`` for the same input records
(matched by their origin: topic, partition, offset) and reports label and OOD agreement, the
OOD-score correlation and the ids whose verdict changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamscore.models.batch import OutputLimits, RawMessage, process_batch
from streamscore.schemas.messages import Origin, record_bytes_allowed
from streamscore.streams.commands.base import (
    Command,
    common,
    on_broker,
    range_and_model,
    show,
    window_options,
)
from streamscore.streams.commands.progress import bar
from streamscore.streams.kafka.client import wait_for_partitions
from streamscore.streams.kafka.ranges import (
    PartitionRange,
    Window,
    end_offsets,
    plan_ranges,
    read_window,
    start_by_time,
)
from streamscore.streams.kafka.security import client_options
from streamscore.streams.kafka.topics import ensure_topics, max_message_bytes
from streamscore.streams.settings import Settings
from streamscore.streams.worker.serving import ModelHolder


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
            await start_by_time(consumer, tp, from_ms, firsts[tp], ends[tp])
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


# ------------------------------------------------------------------ the command


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True, as_json=True)
    window_options(sp, lateness=True)
    sp.add_argument("--model", default=None, help="version or artifact folder (default CURRENT)")
    sp.add_argument("--device", default=None)
    sp.add_argument("--output-topic", default=None, help="default <input topic>.rescored.<version>")
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument(
        "--scored-topic", dest="scored_topic", default=None, help="the live results --compare reads"
    )
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    sp.add_argument(
        "--compare", action="store_true", help="compare with what the live model wrote for the same records"
    )
    sp.add_argument(
        "--max-changed", type=int, default=1_000, help="changed records listed in full (all are counted)"
    )


def run(args: argparse.Namespace) -> int:
    settings, window, scorer = range_and_model(args)
    output = args.output_topic or f"{settings.input_topic}.rescored.{scorer.version}"
    if output in (settings.input_topic, settings.scored_topic):
        raise ValueError(
            f"--output-topic {output} would mix rescored records into a live topic; pick another"
        )
    result = on_broker(
        settings,
        lambda bootstrap: rescore(
            settings,
            bootstrap,
            window,
            ModelHolder(scorer),
            output,
            compare=args.compare,
            max_changed=args.max_changed,
            progress=True,  # on stderr: a bar on a terminal, plain lines otherwise
        ),
    )
    show(args, result.as_json(), describe(result))
    return 0


COMMAND = Command(
    name="rescore",
    help="score a time or offset range of the input topic again, with a chosen model, into its own topic",
    description="Reads without a consumer group, so live workers are not disturbed. Times: ISO-8601, "
    "epoch ms, 'now' or -15m/-2h/-7d (write --from=-2h). The range ends where it stood at the start.",
    options=options,
    run=run,
    examples=("streamscore rescore --from=-2h --bootstrap-servers localhost:9092",),
)
