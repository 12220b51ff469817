"""``streamscore dlq``: dead letters counted by reason, those of a reason sent back to the input
topic once each, on the session's real broker."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamscore.schemas.messages import DeadLetter, Origin, Rejection, dead_letter_record
from streamscore.streams.kafka.ranges import end_offsets
from tests.conftest import cli, last_json
from tests.kafka_helpers import send_raw


async def _create(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 2, 1) for t in topics])
    finally:
        await admin.close()


async def _read_all(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        ends = await end_offsets(consumer, tps)  # Tansu's ListOffsets falls short: from a fetch
        await consumer.seek_to_beginning(*tps)
        out = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                out += [(r.key, r.value) for r in batch]
        return out
    finally:
        await consumer.stop()


def _letter(reason: str, i: int, carry: int = 700_000) -> tuple[bytes, bytes]:
    key = f"m{i}".encode()
    value = json.dumps({"id": f"m{i}", "text": f"text number {i}"}).encode()
    dl = DeadLetter(Rejection(reason, "why"), Origin("texts", 0, i), key, value)
    return key, json.dumps(dead_letter_record(dl, carry)).encode()


def test_dead_letters_of_a_reason_are_resent_once_each_and_the_others_left(kafka, tmp_path):
    tag = uuid.uuid4().hex[:8]
    dlq, texts, group = f"dlq-{tag}", f"texts-{tag}", f"g-{tag}"
    asyncio.run(_create(kafka, [dlq, texts]))
    letters = [_letter("scoring_failed", i) for i in range(6)] + [
        _letter("invalid_json", i) for i in range(6, 9)
    ]
    letters.append(_letter("scoring_failed", 9, carry=10))  # only part of its value kept
    send_raw(kafka, dlq, letters)

    def dlq_cli(*extra: str) -> dict:
        args = ["dlq", "--bootstrap-servers", kafka, "--dlq-topic", dlq, "--input-topic", texts]
        return last_json(cli(*args, "--group-id", group, "--registry", str(tmp_path), "--json", *extra))

    counted = dlq_cli()
    assert counted["by_reason"] == {"scoring_failed": 7, "invalid_json": 3} and counted["resent"] == {}
    first = dlq_cli("--resend", "scoring_failed")
    assert first["resent"] == {"scoring_failed": 6} and first["not_resendable"] == {"scoring_failed": 1}
    again = dlq_cli("--resend", "scoring_failed")
    assert again["resent"] == {}, "a dead letter is resent once"
    send_raw(kafka, dlq, [_letter("scoring_failed", 10)])
    later = dlq_cli("--resend", "scoring_failed")
    assert later["resent"] == {"scoring_failed": 1}

    back = asyncio.run(_read_all(kafka, texts))
    assert sorted(json.loads(v)["id"] for _, v in back) == sorted(f"m{i}" for i in [*range(6), 10])
    assert all(k == json.loads(v)["id"].encode() for k, v in back)  # the original key too


def test_an_unknown_reason_is_refused_in_one_line(kafka, tmp_path):
    proc = cli("dlq", "--bootstrap-servers", kafka, "--resend", "model_broke", check=False)
    assert proc.returncode == 2
    assert "model_broke" in proc.stderr and "Traceback" not in proc.stderr
