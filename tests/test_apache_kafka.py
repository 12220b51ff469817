"""On a real Apache Kafka (``KAFKA_HOME``): SASL logins that succeed, for the worker, produce and tail.

The embedded broker keeps no SASL users, so there a login can only be refused
(tests/test_security.py). Here the broker is Apache Kafka started by
:class:`streams.kafka.apache.ApacheKafka` from ``KAFKA_HOME`` (any folder with Kafka's ``libs/``:
an unpacked download, or ``../shared/kafka/4.4.0``, which .ci/run uses). Without ``KAFKA_HOME``
these tests are skipped, and say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.kafka.apache import USERS, ApacheKafka
from tests.conftest import cli, start_worker, stop_worker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get("KAFKA_HOME"), reason="KAFKA_HOME is not set: no Apache Kafka to run"
    ),
]

USER = "streamscore"


@pytest.fixture(scope="module")
def apache_kafka() -> Iterator[ApacheKafka]:
    with ApacheKafka(Path(os.environ["KAFKA_HOME"])) as kafka:
        yield kafka


def sasl_env(kafka: ApacheKafka, mechanism: str, password: str = USERS[USER]) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.sasl_bootstrap_servers,
        "STREAMSCORE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMSCORE_SASL_MECHANISM": mechanism,
        "STREAMSCORE_SASL_USERNAME": USER,
        "STREAMSCORE_SASL_PASSWORD": password,
    }


def streamscore(
    env: dict[str, str], *args: str, stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess:
    return cli(*args, check=False, timeout=timeout, env=env, stdin=stdin)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_produce_and_tail_log_in_with_each_mechanism(apache_kafka, mechanism):
    env = sasl_env(apache_kafka, mechanism)
    topic = f"login-{mechanism.lower()}-{uuid.uuid4().hex[:6]}"
    texts = [{"id": f"{mechanism}-{i}", "text": f"text {i}"} for i in range(5)]
    sent = streamscore(
        env, "produce", "--topic", topic, "-", stdin="".join(json.dumps(t) + "\n" for t in texts)
    )
    assert sent.returncode == 0, sent.stderr[-2000:]
    read = streamscore(env, "tail", "--topic", topic, "--from-beginning", "-n", "5", "--timeout", "30")
    assert read.returncode == 0, read.stderr[-2000:]
    assert [json.loads(line)["id"] for line in read.stdout.splitlines()] == [t["id"] for t in texts]


@pytest.mark.parametrize("command", [["produce", "--topic", "t", "-"], ["worker", "--metrics-port", "0"]])
def test_a_wrong_password_is_refused_in_one_clear_line(apache_kafka, trained_registry, command):
    env = sasl_env(apache_kafka, "SCRAM-SHA-512", password="not-" + USERS[USER])
    env["STREAMSCORE_REGISTRY"] = str(trained_registry)
    proc = streamscore(env, *command, stdin='{"id": "1", "text": "hello"}\n')
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert f"the broker refused the SCRAM-SHA-512 login of user '{USER}'" in proc.stderr, out[-2000:]
    assert "Traceback" not in out and USERS[USER] not in out


def test_a_worker_logged_in_with_scram_scores_every_text(
    apache_kafka, trained_registry, tmp_path, monkeypatch
):
    for key, value in sasl_env(apache_kafka, "SCRAM-SHA-512").items():
        if key.startswith("STREAMSCORE_"):
            monkeypatch.setenv(key, value)
    w = start_worker(apache_kafka.sasl_bootstrap_servers, trained_registry, tmp_path, metrics_port="0")
    try:
        env = sasl_env(apache_kafka, "SCRAM-SHA-512")
        texts = [
            {"id": f"k{i}", "text": t} for i, t in enumerate(["what is my balance", "book a flight"] * 50)
        ]
        sent = streamscore(
            env,
            "produce",
            "--topic",
            w.topics["input"],
            "-",
            stdin="".join(json.dumps(t) + "\n" for t in texts),
        )
        assert sent.returncode == 0, sent.stderr[-2000:]
        read = streamscore(
            env, "tail", "--topic", w.topics["scored"], "--from-beginning", "-n", "100", "--timeout", "90",
            timeout=240,
        )  # fmt: skip
        assert read.returncode == 0, read.stderr[-2000:]
        ids = [json.loads(line)["id"] for line in read.stdout.splitlines()]
        assert sorted(ids) == sorted(t["id"] for t in texts), w.log()[-3000:]
        assert w.process.poll() is None, w.log()[-3000:]
    finally:
        stop_worker(w)
