"""docker-compose.yml runs the broker the tests run: Apache Kafka 4.x with the same settings that
matter (internal topics' replication, transactions' state log, auto-creation, rebalance delay),
and creates the worker's topics as the worker would (partitions, compaction of the drift state).

The compose file cannot be started here (no Docker engine); its topic script is run with a
stand-in for kafka-topics.sh that records what it was asked to create.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import yaml

from streamscore.streams.kafka.apache import BROKER_DEFAULTS
from streamscore.streams.kafka.topics import topic_configs, topic_plan
from streamscore.streams.settings import Settings
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# Settings where compose and the test broker must agree; num.partitions differs on purpose
# (compose sizes for 6 workers; the worker creates its topics explicitly either way).
MUST_AGREE = (
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.min.isr",
    "group.initial.rebalance.delay.ms",
    "auto.create.topics.enable",
)


def test_compose_runs_apache_kafka_4_with_the_test_brokers_settings():
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4."), kafka["image"]
    assert COMPOSE["services"]["kafka-init"]["image"] == kafka["image"]
    env = {k: str(v).lower() for k, v in kafka["environment"].items()}
    fixture = dict(line.split("=", 1) for line in BROKER_DEFAULTS)
    for key in MUST_AGREE:
        compose_key = "KAFKA_" + key.upper().replace(".", "_")
        assert env.get(compose_key) == fixture[key].lower(), (key, env.get(compose_key), fixture[key])
    # Brokers and clients talk PLAINTEXT inside compose, as the fixture's broker does internally.
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "plaintext"


def test_compose_creates_the_topics_the_worker_would(tmp_path: Path):
    env = COMPOSE["x-streamscore-env"]
    settings = Settings.from_env({}, partitions=int(env["STREAMSCORE_PARTITIONS"]))
    stub = tmp_path / "kafka-topics.sh"
    calls = tmp_path / "calls"
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s " "$a"; done >> {calls}\necho >> {calls}\n')
    stub.chmod(0o755)
    script = COMPOSE["services"]["kafka-init"]["command"][0].replace("$$", "$")
    script = script.replace("/opt/kafka/bin/kafka-topics.sh", str(stub))
    subprocess.run(["bash", "-c", script], check=True, env={**os.environ}, capture_output=True)
    created: dict[str, tuple[int, dict[str, str]]] = {}
    for line in calls.read_text().splitlines():
        args = shlex.split(line)
        if "--create" not in args:
            continue
        topic, partitions = args[args.index("--topic") + 1], int(args[args.index("--partitions") + 1])
        configs = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--config")
        created[topic] = (partitions, configs)
    expected = {name: (n, topic_configs(settings).get(name, {})) for name, n in topic_plan(settings).items()}
    assert created == expected


def test_compose_serves_the_page_on_the_hosts_loopback_only():
    ui = COMPOSE["services"]["ui"]
    env = {**COMPOSE["x-streamscore-env"], **{k: v for k, v in ui["environment"].items() if k != "<<"}}
    settings = Settings.from_env({k: str(v) for k, v in env.items()})
    assert ui["command"] == ["ui"] and ui["image"] == COMPOSE["services"]["worker"]["image"]
    # In the container it listens on every address; the host publishes it on 127.0.0.1 alone.
    assert settings.ui_host == "0.0.0.0"
    assert ui["ports"] == [f"127.0.0.1:{settings.ui_port}:{settings.ui_port}"]
    assert f":{settings.ui_port}/healthz" in ui["healthcheck"]["test"][-1]


def test_compose_publishes_every_port_on_the_hosts_loopback_only():
    """Kafka, Prometheus, Alertmanager and Grafana have no login in front of them (Grafana's is the
    default one): reachable from this host only (issue 37, item 7)."""
    published = {
        name: port for name, service in COMPOSE["services"].items() for port in service.get("ports", [])
    }
    assert {"kafka", "prometheus", "alertmanager", "grafana", "ui"} <= set(published)
    wide = {name: port for name, port in published.items() if not str(port).startswith("127.0.0.1:")}
    assert not wide, wide
