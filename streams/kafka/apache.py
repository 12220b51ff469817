"""A real single-node Apache Kafka (KRaft) from ``KAFKA_HOME``, for tests and local trials.

``KAFKA_HOME`` is any folder with Kafka's ``libs/`` (an unpacked Apache Kafka download works);
Java 17 or newer runs it. The broker listens on free loopback ports, keeps everything in a temp
dir of its own and is stopped by its pid, like the embedded broker: on SIGTERM or an error of its
owner, and by the kernel if the owner dies (``setpriv --pdeathsig``).

Listeners: PLAINTEXT (no login) and SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for
every user in ``users`` (SCRAM credentials are written when the storage is formatted). Given
``tls`` (PEM files), also SSL, which requires a client certificate signed by ``tls.ca`` (mutual
TLS; the principal is ``User:CN=...``), and SASL_SSL (server TLS, then a SASL login). With
``acl``, the KRaft ``StandardAuthorizer`` is on: ``admin`` and the PLAINTEXT listener's
``User:ANONYMOUS`` are super users, everyone else gets only what ACLs grant.
Replication factors are 1, so transactions work on one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamscore.streams.kafka.broker import dies_with_parent, exit_on_sigterm, free_port, stop_process

USERS = {"streamscore": "streamscore-secret", "admin": "admin-secret"}
SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-512")
LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
# Refused TLS handshakes and logins, so a test can see the broker refuse them.
logger.auth.name = org.apache.kafka.common.network.Selector
logger.auth.level = INFO
logger.authz.name = kafka.authorizer.logger
logger.authz.level = INFO
"""


def java_command(kafka_home: Path, log4j2: Path, max_heap: str) -> list[str]:
    """The JVM command line that runs Kafka's classes from ``kafka_home/libs``, or why it cannot."""
    java = shutil.which("java")
    libs = Path(kafka_home) / "libs"
    if java is None:
        raise RuntimeError(
            "Apache Kafka needs Java 17 or newer on PATH: install a JDK (apt-get install default-jre-headless)"
        )
    if not libs.is_dir():
        raise RuntimeError(f"{kafka_home} has no libs/ folder: point KAFKA_HOME at an unpacked Apache Kafka")
    return [
        java,
        "-Xms128m",
        f"-Xmx{max_heap}",
        f"-Dlog4j2.configurationFile=file:{log4j2}",
        "-cp",
        f"{libs}/*",
    ]


@contextlib.contextmanager
def quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs "Unable connect" at ERROR until a starting broker listens: silence it meanwhile."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the broker's certificate and key, and the CA that signs its clients."""

    cert: Path
    key: Path
    ca: Path


# What the test broker shares with docker-compose.yml (tests/test_compose.py checks they agree):
# one node, so every internal topic has one replica, and topics are created by streamscore.
BROKER_DEFAULTS = (
    "num.partitions=1",
    "auto.create.topics.enable=true",
    "offsets.topic.replication.factor=1",
    "offsets.topic.num.partitions=1",
    "transaction.state.log.replication.factor=1",
    "transaction.state.log.min.isr=1",
    "transaction.state.log.num.partitions=1",
    "share.coordinator.state.topic.replication.factor=1",
    "share.coordinator.state.topic.min.isr=1",
    "group.initial.rebalance.delay.ms=0",
)


