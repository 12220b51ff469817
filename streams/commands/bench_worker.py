"""The bench's worker under test and its traffic: a real ``streamscore worker`` process on topics
of its own, messages produced to its input topic, its scored records read back and timed.

``streams/commands/bench.py`` puts these together into the figures ``streamscore bench`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamscore.streams.kafka.broker import free_port, stop_process
from streamscore.streams.kafka.client import wait_for_partitions
from streamscore.streams.settings import Settings
from streamscore.training.data import SHIPPED_CLINC150

BENCH_DATA = SHIPPED_CLINC150
WARMUP_MESSAGES = 300  # through a new worker before it is measured: first batches, first fetches


def bench_texts(n: int) -> list[str]:
    """``n`` real short texts: CLINC150 test queries (in scope and out), cycled if needed."""
    rows = [json.loads(line) for line in open(BENCH_DATA, encoding="utf-8")]
    texts = [r["text"] for r in rows if r.get("split") == "test"]
    return [texts[i % len(texts)] for i in range(n)]


def _message(i: int, text: str, run: str) -> bytes:
    return json.dumps({"id": f"{run}-{i}", "text": text, "ts": int(time.time() * 1000)}).encode()


async def produce(bootstrap: str, topic: str, texts: list[str], run: str, rate: float | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        start = time.perf_counter()
        futures = []
        for i, text in enumerate(texts):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            futures.append(await producer.send(topic, _message(i, text, run), key=f"{run}-{i}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class ScoredReader:
    """Reads ``texts.scored`` from its end (no group), noting when each id of a run arrives."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        # A short fetch wait: the embedded broker holds a fetch for the whole wait even when
        # records arrive (streams/kafka/faust_transport.py), which would add to every latency measured.
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
            isolation_level="read_committed",  # exactly-once: what a reader sees
        )
        await self.consumer.start()
        parts = await wait_for_partitions(self.consumer, self.topic, 60.0)
        tps = [TopicPartition(self.topic, p) for p in parts]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)

    async def wait_for(self, run: str, n: int, timeout_s: float) -> dict[str, float]:
        """Arrival time (epoch ms) minus the message's send time, per id of ``run``."""
        assert self.consumer is not None
        latency: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s
        prefix = run + "-"
        while len(latency) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(latency)} of {n} scored records came back in {timeout_s:.0f} s"
                )
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5_000)
            now = time.time() * 1000
            for records in batch.values():
                for rec in records:
                    v = json.loads(rec.value)
                    if str(v.get("id", "")).startswith(prefix) and v["id"] not in latency:
                        latency[v["id"]] = now - float(v["ts"])
        return latency

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


# --- the worker under test -------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A ``streamscore worker`` started by :func:`start_worker`, its topics and its ``/metrics``."""

    proc: subprocess.Popen
    topics: dict[str, str]
    metrics_url: str
    log_path: Path

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The process stopped (SIGSTOP) for the block, so that its idling (polling the broker)
        takes nothing from what is measured meanwhile. Keep the block shorter than the
        consumer group's session timeout (30 s), or the group rebalances when it resumes."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def peak_rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(found.group(1)) / 1024 if found else None

    def health(self) -> dict[str, Any]:
        """``/healthz`` as JSON; empty while the worker does not answer (or is not ready)."""
        try:
            with urllib.request.urlopen(self.metrics_url + "/healthz", timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, ValueError):
            return {}

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample on its ``/metrics`` as (name, labels, value), from one scrape."""
        out = []
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if not line or line.startswith("#"):
                    continue
                sample, _, value = line.rpartition(" ")
                labels = dict(re.findall(r'(\w+)="([^"]*)"', sample))
                out.append((sample.partition("{")[0], labels, float(value)))
        return out

    def metric(
        self, name: str, samples: list[tuple[str, dict[str, str], float]] | None = None, **labels: str
    ) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``, from ``samples``
        (one :meth:`samples` scrape) or a new scrape."""
        return sum(
            value
            for found, have, value in (self.samples() if samples is None else samples)
            if found == name and all(have.get(k) == v for k, v in labels.items())
        )

    def scored(self) -> float:
        """``streamscore_messages_scored_total`` from its ``/metrics``."""
        return self.metric("streamscore_messages_scored_total")

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=30)


