"""``streamscore dlq``: the dead letters by reason; ``--resend REASON`` sends them back to be scored.

A dead letter carries its original bytes (base64) and key, so one the worker could not score
(``scoring_failed``: the model failed; ``output_too_large`` before a topic's limit was raised)
can go through the scorer again once the cause is fixed: resent, it is the input message it
was, on the input topic. Which dead letters of a reason were resent is kept as the committed
offsets of a consumer group of that reason (``<group_id>.dlq-resend.<reason>``), so running it
again resends only those that came since: each once (after a kill mid-way, the ones in flight
again; their ids let a consumer drop repeats). A dead letter that carries only part of its
value (bigger than the dead-letter topic takes) or whose bytes do not match their checksum is
counted and left.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamscore.schemas.messages import DLQ_REASONS
from streamscore.streams.commands.base import Command, common, on_broker, settings_of, show
from streamscore.streams.commands.progress import say
from streamscore.streams.kafka.client import group_offsets, wait_for_partitions
from streamscore.streams.kafka.delivery import Record, deliver
from streamscore.streams.kafka.ranges import end_offsets
from streamscore.streams.kafka.security import client_options
from streamscore.streams.settings import Settings

IDLE_S = 30.0  # a partition that gives nothing this long (a transaction left open) is read no further


def resend_group(group_id: str, reason: str) -> str:
    """The consumer group whose offsets say how far dead letters of ``reason`` were resent.

    >>> resend_group("streamscore", "scoring_failed")
    'streamscore.dlq-resend.scoring_failed'
    """
    return f"{group_id}.dlq-resend.{reason}"


@dataclass
class DeadLetters:
    """What ``streamscore dlq`` found and did."""

    topic: str
    by_reason: Counter[str] = field(default_factory=Counter)
    resent: Counter[str] = field(default_factory=Counter)
    not_resendable: Counter[str] = field(default_factory=Counter)  # truncated or damaged
    resent_to: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "dead_letters": sum(self.by_reason.values()),
            "by_reason": dict(self.by_reason.most_common()),
            "resent": dict(self.resent),
            "not_resendable": dict(self.not_resendable),
            "resent_to": self.resent_to,
        }


def describe(found: DeadLetters) -> str:
    lines = [f"{sum(found.by_reason.values()):,} dead letters in {found.topic}"]
    lines += [f"  {reason:<18} {n:>8,}" for reason, n in found.by_reason.most_common()]
    for reason, n in sorted(found.resent.items()):
        lines.append(f"resent {n:,} of reason {reason} to {found.resent_to}")
    for reason, n in sorted(found.not_resendable.items()):
        lines.append(f"left {n:,} of reason {reason}: only part of their value was kept, or it was damaged")
    return "\n".join(lines)


def original(letter: dict[str, Any]) -> bytes | None:
    """The dead letter's original value, or None when it holds only part of it or is damaged.

    >>> v = b'{"id": "m1", "text": "hi"}'
    >>> original({"value_b64": base64.b64encode(v).decode(), "value_truncated": False,
    ...           "value_sha256": hashlib.sha256(v).hexdigest()}) == v
    True
    """
    if letter.get("value_truncated"):
        return None
    try:
        value = base64.b64decode(letter["value_b64"], validate=True)
    except (KeyError, ValueError):
        return None
    return value if hashlib.sha256(value).hexdigest() == letter.get("value_sha256") else None


async def dead_letters(
    bootstrap: str, settings: Settings, options: dict[str, Any], resend: list[str]
) -> DeadLetters:
    """Count the dead-letter topic by reason, and send those of ``resend`` not resent before to
    the input topic."""
    topic = settings.dlq_topic
    found = DeadLetters(topic, resent_to=settings.input_topic if resend else None)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed", **options
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await wait_for_partitions(consumer, topic, 10))]
        done = {
            r: await group_offsets(bootstrap, resend_group(settings.group_id, r), tps, options)
            for r in resend
        }
        consumer.assign(tps)
        ends = await end_offsets(consumer, tps)  # what is there now; later dead letters wait
        records: list[Record] = []
        await consumer.seek_to_beginning(*tps)
        left = {tp for tp in tps if ends[tp] > 0}
        idle_since = time.monotonic()
        while left and time.monotonic() - idle_since < IDLE_S:
            fetched = await consumer.getmany(*left, timeout_ms=1_000)
            if fetched:
                idle_since = time.monotonic()
            for tp, batch in fetched.items():
                for rec in batch:
                    if rec.offset >= ends[tp]:
                        continue
                    letter = _letter(rec.value)
                    reason = str(letter.get("reason", "unreadable"))
                    found.by_reason[reason] += 1
                    if reason in done and rec.offset >= done[reason].get(tp, -1):
                        value = original(letter)
                        if value is None:
                            found.not_resendable[reason] += 1
                        else:
                            records.append((settings.input_topic, rec.key, value))
                            found.resent[reason] += 1
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    if resend:
        await _send(bootstrap, options, records)
        for reason in resend:  # only once they are all confirmed
            await _commit(bootstrap, options, resend_group(settings.group_id, reason), ends)
        say(f"resent {len(records):,} dead letters to {settings.input_topic}")
    return found


def _letter(value: bytes | None) -> dict[str, Any]:
    try:
        letter = json.loads(value or b"")
    except ValueError:
        return {}
    return letter if isinstance(letter, dict) else {}


async def _send(bootstrap: str, options: dict[str, Any], records: list[Record]) -> None:
    if not records:
        return
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **options)
    await producer.start()
    try:
        refused = await deliver(producer, records)
        if refused:
            raise RuntimeError(f"{len(refused)} dead letters were too large for the input topic to take back")
    finally:
        await producer.stop()


async def _commit(
    bootstrap: str, options: dict[str, Any], group: str, ends: dict[TopicPartition, int]
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **options
    )
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.commit({tp: end for tp, end in ends.items() if end > 0})
    finally:
        await consumer.stop()


# ------------------------------------------------------------------ the command


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True, as_json=True)
    sp.add_argument(
        "--resend",
        action="append",
        choices=DLQ_REASONS,
        metavar="REASON",
        help="send the dead letters of REASON (scoring_failed, output_too_large, ...) not resent "
        "before back to the input topic; repeatable",
    )
    sp.add_argument("--dlq-topic", dest="dlq_topic", default=None)
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument("--group-id", dest="group_id", default=None)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    found = on_broker(
        settings,
        lambda bootstrap: dead_letters(bootstrap, settings, client_options(settings), args.resend or []),
    )
    show(args, found.as_json(), describe(found))
    return 0


COMMAND = Command(
    name="dlq",
    help="dead letters by reason; --resend REASON sends them back to be scored",
    description="Resent dead letters go to the input topic as they first came; a consumer group "
    "per reason (<group-id>.dlq-resend.<reason>) keeps how far, so each is resent once. Those "
    "that carry only part of their value are counted and left.",
    options=options,
    run=run,
    examples=(
        "streamscore dlq --bootstrap-servers localhost:9092",
        "streamscore dlq --resend scoring_failed --bootstrap-servers localhost:9092 --json",
    ),
)
