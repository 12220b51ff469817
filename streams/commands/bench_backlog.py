"""The backlog case of ``streamscore bench``: messages already waiting in P partitions, a fresh
worker, the time it takes to drain them, at-least-once and exactly-once.

What a user sees after a worker was down or when a new group starts on an old topic. Per run,
on topics of its own: ``messages`` texts are produced to an input topic of ``partitions``
partitions, then a worker starts (embedding cache off: the texts repeat). Reported per run:

- ``start_s``: from the worker's process start until its first scored records can be read
  (``read_committed``; Python and the model loaded, the group joined, for exactly-once every
  partition fenced in and the first transactions committed);
- ``drain_s`` and ``per_s``: from then until the last one can be read, and the records read
  meanwhile per second (``scored_first``: those of the first read, not counted in ``per_s``;
  ``per_s`` is null when that first read held them all, as when exactly-once's first
  transaction, slow while the broker creates its transaction log, commits the whole backlog:
  give more ``--messages``);
- ``sockets``: the worker's open sockets at the end of the drain (exactly-once: the
  transactional producers' connections count here);
- ``peak_rss_mb``: its peak resident memory;
- ``join_s``: a second worker joins the same group after the drain: seconds from its process
  start until the two have split the partitions, then ``after_join_s`` until ``messages // 4``
  more (spread over all partitions) are scored by the two: a rebalance's cost, fencing included.

Runs go in the order given (exactly-once first within a partition count, so that a broker's
first transactions, which create its transaction log, are part of a figure).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streamscore.streams.commands.bench_worker import (
    ScoredReader,
    WorkerProcess,
    bench_texts,
    partitions_held,
    produce,
    start_worker,
)
from streamscore.streams.kafka.apache import quiet_aiokafka
from streamscore.streams.kafka.topics import ensure_topics
from streamscore.streams.settings import Settings

GUARANTEES = ("exactly_once", "at_least_once")


@dataclass(frozen=True)
class Drain:
    """One run of the backlog case (module docstring)."""

    guarantee: str
    partitions: int
    messages: int
    start_s: float
    drain_s: float
    per_s: float | None
    scored_first: int
    sockets: int
    peak_rss_mb: float
    join_s: float
    after_join_s: float


def open_sockets(pid: int) -> int:
    """How many sockets process ``pid`` holds open (its connections to the broker, mostly)."""
    fds = Path(f"/proc/{pid}/fd")
    n = 0
    for fd in fds.iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return n


def wait_scored(workers: list[WorkerProcess], n: int, timeout_s: float) -> float:
    """Until ``workers`` have scored ``n`` messages between them: the moment (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = sum(w.scored() for w in workers)
        if done >= n:
            return time.monotonic()
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"a worker exited while draining:\n{w.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done:.0f} of {n} messages scored in {timeout_s:.0f} s")
        time.sleep(0.05)


