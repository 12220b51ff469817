"""Kafka security settings: SASL (PLAIN, SCRAM) and TLS in one place, secrets never shown."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator

import certifi
import pytest

from streamscore.streams.kafka.security import client_options, faust_credentials
from streamscore.streams.settings import Settings
from tests.conftest import ROOT

SECRET = "pa55-do-not-print-" + "x7q"


def test_scram_over_tls_with_a_password_file(tmp_path):
    pw = tmp_path / "kafka-password"
    pw.write_text(SECRET + "\n")
    s = Settings.from_env(
        {
            "STREAMSCORE_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMSCORE_SASL_MECHANISM": "SCRAM-SHA-512",
            "STREAMSCORE_SASL_USERNAME": "scorer",
            "STREAMSCORE_SASL_PASSWORD_FILE": str(pw),
            "STREAMSCORE_SSL_CAFILE": certifi.where(),
        }
    )
    opts = client_options(s)
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "scorer" and opts["sasl_plain_password"] == SECRET
    assert isinstance(opts["ssl_context"], ssl.SSLContext)
    assert opts["ssl_context"].verify_mode == ssl.CERT_REQUIRED and opts["ssl_context"].check_hostname
    creds = faust_credentials(s)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert SECRET not in repr(s) and SECRET not in repr(creds)
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def build() -> None:
        AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **opts)  # aiokafka takes every option

    asyncio.run(build())


def test_tls_alone_and_plaintext():
    tls = Settings.from_env({"STREAMSCORE_SECURITY_PROTOCOL": "SSL"})
    opts = client_options(tls)
    assert opts["security_protocol"] == "SSL" and "sasl_mechanism" not in opts
    assert faust_credentials(tls).protocol.value == "SSL"
    assert client_options(Settings.from_env({})) == {} and faust_credentials(Settings.from_env({})) is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"STREAMSCORE_SECURITY_PROTOCOL": "SASL_TLS"}, "security_protocol must be one of"),
        ({"STREAMSCORE_SASL_MECHANISM": "SCRAM-SHA-1"}, "sasl_mechanism must be one of"),
        (
            {"STREAMSCORE_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMSCORE_SASL_PASSWORD": "x"},
            "needs sasl_username",
        ),
        (
            {"STREAMSCORE_SECURITY_PROTOCOL": "SASL_SSL", "STREAMSCORE_SASL_USERNAME": "u"},
            "STREAMSCORE_SASL_PASSWORD",
        ),
        (
            {"STREAMSCORE_SSL_CAFILE": "/nonexistent/ca.pem"},
            "ssl_cafile '/nonexistent/ca.pem' is not a readable file",
        ),
    ],
)
def test_bad_security_settings_say_what_to_fix(env, says):
    with pytest.raises(ValueError, match=says):
        Settings.from_env(env)


def _sasl_env(bootstrap: str, registry, mechanism: str, **streamscore: str) -> dict[str, str]:
    """The environment of a streamscore command that logs in as ``scorer`` with ``SECRET``."""
    return dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        STREAMSCORE_REGISTRY=str(registry),
        STREAMSCORE_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        STREAMSCORE_SASL_MECHANISM=mechanism,
        STREAMSCORE_SASL_USERNAME="scorer",
        STREAMSCORE_SASL_PASSWORD=SECRET,
        **{f"STREAMSCORE_{k}": v for k, v in streamscore.items()},
    )


@pytest.mark.integration
def test_a_worker_that_cannot_authenticate_stops_without_printing_the_password(kafka, trained_registry):
    env = _sasl_env(
        kafka, trained_registry, "SCRAM-SHA-256", METRICS_PORT="0", LOG_LEVEL="debug", CONNECT_TIMEOUT_S="5"
    )
    # The test broker speaks no SASL: the worker must fail to connect, say so, and not leak.
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "streamscore.streams.cli", "worker"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
        code = None
    assert SECRET not in out
    assert code not in (0, None), out[-2000:]


@pytest.fixture()
def scram_broker() -> Iterator[str]:
    """A Tansu broker that requires a SCRAM login (``--authentication``). Its memory storage
    keeps no user a client could log in as, so every login is refused: a real SCRAM exchange
    whose last step is the broker's ``e=`` refusal."""
    from streamscore.streams.kafka.broker import EmbeddedBroker

    with EmbeddedBroker(authentication=True) as broker:
        yield broker.bootstrap_servers


@pytest.mark.integration
@pytest.mark.parametrize("command", [["worker", "--metrics-port", "0"], ["produce", "--topic", "t", "-"]])
def test_a_refused_scram_login_is_named_and_the_password_is_not_shown(
    scram_broker, trained_registry, command
):
    env = _sasl_env(scram_broker, trained_registry, "SCRAM-SHA-512")
    proc = subprocess.run(
        [sys.executable, "-m", "streamscore.streams.cli", *command],
        env=env,
        cwd=ROOT,
        input='{"id": "1", "text": "what is my balance"}\n',
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "the broker refused the SCRAM-SHA-512 login of user 'scorer'" in proc.stderr, out[-3000:]
    assert "Traceback" not in out and SECRET not in out


def test_the_transactional_producers_repr_keeps_the_password_out():
    from streamscore.streams.kafka.transactions import PartitionTransactions

    options = {"sasl_plain_username": "scorer", "sasl_plain_password": "s3cret"}
    assert "s3cret" not in repr(PartitionTransactions("127.0.0.1:9092", "g", "texts", options))