def partitions_held(workers: list[WorkerProcess]) -> tuple[bool, list[set[int]]]:
    """Whether every worker holds input partitions and none holds another's (the group has
    rebalanced among them), and the partitions each holds."""
    held = [set(w.health().get("partitions") or ()) for w in workers]
    return all(held) and sum(map(len, held)) == len(set().union(*held)), held


def start_worker(
    settings: Settings,
    bootstrap: str,
    tag: str,
    log_dir: Path,
    name: str = "",
    cpus: set[int] | None = None,
    ready: bool = True,
) -> WorkerProcess:
    """A ``streamscore worker`` on the topics and consumer group of ``tag``, returned once it
    holds partitions (``ready=False``: at once); ``cpus`` holds it to those CPU cores (its
    encoder then uses that many threads)."""
    topics = {
        "input": f"bench-texts-{tag}",
        "scored": f"bench-texts.scored-{tag}",
        "dlq": f"bench-texts.dlq-{tag}",
        "signals": f"bench-drift.signals-{tag}",
        "alerts": f"bench-drift.alerts-{tag}",
        "state": f"bench-drift.state-{tag}",
    }
    port = free_port()
    child = settings.replace(
        bootstrap_servers=bootstrap,
        input_topic=topics["input"],
        scored_topic=topics["scored"],
        dlq_topic=topics["dlq"],
        signals_topic=topics["signals"],
        alerts_topic=topics["alerts"],
        drift_state_topic=topics["state"],
        group_id=f"bench-{tag}",
        metrics_port=port,
        log_level="warning",
    )
    env = {**os.environ, **child.to_env()}
    log_path = log_dir / f"worker-{tag}{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamscore.streams.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    worker = WorkerProcess(proc, topics, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 180
    while ready:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited at start:\n{log_path.read_text()[-3000:]}")
        if worker.health().get("status") == "ok":
            return worker
        if time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"the worker did not become ready in 180 s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    return worker


def ready_worker(
    settings: Settings, bootstrap: str, tag: str, log_dir: Path, name: str = "", cpus: set[int] | None = None
) -> WorkerProcess:
    """:func:`start_worker`, then ``WARMUP_MESSAGES`` through it: its first batches (lazy
    initialisation, first fetches of new topics) are not part of any figure."""
    worker = start_worker(settings, bootstrap, tag, log_dir, name=name, cpus=cpus)
    try:
        asyncio.run(e2e_run(bootstrap, worker, bench_texts(WARMUP_MESSAGES), "warmup", None))
    except BaseException:
        worker.stop()
        raise
    return worker


async def e2e_run(
    bootstrap: str, worker: WorkerProcess, texts: list[str], run: str, rate: float | None
) -> tuple[float, dict[str, float]]:
    """``texts`` produced to ``worker``'s input (at ``rate`` per second; None: as fast as the
    producer goes) until all are read back scored: the seconds it took, and each message's
    latency in milliseconds by id."""
    reader = ScoredReader(bootstrap, worker.topics["scored"])
    await reader.start()
    try:
        start = time.perf_counter()
        sender = asyncio.create_task(produce(bootstrap, worker.topics["input"], texts, run, rate))
        latency = await reader.wait_for(run, len(texts), timeout_s=60 + len(texts) / 20)
        await sender
        return time.perf_counter() - start, latency
    finally:
        await reader.stop()


def e2e_rates(bootstrap: str, worker: WorkerProcess, texts: list[str], repeats: int, run: str) -> list[float]:
    """End-to-end messages per second of ``repeats`` runs of ``texts`` through ``worker``'s topics."""
    rates = []
    for r in range(repeats):
        elapsed, _ = asyncio.run(e2e_run(bootstrap, worker, texts, f"{run}{r}", None))
        rates.append(len(texts) / elapsed)
    return rates


def settled_counts(workers: list[WorkerProcess], timeout_s: float = 10.0) -> list[float]:
    """Each worker's scored count once it stops moving: a batch's records can be read back a
    moment before the worker, still waiting for the broker's acks, counts them."""
    last = [w.scored() for w in workers]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = [w.scored() for w in workers]
        if now == last:
            break
        last = now
    return last