def wait_split(workers: list[WorkerProcess], timeout_s: float) -> float:
    """Until every worker holds partitions and none holds another's: the moment (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while True:
        split, held = partitions_held(workers)
        if split:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not split the partitions in {timeout_s:.0f} s: {held}")
        time.sleep(0.2)


async def watch_drain(
    bootstrap: str, scored_topic: str, n: int, start: Callable[[], WorkerProcess], timeout_s: float
) -> tuple[WorkerProcess, float, float, int, float]:
    """Reads ``scored_topic`` (``read_committed``, as a user would) while the worker that
    ``start()`` launches drains the backlog: the worker, when it was launched, when its first
    records arrived and how many came in that first fetch, when the ``n``-th arrived."""
    reader = ScoredReader(bootstrap, scored_topic)
    await reader.start()
    try:
        began = time.monotonic()
        worker = start()
        first_at, first_n, seen = 0.0, 0, 0
        while seen < n:
            if time.monotonic() - began > timeout_s or worker.proc.poll() is not None:
                worker.stop()
                raise RuntimeError(
                    f"{seen} of {n} scored records came back:\n{worker.log_path.read_text()[-3000:]}"
                )
            assert reader.consumer is not None
            got = sum(
                len(r) for r in (await reader.consumer.getmany(timeout_ms=50, max_records=5_000)).values()
            )
            if got and not seen:
                first_at, first_n = time.monotonic(), got
            seen += got
        return worker, began, first_at, first_n, time.monotonic()
    finally:
        await reader.stop()


def drain(
    settings: Settings, bootstrap: str, guarantee: str, partitions: int, texts: list[str], log_dir: Path
) -> Drain:
    """One run (module docstring): ``texts`` waiting in ``partitions`` partitions, then workers."""
    tag = uuid.uuid4().hex[:8]
    child = settings.replace(processing_guarantee=guarantee, partitions=partitions, embed_cache_size=0)
    # The scored topic made here, so that its reader is there before the worker's first record.
    topics = {f"bench-texts-{tag}": partitions, f"bench-texts.scored-{tag}": partitions}
    asyncio.run(ensure_topics(bootstrap, topics))
    with quiet_aiokafka():  # a new topic's partitions get their leaders while the first sends retry
        asyncio.run(produce(bootstrap, f"bench-texts-{tag}", texts, "backlog", None))
    timeout = 120 + len(texts) / 10

    def start() -> WorkerProcess:
        return start_worker(child, bootstrap, tag, log_dir, name=f"-{guarantee}-{partitions}", ready=False)

    first, began, started, scored_first, drained = asyncio.run(
        watch_drain(bootstrap, f"bench-texts.scored-{tag}", len(texts), start, timeout)
    )
    workers = [first]
    try:
        sockets = open_sockets(first.proc.pid)
        joined_at = time.monotonic()
        workers.append(start_worker(child, bootstrap, tag, log_dir, name=f"-{guarantee}-{partitions}-2"))
        split = wait_split(workers, timeout)
        more = texts[: max(len(texts) // 4, 1)]
        with quiet_aiokafka():
            asyncio.run(produce(bootstrap, f"bench-texts-{tag}", more, "after", None))
        after = wait_scored(workers, len(texts) + len(more), timeout)
        return Drain(
            guarantee=guarantee,
            partitions=partitions,
            messages=len(texts),
            start_s=round(started - began, 2),
            drain_s=round(drained - started, 2),
            per_s=drain_rate(len(texts), scored_first, drained - started),
            scored_first=scored_first,
            sockets=sockets,
            peak_rss_mb=round(first.peak_rss_mb() or 0.0, 1),
            join_s=round(split - joined_at, 2),
            after_join_s=round(after - split, 2),
        )
    finally:
        for w in workers:
            w.stop()


def drain_rate(messages: int, scored_first: int, seconds: float) -> float | None:
    """Records read per second after the first read; None when the first read held them all.

    >>> drain_rate(600, 100, 2.0)
    250.0
    >>> drain_rate(600, 600, 0.0) is None
    True
    """
    if scored_first >= messages:
        return None
    return round((messages - scored_first) / max(seconds, 1e-9), 1)


def ratio(top: float | None, bottom: float | None) -> float | None:
    """``top / bottom`` to 3 places; None when either was not measured."""
    return None if top is None or bottom is None else round(top / bottom, 3)


def backlog_runs(
    settings: Settings,
    bootstrap: str,
    partition_counts: tuple[int, ...],
    messages: int,
    guarantees: tuple[str, ...],
    log_dir: Path,
    say: Any,
) -> dict[str, Any]:
    """Every run of :func:`drain`, and each exactly-once run's rate over the at-least-once one's
    at the same partition count, and each guarantee's rate at its most partitions over its
    rate at its fewest."""
    texts = bench_texts(messages)
    runs = []
    for p in partition_counts:
        for g in guarantees:
            run = drain(settings, bootstrap, g, p, texts, log_dir)
            drained = (
                "the first read held them all" if run.per_s is None else f"drained at {run.per_s:.0f} msgs/s"
            )
            say(
                f"backlog of {messages} in {p} partitions, {g}: first scored after {run.start_s:.1f} s, {drained}, "
                f"{run.sockets} sockets, {run.peak_rss_mb:.0f} MB; a second "
                f"worker split the partitions in {run.join_s:.1f} s"
            )
            runs.append(run)
    rate = {(r.guarantee, r.partitions): r.per_s for r in runs}
    ratios: dict[str, float | None] = {}
    if set(guarantees) == set(GUARANTEES):
        for p in partition_counts:
            ratios[f"exactly_once_over_at_least_once_{p}"] = ratio(
                rate["exactly_once", p], rate["at_least_once", p]
            )
    if len(partition_counts) > 1:
        lo, hi = min(partition_counts), max(partition_counts)
        for g in guarantees:
            ratios[f"{g}_{hi}_over_{lo}_partitions"] = ratio(rate[g, hi], rate[g, lo])
    return {"messages": messages, "runs": [asdict(r) for r in runs], "ratios": ratios}
