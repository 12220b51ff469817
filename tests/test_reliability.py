"""Break things on purpose, on a real broker: SIGTERM, kill -9, a second worker dying, a frozen
broker. Every input id must come out in ``texts.scored`` or ``texts.dlq`` (at-least-once).

Each test prints its figures (sent, lost, duplicated, seconds) as one JSON line starting with
``reliability:`` and appends it to ``artifacts/test-reports/reliability.jsonl``; the README's
reliability section quotes them.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from streamscore.streams.kafka.broker import EmbeddedBroker, free_port
from tests.conftest import (
    ROOT,
    WorkerHandle,
    kafka_home,
    own_broker,
    small_clinc_rows,
    start_worker,
    stop_worker,
)
from tests.kafka_helpers import collect, send_raw

pytestmark = pytest.mark.integration

REPORT = ROOT / "artifacts" / "test-reports" / "reliability.jsonl"


def report(test: str, **figures: object) -> None:
    home = kafka_home()
    broker = f"apache-kafka {home.name}" if home is not None else "embedded"
    line = json.dumps({"test": test, "broker": broker, **figures})
    print("reliability:", line)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT, "a") as f:
        f.write(line + "\n")


def stream(n: int, prefix: str, bad_share: float = 0.01, seed: int = 3) -> tuple[list, set[str], set[str]]:
    """``n`` keyed messages of real texts, ``bad_share`` of them invalid JSON; (messages, good, bad)."""
    rng = random.Random(seed)
    texts = [r["text"] for r in small_clinc_rows()]
    messages, good, bad = [], set(), set()
    for i in range(n):
        key = f"{prefix}-{i}"
        if rng.random() < bad_share:
            messages.append((key.encode(), b'{"id": "' + key.encode() + b'", "text": '))
            bad.add(key)
        else:
            messages.append((key.encode(), json.dumps({"id": key, "text": rng.choice(texts)}).encode()))
            good.add(key)
    return messages, good, bad


def out_of_order(records: list[dict]) -> int:
    """Scored records that came after a later message of their input partition, within their
    output partition: a record's first occurrence only (an at-least-once repeat comes back late
    by nature). Exactly-once keeps each input partition's order, whatever the faults.

    >>> def rec(p, input_offset): return {"partition": p, "offset": 0, "value": {"id": f"i{input_offset}", "origin": {"partition": 0, "offset": input_offset}}}
    >>> out_of_order([rec(0, 1), rec(0, 2), rec(1, 0), rec(0, 1)])  # the last: a repeat
    0
    >>> out_of_order([rec(0, 2), rec(0, 1)])
    1
    """
    seen: set[str] = set()
    last: dict[tuple[int, int], int] = {}  # (output partition, input partition) -> input offset
    late = 0
    for r in sorted(records, key=lambda r: (r["partition"], r["offset"])):
        value = r["value"]
        if value["id"] in seen:
            continue
        seen.add(value["id"])
        key = (r["partition"], value["origin"]["partition"])
        if value["origin"]["offset"] < last.get(key, -1):
            late += 1
        last[key] = max(last.get(key, -1), value["origin"]["offset"])
    return late


# What exactly-once promises under every fault: :func:`outcome` finds nothing wrong.
NOTHING_WRONG = {"lost": 0, "duplicated": 0, "wrong_topic": 0, "out_of_order": 0}


def outcome(bootstrap: str, topics: dict[str, str], prefix: str, good: set[str], bad: set[str]) -> dict:
    """Read both outputs until every id is in, and a while longer for late repeats: ids lost and
    duplicated, per topic, and scored records out of their input partition's order
    (:func:`out_of_order`). A lost id makes the read wait its whole timeout."""
    records = collect(
        bootstrap,
        topics["scored"],
        len(good),
        timeout_s=600,
        settle_s=1.5,
        match=lambda r: r["id"].startswith(prefix + "-"),
        records=True,
        distinct=lambda r: r["id"],
    )
    scored = [r["value"] for r in records]
    dead = collect(
        bootstrap,
        topics["dlq"],
        len(bad),
        timeout_s=60,
        settle_s=0.5,
        match=lambda d: (d["key"] or "").startswith(prefix + "-"),
        distinct=lambda d: d["key"],
    )
    s, d = Counter(r["id"] for r in scored), Counter(x["key"] for x in dead)
    return {
        "lost": len(good - set(s)) + len(bad - set(d)),
        "duplicated": sum(c - 1 for c in s.values()) + sum(c - 1 for c in d.values()),
        "wrong_topic": len(set(s) & bad) + len(set(d) & good),
        "out_of_order": out_of_order(records),
    }


def wait_scored(bootstrap: str, topic: str, prefix: str, at_least: int) -> None:
    got = collect(
        bootstrap, topic, at_least, timeout_s=300, settle_s=0, match=lambda r: r["id"].startswith(prefix)
    )
    assert len(got) >= at_least, f"only {len(got)} scored before the fault"


def health(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while not ok: the body still says why
        return json.loads(exc.read())


def metric(url: str, name: str) -> float | None:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def ready(handle: WorkerHandle, url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert handle.process.poll() is None, "worker exited at start:\n" + handle.log()
        try:
            if health(url).get("status") == "ok":
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail("worker not ready in time:\n" + handle.log())


def start(
    bootstrap: str, registry: Path, log_dir: Path, tag: str | None = None, **extra: str
) -> tuple[WorkerHandle, str]:
    port = free_port()
    handle = start_worker(bootstrap, registry, log_dir, tag=tag, metrics_port=str(port), **extra)
    url = f"http://127.0.0.1:{port}"
    ready(handle, url)
    return handle, url


def wait_split(url: str, timeout_s: float = 120) -> None:
    """Until the group has split the partitions between the second worker (at ``url``) and another."""
    deadline = time.monotonic() + timeout_s
    while len(health(url).get("partitions", [])) == 3 and time.monotonic() < deadline:
        time.sleep(1)


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def test_sigterm_finishes_in_flight_work_and_a_restart_repeats_nothing(kafka, trained_registry, tmp_path):
    worker, _ = start(kafka, trained_registry, tmp_path)
    messages, good, bad = stream(3_000, "term")
    send_raw(kafka, worker.topics["input"], messages)
    wait_scored(kafka, worker.topics["scored"], "term-", 500)
    began = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(timeout=90)
    took = time.monotonic() - began
    log = worker.log()
    assert code == 0, log[-3000:]
    again, _ = start(kafka, trained_registry, tmp_path, tag=worker.tag)
    try:
        result = outcome(kafka, worker.topics, "term", good, bad)
    finally:
        stop_worker(again)
    report("sigterm_then_restart", sent=len(messages), shutdown_s=round(took, 1), **result)
    assert result["lost"] == 0 and result["wrong_topic"] == 0
    # In-flight batches were finished and committed: nothing is scored twice after a clean stop.
    assert result["duplicated"] == 0
    assert took < 30, f"shutdown took {took:.0f} s"


def kill_9_then_restart(
    kafka: str, registry: Path, log_dir: Path, prefix: str, **extra: str
) -> tuple[int, dict]:
    """kill -9 a worker after 2,000 of 8,000 are scored, restart it: (sent, outcome)."""
    worker, _ = start(kafka, registry, log_dir, **extra)
    messages, good, bad = stream(8_000, prefix)
    send_raw(kafka, worker.topics["input"], messages)
    wait_scored(kafka, worker.topics["scored"], f"{prefix}-", 2_000)
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    again, _ = start(kafka, registry, log_dir, tag=worker.tag, **extra)
    try:
        return len(messages), outcome(kafka, worker.topics, prefix, good, bad)
    finally:
        stop_worker(again)


def two_workers_one_killed(
    kafka: str, registry: Path, log_dir: Path, prefix: str, **extra: str
) -> tuple[int, dict, list[int] | None]:
    """Two workers split the partitions; kill -9 one after 1,000 of 5,000 are scored:
    (sent, outcome, the survivor's partitions)."""
    first, _ = start(kafka, registry, log_dir, **extra)
    second, second_url = start(kafka, registry, log_dir, tag=first.tag, **extra)
    try:
        wait_split(second_url)
        messages, good, bad = stream(5_000, prefix)
        send_raw(kafka, first.topics["input"], messages)
        wait_scored(kafka, first.topics["scored"], f"{prefix}-", 1_000)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        result = outcome(kafka, first.topics, prefix, good, bad)
        return len(messages), result, health(second_url).get("partitions")
    finally:
        stop_worker(second)


def test_kill_9_mid_stream_then_restart_loses_nothing(kafka, trained_registry, tmp_path):
    sent, result = kill_9_then_restart(kafka, trained_registry, tmp_path, "k9")
    report("kill_9_then_restart", sent=sent, **result)
    assert result["lost"] == 0 and result["wrong_topic"] == 0
    # At-least-once: what was in flight at the kill may come out twice, never more than that.
    assert result["duplicated"] <= 2_000


def test_two_workers_one_killed_the_other_takes_over(kafka, trained_registry, tmp_path):
    sent, result, partitions = two_workers_one_killed(kafka, trained_registry, tmp_path, "two")
    report("two_workers_one_killed", sent=sent, **result)
    assert result["lost"] == 0 and result["wrong_topic"] == 0
    assert result["duplicated"] <= 2_000
    assert partitions == [0, 1, 2], "the survivor should hold every partition"


@pytest.fixture(scope="module")
def pausable_broker():
    """A broker of the session's kind for the tests that pause it (SIGSTOP; on Apache Kafka its
    JVM): the session's may be one a user pointed the tests at. The embedded broker keeps data
    in memory only, so it is paused, not restarted. Each test resumes it before it ends."""
    with own_broker() as broker:
        assert broker.process is not None
        yield broker


def test_broker_frozen_for_30_s_is_reported_and_nothing_is_lost(pausable_broker, trained_registry, tmp_path):
    broker = pausable_broker
    worker, url = start(broker.bootstrap_servers, trained_registry, tmp_path)
    try:
        messages, good, bad = stream(4_000, "frozen")
        send_raw(broker.bootstrap_servers, worker.topics["input"], messages)
        wait_scored(broker.bootstrap_servers, worker.topics["scored"], "frozen-", 800)
        rss_before = rss_mb(worker.process.pid)
        broker.process.send_signal(signal.SIGSTOP)
        seen_degraded = seen_down_metric = False
        rss_peak = rss_before
        try:
            frozen_until = time.monotonic() + 30
            while time.monotonic() < frozen_until:
                time.sleep(2)
                seen_degraded |= health(url).get("status") == "degraded"
                seen_down_metric |= metric(url, "streamscore_broker_up") == 0
                rss_peak = max(rss_peak, rss_mb(worker.process.pid))
                assert worker.process.poll() is None, worker.log()[-3000:]
        finally:
            broker.process.send_signal(signal.SIGCONT)
        result = outcome(broker.bootstrap_servers, worker.topics, "frozen", good, bad)
        deadline = time.monotonic() + 60
        while health(url).get("status") != "ok" and time.monotonic() < deadline:
            time.sleep(1)
        final = health(url)
        up_again = metric(url, "streamscore_broker_up")
    finally:
        stop_worker(worker)
    log = worker.log()
    report("broker_frozen_30s", sent=len(messages), rss_growth_mb=round(rss_peak - rss_before), **result)
    assert result["lost"] == 0 and result["wrong_topic"] == 0
    assert seen_degraded and seen_down_metric, "the frozen broker was not reported in /healthz and metrics"
    assert final["status"] == "ok" and final["broker"] == "ok" and up_again == 1
    assert "does not answer" in log and "answers again" in log
    assert rss_peak - rss_before < 300, "memory grew while the broker was away"


def test_sigterm_with_the_broker_gone_exits_in_bounded_time_and_loses_nothing(
    pausable_broker, trained_registry, tmp_path, monkeypatch
):
    # SIGTERM while the broker is frozen: in-flight outputs can never be confirmed, so a graceful
    # stop has no end. The worker must give up after shutdown_timeout_s with code 3, and what it
    # had not confirmed must be scored by the next worker.
    monkeypatch.setenv("STREAMSCORE_SHUTDOWN_TIMEOUT_S", "5")
    broker = pausable_broker
    worker, _ = start(broker.bootstrap_servers, trained_registry, tmp_path)
    messages, good, bad = stream(2_500, "gone")
    send_raw(broker.bootstrap_servers, worker.topics["input"], messages)
    wait_scored(broker.bootstrap_servers, worker.topics["scored"], "gone-", 500)
    broker.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1)
        began = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        try:
            code = worker.process.wait(timeout=60)
        except Exception:
            worker.process.kill()
            raise
        took = time.monotonic() - began
    finally:
        broker.process.send_signal(signal.SIGCONT)
    log = worker.log()
    again, _ = start(broker.bootstrap_servers, trained_registry, tmp_path, tag=worker.tag)
    try:
        result = outcome(broker.bootstrap_servers, worker.topics, "gone", good, bad)
    finally:
        stop_worker(again)
    report("sigterm_broker_gone", sent=len(messages), shutdown_s=round(took, 1), **result)
    assert code == 3, log[-3000:]
    assert "shutdown did not finish in 5 s" in log, log[-3000:]
    assert took < 5 + 10, f"shutdown took {took:.0f} s with a 5 s limit"
    assert result["lost"] == 0 and result["wrong_topic"] == 0


def test_exactly_once_on_a_broker_without_transactions_is_refused_at_start(trained_registry, tmp_path):
    with EmbeddedBroker() as broker:  # the broker without transactions, whichever the session's is
        handle = start_worker(
            broker.bootstrap_servers,
            trained_registry,
            tmp_path,
            processing_guarantee="exactly_once",
            metrics_port="0",
        )
        code = handle.process.wait(timeout=120)
    log = handle.log()
    assert code != 0, log[-2000:]
    assert "exactly_once needs Kafka transactions" in log and "cannot run them" in log, log[-2000:]
    assert "processing_guarantee=at_least_once" in log  # and says what to do instead
