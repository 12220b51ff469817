"""On a real Apache Kafka (``KAFKA_HOME``): SASL logins that succeed, for the worker, produce and tail.

The embedded broker keeps no SASL users, so there a login can only be refused
(tests/test_security.py). Here the broker is Apache Kafka started by
:class:`streams.kafka.apache.ApacheKafka` from ``KAFKA_HOME`` (any folder with Kafka's ``libs/``:
an unpacked download, or ``../shared/kafka/4.4.0``, which .ci/run uses). Without ``KAFKA_HOME``
these tests are skipped, and say so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamscore.streams.kafka.apache import USERS, ApacheKafka, TlsFiles
from tests.conftest import cli, kafka_home, start_worker, stop_worker
from tests.pki import make_pki

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        kafka_home() is None,
        reason="KAFKA_HOME is not set (or STREAMSCORE_TEST_BROKER=embedded): no Apache Kafka to run",
    ),
]

USER = "streamscore"


def _home() -> Path:
    home = kafka_home()
    assert home is not None  # the module is skipped otherwise
    return home


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def apache_kafka(pki: dict[str, Path]) -> Iterator[ApacheKafka]:
    tls = TlsFiles(pki["broker"], pki["broker_key"], pki["ca"])
    with ApacheKafka(_home(), tls=tls) as kafka:
        yield kafka


def sasl_env(
    kafka: ApacheKafka, mechanism: str, password: str = USERS[USER], ca: Path | None = None
) -> dict[str, str]:
    """A SASL login as ``USER``; with ``ca``, over TLS (SASL_SSL)."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.sasl_bootstrap_servers,
        "STREAMSCORE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMSCORE_SASL_MECHANISM": mechanism,
        "STREAMSCORE_SASL_USERNAME": USER,
        "STREAMSCORE_SASL_PASSWORD": password,
    }
    if ca is not None:
        env |= {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.sasl_ssl_bootstrap_servers,
            "STREAMSCORE_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMSCORE_SSL_CAFILE": str(ca),
        }
    return env


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
    assert proc.returncode == 1, out[-2000:]
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


def test_replay_and_rescore_log_in_over_sasl_ssl(apache_kafka, pki, trained_registry, tmp_path):
    """SCRAM over TLS for the two commands that move history: replay a file into a topic, then
    rescore that topic's offsets into another; tail reads the result."""
    env = sasl_env(apache_kafka, "SCRAM-SHA-256", ca=pki["ca"]) | {
        "STREAMSCORE_REGISTRY": str(trained_registry)
    }
    tag = uuid.uuid4().hex[:6]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"what is my balance {i}"}) + "\n" for i in range(20))
    )
    replay = streamscore(env, "replay", "--topic", f"texts-{tag}", "--json", str(rows))
    assert replay.returncode == 0, replay.stderr[-2000:]
    rescore = streamscore(
        env, "rescore", "--input-topic", f"texts-{tag}", "--from-offset", "0",
        "--output-topic", f"rescored-{tag}", "--json", timeout=300,
    )  # fmt: skip
    assert rescore.returncode == 0, rescore.stderr[-2000:]
    read = streamscore(
        env, "tail", "--topic", f"rescored-{tag}", "--from-beginning", "-n", "20", "--timeout", "30"
    )
    assert read.returncode == 0, read.stderr[-2000:]
    assert sorted(json.loads(line)["id"] for line in read.stdout.splitlines()) == sorted(
        f"r{i}" for i in range(20)
    )


# ------------------------------------------------------------------------------------ ACLs

# Kafka's ACL codes (resource type, pattern type, operation, permission).
TOPIC, GROUP, TRANSACTIONAL_ID = 2, 3, 5
LITERAL, PREFIXED = 3, 4
OPERATION = {"READ": 3, "WRITE": 4, "DESCRIBE": 8}
ALLOW = 3


@pytest.fixture(scope="module")
def acl_kafka() -> Iterator[ApacheKafka]:
    """Apache Kafka with the authorizer on: ``streamscore`` gets only what a test grants."""
    with ApacheKafka(_home(), acl=True) as kafka:
        yield kafka


