"""The topics streamscore creates, on the session's broker: partitions, replication, configs."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamscore.streams.kafka.topics import ensure_topics, topic_configs, topic_plan
from streamscore.streams.settings import Settings

pytestmark = pytest.mark.integration


def _settings(tag: str, **overrides: object) -> Settings:
    names = {"input_topic": "texts", "scored_topic": "texts.scored", "dlq_topic": "texts.dlq"}
    names |= {
        "signals_topic": "drift.signals",
        "alerts_topic": "drift.alerts",
        "drift_state_topic": "drift.state",
        "episodes_topic": "drift.episodes",
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
    assert described[settings.episodes_topic]["cleanup.policy"] == "compact"
    assert all(described[t]["min.insync.replicas"] == "1" for t in plan), described


def test_a_replication_factor_above_the_cluster_size_is_one_clear_line(kafka, broker_kind):
    settings = _settings(uuid.uuid4().hex[:6])
    plan = {settings.input_topic: 1}
    if broker_kind != "apache-kafka":
        # Tansu keeps one copy whatever is asked and accepts it (docs/reliability.md, Brokers).
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
    assert before.stdout.count("missing: streamscore topics --create makes it") == 7, before.stdout

    made = cli("topics", "--create", "--partitions", "3", "--json", check=False, env=env, timeout=120)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    topics = {t["role"]: t for t in json.loads(made.stdout.strip().splitlines()[-1])["topics"]}
    assert {r: (t["partitions"], t["problems"]) for r, t in topics.items()} == {
        "input": (3, []), "scored": (3, []), "dlq": (1, []), "signals": (1, []), "alerts": (1, []),
        "drift_state": (1, []), "episodes": (1, []),
    }  # fmt: skip
    assert topics["drift_state"]["configs"]["cleanup.policy"] == "compact"

    wider = cli("topics", "--partitions", "6", check=False, env=env, timeout=120)  # settings changed since
    assert wider.returncode == 1 and "3 partitions, settings want 6" in wider.stdout, wider.stdout


def test_extra_client_properties_reach_every_client(kafka, trained_registry, tmp_path, monkeypatch):
    import os

    from tests.conftest import cli, start_worker, stop_worker
    from tests.kafka_helpers import collect

    props = "client.id=scorer-props,request.timeout.ms=45000,metadata.max.age.ms=60000"
    monkeypatch.setenv("STREAMSCORE_KAFKA_PROPERTIES", props)  # the worker inherits it
    w = start_worker(kafka, trained_registry, tmp_path, metrics_port="0")
    try:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka}
        cli(
            "produce",
            "--topic",
            w.topics["input"],
            "-",
            env=env,
            stdin='{"id": "p1", "text": "my card was declined"}\n',
        )
        assert [r["id"] for r in collect(kafka, w.topics["scored"], 1, timeout_s=120)] == ["p1"], w.log()[
            -3000:
        ]
        tailed = cli(
            "tail", "--topic", w.topics["scored"], "--from-beginning", "-n", "1", env=env, timeout=120
        )
        assert json.loads(tailed.stdout.splitlines()[0])["id"] == "p1"
    finally:
        stop_worker(w)
    bad = cli(
        "topics",
        check=False,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka, "STREAMSCORE_KAFKA_PROPERTIES": "linger.ms=5"},
    )
    assert (
        bad.returncode == 2
        and "'linger.ms' is not one streamscore passes on; allowed: client.id" in bad.stderr
    )
    assert "Traceback" not in bad.stderr


def test_a_drift_signals_topic_with_several_partitions_stops_the_start_with_one_line(
    kafka, trained_registry, tmp_path
):
    """The drift agent reads drift.signals as one ordered stream and drops signals by offset: on
    three partitions it silently dropped signals. Now the worker refuses, and says the fix."""
    from aiokafka.admin import NewTopic

    from tests.conftest import start_worker

    tag = uuid.uuid4().hex[:8]

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(f"drift.signals-{tag}", 3, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    worker = start_worker(kafka, trained_registry, tmp_path, tag=tag, metrics_port="0")
    code = worker.process.wait(timeout=180)
    log = worker.log()
    assert code == 2, log[-2000:]
    said = log.strip().splitlines()[-1]
    assert said.startswith(f"streamscore worker: error: topic 'drift.signals-{tag}' has 3 partitions"), said
    assert "exactly 1" in said and "Traceback" not in log
