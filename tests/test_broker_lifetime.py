"""No broker outlives the command that started it: SIGTERM, SIGINT or kill -9. The embedded one
always; Apache Kafka (``streamscore broker --kafka-home``) too when ``KAFKA_HOME`` is set."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamscore.streams.kafka.broker import free_port, port_open
from tests.conftest import ROOT, kafka_home

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            for c in map(int, children):
                if c not in found:
                    found.add(c)
                    todo.append(c)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(condition, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


KINDS = ["embedded"] + (["apache-kafka"] if kafka_home() is not None else [])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["term", "int", "kill9"])
def test_streamscore_broker_takes_its_broker_and_port_with_it(how, kind):
    port = free_port()
    extra = ["--kafka-home", str(kafka_home())] if kind == "apache-kafka" else []
    owner = subprocess.Popen(
        [sys.executable, "-m", "streamscore.streams.cli", "broker", "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C as at a terminal: a test run in the background inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert wait_until(lambda: port_open("127.0.0.1", port), 90), "the broker did not start"
        brokers = descendants(owner.pid)
        assert brokers, "the broker runs as a child process"
        os.kill(owner.pid, how)
        try:
            owner.wait(timeout=45)  # Apache Kafka's own shutdown takes seconds, more on a busy machine
        except subprocess.TimeoutExpired:
            owner.kill()
            pytest.fail(f"still running 45 s after {how!r}:\n{owner.communicate()[0][-3000:]}")
        assert wait_until(lambda: not any(alive(p) for p in brokers), 30), f"left running: {brokers}"
        assert wait_until(lambda: not port_open("127.0.0.1", port)), f"port {port} still open"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
