"""``streamscore worker --processes 2``: two workers in one consumer group from one command, each
held to its own core, that split the partitions, score every message once and stop together."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from streamscore.streams.kafka.broker import free_port
from tests.conftest import WorkerHandle, small_clinc_rows, start_worker
from tests.kafka_helpers import collect, send_json
from tests.test_reliability import health, metric

pytestmark = pytest.mark.integration


def children(parent: int) -> list[int]:
    """The worker processes ``parent`` spawned (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def ready_pair(handle: WorkerHandle, timeout_s: float = 240) -> list[str]:
    """The two processes' metrics URLs, once each holds input partitions and none holds another's."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert handle.process.poll() is None, "worker exited at start:\n" + handle.log()[-3000:]
        urls = re.findall(r"metrics on (http://[0-9.:]+)/metrics", handle.log())
        if len(urls) == 2:
            states = [state(u) for u in urls]
            held = [set(s.get("partitions") or ()) for s in states]
            if all(s.get("status") == "ok" for s in states) and all(held) and not held[0] & held[1]:
                return urls
        time.sleep(1)
    pytest.fail("the two worker processes did not split the partitions in time:\n" + handle.log()[-3000:])


def state(url: str) -> dict:
    """``/healthz`` of ``url``; empty while nothing answers there (or not yet in JSON)."""
    try:
        return health(url)
    except (OSError, ValueError):
        return {}


def test_two_processes_share_the_group_and_stop_together(kafka, trained_registry, tmp_path):
    port = free_port()
    handle = start_worker(kafka, trained_registry, tmp_path, processes="2", metrics_port=str(port))
    try:
        urls = ready_pair(handle)
        pids = children(handle.process.pid)
        assert len(pids) == 2, pids
        cores = [os.sched_getaffinity(pid) for pid in pids]
        assert all(len(c) == 1 for c in cores) and cores[0] != cores[1], cores
        texts = [r["text"] for r in small_clinc_rows()]
        ids = [f"proc-{i}" for i in range(600)]
        send_json(
            kafka,
            handle.topics["input"],
            [{"id": i, "text": texts[n % len(texts)]} for n, i in enumerate(ids)],
        )
        scored = collect(
            kafka,
            handle.topics["scored"],
            len(ids),
            timeout_s=300,
            settle_s=2,
            match=lambda r: r["id"] in ids,
        )
        by_worker = [metric(u, "streamscore_messages_scored_total") or 0 for u in urls]
        # SIGTERM to the command: both processes finish, commit and exit, and so does it.
        handle.process.send_signal(signal.SIGTERM)
        code = handle.process.wait(timeout=90)
    finally:
        if handle.process.poll() is None:
            handle.process.kill()
    log = handle.log()
    counts = Counter(r["id"] for r in scored)
    assert set(counts) == set(ids) and max(counts.values()) == 1, "each message scored exactly once"
    assert all(n > 0 for n in by_worker) and sum(by_worker) == len(ids), by_worker
    assert code == 0, log[-3000:]
    assert children(handle.process.pid) == [] and not any(state(u) for u in urls)


def test_a_process_that_dies_stops_the_others_and_the_command_fails(kafka, trained_registry, tmp_path):
    port = free_port()
    handle = start_worker(kafka, trained_registry, tmp_path, processes="2", metrics_port=str(port))
    try:
        urls = ready_pair(handle)
        victim, survivor = children(handle.process.pid)
        os.kill(victim, signal.SIGKILL)
        code = handle.process.wait(timeout=90)
    finally:
        if handle.process.poll() is None:
            handle.process.kill()
    log = handle.log()
    # Its code says the process was killed (128 + 9), so a supervisor restarts the set.
    assert code == 137, log[-3000:]
    assert re.search(r"process worker-\d exited with code 137; stopping the others", log), log[-3000:]
    assert not Path(f"/proc/{survivor}").exists() and not any(state(u) for u in urls)
