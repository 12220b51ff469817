"""A real TLS session: the worker and the CLI reach the broker through a TLS listener that asks
for client certificates (mutual TLS), and clients it refuses are told what to check.

On Apache Kafka (``KAFKA_HOME``) that is Kafka's own SSL listener (PEM keystore, client
certificates required). Tansu 0.6 cannot serve TLS itself (docs/reliability.md), so on the embedded
broker stunnel (Debian's ``stunnel4``, which ``make test`` installs) listens with TLS and forwards
to the broker's plaintext port, and the broker advertises the TLS port: every byte the clients
send crosses the TLS listener.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamscore.streams.kafka.apache import ApacheKafka, TlsFiles
from streamscore.streams.kafka.broker import EmbeddedBroker, free_port, port_open, stop_process
from tests.conftest import cli, debian_server, kafka_home, small_clinc_rows, start_worker, stop_worker
from tests.pki import make_pki

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _tls_listener(d: Path, pki: dict[str, Path], tls_port: int, broker_port: int) -> Iterator[Path]:
    """stunnel on ``tls_port``: TLS with the broker certificate, client certificates of the test
    CA required, forwarding to the broker. Yields its log."""
    stunnel = debian_server("stunnel4", "stunnel4", "stunnel (the TLS listener of the TLS tests)")
    conf = d / "stunnel.conf"
    conf.write_text(
        "foreground = yes\npid =\ndebug = info\n[kafka]\n"
        f"accept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{broker_port}\n"
        f"cert = {pki['broker']}\nkey = {pki['broker_key']}\nCAfile = {pki['ca']}\n"
        "requireCert = yes\nverifyChain = yes\n"
    )
    log = d / "stunnel.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([stunnel, str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", tls_port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "stunnel did not listen:\n" + log.read_text()
            time.sleep(0.1)
        yield log
    finally:
        stop_process(proc, timeout_s=10)


@dataclass
class TlsBroker:
    bootstrap: str  # speaks only TLS with client certificates
    pki: dict[str, Path]
    log: Path  # the TLS listener's: stunnel's, or Apache Kafka's
    native: bool  # Kafka's own SSL listener rather than stunnel

    def refusals(self) -> int:
        """Handshakes the listener refused so far."""
        word = "Failed authentication with" if self.native else "Connection reset"
        return self.log.read_text(errors="replace").count(word)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    d = tmp_path_factory.mktemp("tls")
    pki = make_pki(d)
    home = kafka_home()
    if home is not None:
        with ApacheKafka(home, tls=TlsFiles(pki["broker"], pki["broker_key"], pki["ca"])) as kafka:
            assert kafka.run_dir is not None
            yield TlsBroker(kafka.ssl_bootstrap_servers, pki, kafka.run_dir / "kafka.log", native=True)
        return
    tls_port = free_port()
    with (
        EmbeddedBroker(advertised_port=tls_port) as broker,
        _tls_listener(d, pki, tls_port, broker.port) as log,
    ):
        yield TlsBroker(f"127.0.0.1:{tls_port}", pki, log, native=False)


def _use_tls(monkeypatch: pytest.MonkeyPatch, bootstrap: str, pki: dict[str, Path], **override: str) -> None:
    """The environment every streamscore command started by the test sees."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMSCORE_SECURITY_PROTOCOL": "SSL",
        "STREAMSCORE_SSL_CAFILE": str(pki["ca"]),
        "STREAMSCORE_SSL_CERTFILE": str(pki["client"]),
        "STREAMSCORE_SSL_KEYFILE": str(pki["client_key"]),
        **override,
    }
    for name, value in env.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)


def test_worker_produce_and_tail_score_over_mutual_tls(tls_broker, trained_registry, tmp_path, monkeypatch):
    bootstrap, pki = tls_broker.bootstrap, tls_broker.pki
    _use_tls(monkeypatch, bootstrap, pki)
    rows = small_clinc_rows()[:80]
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join(json.dumps({"id": f"tls-{i}", "text": r["text"]}) + "\n" for i, r in enumerate(rows))
    )
    worker = start_worker(bootstrap, trained_registry, tmp_path, metrics_port="0")
    try:
        cli("produce", "--topic", worker.topics["input"], str(texts))
        tail = cli(
            "tail", "--topic", worker.topics["scored"], "-n", str(len(rows)), "--from-beginning",
            "--timeout", "150", timeout=400,
        )  # fmt: skip
    finally:
        stop_worker(worker)
    scored = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
    assert sorted(r["id"] for r in scored) == sorted(f"tls-{i}" for i in range(len(rows))), worker.log()[
        -3000:
    ]
    assert all(r["label"] and r["model_version"] for r in scored)
    assert worker.process.returncode == 0, worker.log()[-3000:]
    if tls_broker.native:
        return  # Kafka's SSL listener speaks nothing but TLS with client certificates
    log = tls_broker.log.read_text()
    # The worker (consumer, producer, admin, watchers), produce and tail each made TLS sessions
    # with the client certificate of the test CA; nothing reached the broker another way.
    assert log.count("Certificate accepted at depth=0: CN=scorer") >= 5, log[-3000:]
    assert log.count("TLS accepted") >= 5 and "TLSv1.3" in log, log[-3000:]


@pytest.mark.parametrize(
    ("case", "override", "says"),
    [
        (
            "trusts another CA",
            {"STREAMSCORE_SSL_CAFILE": "other_ca"},
            ["CERTIFICATE_VERIFY_FAILED", "ssl_cafile"],
        ),
        (
            "has no client certificate",
            {"STREAMSCORE_SSL_CERTFILE": "", "STREAMSCORE_SSL_KEYFILE": ""},
            ["speaks SSL", "ssl_certfile and ssl_keyfile"],
        ),
        ("speaks plaintext", {"STREAMSCORE_SECURITY_PROTOCOL": ""}, ["set security_protocol"]),
    ],
)
def test_a_client_the_tls_listener_refuses_is_told_what_to_check(
    tls_broker, tmp_path, monkeypatch, case, override, says
):
    bootstrap, pki = tls_broker.bootstrap, tls_broker.pki
    override = {k: str(pki[v]) if v in pki else v for k, v in override.items()}
    _use_tls(monkeypatch, bootstrap, pki, **override)
    before = tls_broker.refusals()
    texts = tmp_path / "one.jsonl"
    texts.write_text(json.dumps({"id": "refused-1", "text": "what is my balance"}) + "\n")
    proc = cli("produce", "--topic", "refused", str(texts), check=False, timeout=120)
    assert proc.returncode == 1, (case, proc.stderr[-2000:])
    assert "error: KafkaConnectionError" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[
        -2000:
    ]
    for words in says:
        assert words in proc.stderr, (case, words, proc.stderr[-2000:])
    if tls_broker.native and case == "trusts another CA":
        return  # the client refused the broker's certificate: Kafka logs that only at DEBUG
    # The TLS listener saw the attempt and closed it before any byte reached the broker.
    deadline = time.monotonic() + 10  # Kafka writes its log a moment later
    while tls_broker.refusals() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tls_broker.refusals() > before, case