@dataclass
class ApacheKafka:
    """One Apache Kafka broker + controller in one JVM, from ``kafka_home/libs``."""

    kafka_home: Path
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    tls: TlsFiles | None = None
    acl: bool = False
    port: int = 0  # PLAINTEXT
    sasl_port: int = 0  # SASL_PLAINTEXT
    ssl_port: int = 0  # SSL (mutual TLS), with tls
    sasl_ssl_port: int = 0  # SASL_SSL, with tls
    controller_port: int = 0
    run_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    def start(self, timeout_s: float = 120.0) -> ApacheKafka:
        self.port, self.sasl_port, self.ssl_port, self.sasl_ssl_port, self.controller_port = (
            p or free_port()
            for p in (self.port, self.sasl_port, self.ssl_port, self.sasl_ssl_port, self.controller_port)
        )
        self.run_dir = Path(tempfile.mkdtemp(prefix="streamscore-kafka-"))
        if self.tls is not None:  # Kafka's PEM keystore: the private key, then the certificate chain
            keystore = self.run_dir / "broker-keystore.pem"
            keystore.write_text(Path(self.tls.key).read_text() + Path(self.tls.cert).read_text())
        config = self.run_dir / "server.properties"
        config.write_text(self._properties())
        (self.run_dir / "log4j2.properties").write_text(LOG4J2.format(log=self.run_dir / "kafka.log"))
        base = java_command(self.kafka_home, self.run_dir / "log4j2.properties", max_heap="768m")
        cluster = subprocess.run(
            [*base, "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        scram = [
            arg
            for user, password in self.users.items()
            for mechanism in SCRAM
            for arg in ("--add-scram", f"{mechanism}=[name={user},password={password}]")
        ]
        fmt = subprocess.run(
            [
                *base,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster,
                "-c",
                str(config),
                *scram,
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise RuntimeError(
                f"formatting Kafka's storage failed: {(fmt.stderr or fmt.stdout).strip()[-500:]}"
            )
        with open(self.run_dir / "stdout.log", "wb") as out:
            self.process = subprocess.Popen(
                [*dies_with_parent(), *base, "kafka.Kafka", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        exit_on_sigterm()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        async def answers() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2_000)
            try:
                await admin.start()
                await admin.list_topics()
                return True
            except Exception:
                return False
            finally:
                await admin.close()

        with quiet_aiokafka():
            self._poll_ready(answers, time.monotonic() + timeout_s, timeout_s)

    def _poll_ready(
        self, answers: Callable[[], Coroutine[Any, Any, bool]], deadline: float, timeout_s: float
    ) -> None:
        while not asyncio.run(answers()):
            assert self.process is not None and self.run_dir is not None
            if self.process.poll() is not None:
                tail = (self.run_dir / "stdout.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"Apache Kafka exited with code {self.process.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Apache Kafka did not answer within {timeout_s:.0f} s; log in {self.run_dir}"
                )
            time.sleep(0.5)

    def _listeners(self) -> dict[str, int]:
        ports = {"PLAINTEXT": self.port, "SASL_PLAINTEXT": self.sasl_port}
        if self.tls is not None:
            ports |= {"SSL": self.ssl_port, "SASL_SSL": self.sasl_ssl_port}
        return ports

    def _properties(self) -> str:
        assert self.run_dir is not None
        plain_users = " ".join(f'user_{u}="{p}"' for u, p in self.users.items())
        broker_user = next(iter(self.users))  # its own login as a client: unused, brokers talk PLAINTEXT
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        listeners = self._listeners()
        sasl = []
        for name in (n.lower() for n in listeners if n.startswith("SASL")):
            sasl += [
                f"listener.name.{name}.plain.sasl.jaas.config="
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{broker_user}" password="{self.users[broker_user]}" {plain_users};',
                f"listener.name.{name}.scram-sha-256.sasl.jaas.config={scram}",
                f"listener.name.{name}.scram-sha-512.sasl.jaas.config={scram}",
            ]
        tls = []
        if self.tls is not None:
            tls = [
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={self.run_dir / 'broker-keystore.pem'}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.tls.ca}",
                "listener.name.ssl.ssl.client.auth=required",  # mutual TLS on SSL; SASL_SSL logs in
            ]
        acl = []
        if self.acl:
            acl = [
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "super.users=User:admin;User:ANONYMOUS",
            ]
        addresses = ",".join(f"{n}://127.0.0.1:{p}" for n, p in listeners.items())
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                "controller.listener.names=CONTROLLER",
                f"listeners={addresses},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners={addresses}",
                "listener.security.protocol.map="
                + ",".join(f"{n}:{n}" for n in listeners)
                + ",CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
                *sasl,
                *tls,
                *acl,
                f"log.dirs={self.run_dir}/data",
                *BROKER_DEFAULTS,
                # One JVM is broker and controller: a test that pauses it for 30 s must not come
                # back to a controller that has fenced its own broker meanwhile (default 9 s).
                "broker.session.timeout.ms=60000",
                "",
            ]
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=20)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
