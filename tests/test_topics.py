"""The topics streamscore creates, on the session's broker: partitions, replication, configs."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.kafka.topics import ensure_topics, topic_configs, topic_plan
from streams.settings import Settings

pytestmark = pytest.mark.integration


def _settings(tag: str, **overrides: object) -> Settings:
    names = {"input_topic": "texts", "scored_topic": "texts.scored", "dlq_topic": "texts.dlq"}
    names |= {
        "signals_topic": "drift.signals",
        "alerts_topic": "drift.alerts",
        "drift_state_topic": "drift.state",
    }
    return Settings.from_env({}, **{k: f"{v}-{tag}" for k, v in names.items()}, **overrides)


async def _described(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
        return {res[3]: {c[0]: c[1] for c in res[4]} for response in found for res in response.resources}
    finally:
        await admin.close()


def test_the_worker_topics_get_their_partitions_and_configs(kafka):
    settings = _settings(uuid.uuid4().hex[:6], partitions=3, min_insync_replicas=1)
    plan, configs = topic_plan(settings), topic_configs(settings)
    asyncio.run(ensure_topics(kafka, plan, configs=configs, replication_factor=1))
    described = asyncio.run(_described(kafka, list(plan)))
    assert described[settings.drift_state_topic]["cleanup.policy"] == "compact"
    assert all(described[t]["min.insync.replicas"] == "1" for t in plan), described


def test_a_replication_factor_above_the_cluster_size_is_one_clear_line(kafka, broker_kind):
    settings = _settings(uuid.uuid4().hex[:6])
    plan = {settings.input_topic: 1}
    if broker_kind != "apache-kafka":
        # Tansu keeps one copy whatever is asked and accepts it (README, Brokers).
        asyncio.run(ensure_topics(kafka, plan, replication_factor=3))
        return
    with pytest.raises(ValueError, match=r"replication_factor=3 but the cluster at .* has 1 broker\(s\)"):
        asyncio.run(ensure_topics(kafka, plan, replication_factor=3))


def test_the_topics_command_shows_missing_topics_then_creates_them(kafka, broker_kind):
    import json
    import os

    from tests.conftest import cli

    tag = uuid.uuid4().hex[:6]
    settings = _settings(tag, min_insync_replicas=1)
    env = {**os.environ, **settings.to_env(), "KAFKA_BOOTSTRAP_SERVERS": kafka}
    env.pop("STREAMSCORE_BOOTSTRAP_SERVERS", None)
    before = cli("topics", check=False, env=env, timeout=120)
    assert before.returncode == 1, before.stderr[-2000:]
    assert before.stdout.count("missing: streamscore topics --create makes it") == 6, before.stdout

    made = cli("topics", "--create", "--partitions", "3", "--json", check=False, env=env, timeout=120)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    topics = {t["role"]: t for t in json.loads(made.stdout.strip().splitlines()[-1])["topics"]}
    assert {r: (t["partitions"], t["problems"]) for r, t in topics.items()} == {
        "input": (3, []), "scored": (3, []), "dlq": (1, []), "signals": (1, []), "alerts": (1, []),
        "drift_state": (1, []),
    }  # fmt: skip
    assert topics["drift_state"]["configs"]["cleanup.policy"] == "compact"

    wider = cli("topics", "--partitions", "6", check=False, env=env, timeout=120)  # settings changed since
    assert wider.returncode == 1 and "3 partitions, settings want 6" in wider.stdout, wider.stdout