def grant(kafka: ApacheKafka, acls: list[tuple[int, str, int, str]]) -> None:
    """Create ACLs for ``User:streamscore`` as a super user: (resource type, name, pattern, operation)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.admin import CreateAclsRequest

    async def run() -> None:
        client = AIOKafkaClient(bootstrap_servers=kafka.bootstrap_servers)  # PLAINTEXT: super user
        await client.bootstrap()
        try:
            for resource, name, pattern, op in acls:
                request = CreateAclsRequest(
                    resource, name, pattern, f"User:{USER}", "*", OPERATION[op], ALLOW
                )
                response = await client.send(client.get_random_node(), request)
                assert all(code == 0 for code, _ in response.creation_responses), response
        finally:
            await client.close()

    asyncio.run(run())


def minimum_acls(topics: dict[str, str], group: str) -> list[tuple[int, str, int, str]]:
    """docs/reliability.md, Kafka ACLs: what a worker needs, exactly-once included, and nothing more."""
    acls = [(TOPIC, topics["input"], LITERAL, "READ")]
    acls += [(TOPIC, topics[t], LITERAL, "WRITE") for t in ("scored", "dlq", "alerts", "episodes")]
    acls += [(TOPIC, topics[t], LITERAL, op) for t in ("signals", "state") for op in ("READ", "WRITE")]
    acls += [(GROUP, group, LITERAL, "READ")]
    acls += [(TRANSACTIONAL_ID, f"streamscore.{group}.", PREFIXED, "WRITE")]
    return acls


def create_topics(kafka: ApacheKafka, topics: dict[str, str]) -> None:
    from streamscore.streams.kafka.topics import ensure_topics

    plan = {name: (3 if role in ("input", "scored") else 1) for role, name in topics.items()}
    asyncio.run(ensure_topics(kafka.bootstrap_servers, plan))  # as a super user


def acl_topics(tag: str) -> dict[str, str]:
    roles = {"input": "texts", "scored": "texts.scored", "dlq": "texts.dlq", "signals": "drift.signals"}
    roles |= {"alerts": "drift.alerts", "state": "drift.state", "episodes": "drift.episodes"}
    return {role: f"{name}-{tag}" for role, name in roles.items()}


def login(kafka: ApacheKafka, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = sasl_env(kafka, "SCRAM-SHA-512")
    for key, value in env.items():
        if key.startswith("STREAMSCORE_"):
            monkeypatch.setenv(key, value)
    return env


def test_a_worker_with_exactly_the_minimum_acls_scores_exactly_once(
    acl_kafka, trained_registry, tmp_path, monkeypatch
):
    tag = uuid.uuid4().hex[:8]
    topics, group = acl_topics(tag), f"streamscore-test-{tag}"
    create_topics(acl_kafka, topics)
    grant(acl_kafka, minimum_acls(topics, group))
    grant(
        acl_kafka, [(TOPIC, topics["input"], LITERAL, "WRITE"), (TOPIC, topics["scored"], LITERAL, "READ")]
    )  # the test's produce and tail
    env = login(acl_kafka, monkeypatch)
    w = start_worker(
        acl_kafka.sasl_bootstrap_servers, trained_registry, tmp_path, tag=tag,
        metrics_port="0", processing_guarantee="exactly_once",
    )  # fmt: skip
    try:
        texts = [
            {"id": f"acl{i}", "text": t} for i, t in enumerate(["what is my balance", "book a flight"] * 25)
        ]
        stdin = "".join(json.dumps(t) + "\n" for t in texts)
        sent = streamscore(env, "produce", "--topic", topics["input"], "-", stdin=stdin)
        assert sent.returncode == 0, sent.stderr[-2000:]
        read = streamscore(
            env, "tail", "--topic", topics["scored"], "--from-beginning", "-n", "50", "--timeout", "120",
            timeout=240,
        )  # fmt: skip
        assert read.returncode == 0, (read.stderr[-2000:], w.log()[-3000:])
        ids = sorted(json.loads(line)["id"] for line in read.stdout.splitlines())
        assert ids == sorted(t["id"] for t in texts), w.log()[-5000:]
        assert w.process.poll() is None, w.log()[-3000:]
    finally:
        stop_worker(w)
    assert "Authorization" not in w.log(), w.log()[-3000:]


@pytest.mark.parametrize("lacking", ["scored", "group"])
def test_a_worker_without_an_acl_it_needs_says_which_in_one_line(
    acl_kafka, trained_registry, tmp_path, monkeypatch, lacking
):
    tag = uuid.uuid4().hex[:8]
    topics, group = acl_topics(tag), f"streamscore-test-{tag}"
    create_topics(acl_kafka, topics)
    acls = minimum_acls(topics, group)
    drop = (
        (TOPIC, topics["scored"], LITERAL, "WRITE")
        if lacking == "scored"
        else (GROUP, group, LITERAL, "READ")
    )
    grant(acl_kafka, [a for a in acls if a != drop])
    login(acl_kafka, monkeypatch)
    w = start_worker(acl_kafka.sasl_bootstrap_servers, trained_registry, tmp_path, tag=tag, metrics_port="0")
    code = w.process.wait(timeout=120)
    log = w.log()
    assert code == 1, log[-3000:]
    errors = [line for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
    says = f"WRITE on topic '{topics['scored']}'" if lacking == "scored" else f"READ on group '{group}'"
    assert says in errors[0] and f"User:{USER}" in errors[0], errors[0]
