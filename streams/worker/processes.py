"""``streamscore worker --processes N``: N workers in one consumer group, each on its own cores.

Each process has its own event loop, interpreter lock and torch threads, and holding it to its
cores keeps the processes out of each other's way: for machines where one worker's event loop,
not its encoder, is the limit. On 2 cores one worker is the faster layout since its encoder runs
as TorchScript (docs/performance-log.md). They are ordinary workers: the consumer group splits
the input partitions between them as between machines, each serves ``/metrics`` on its own
port (``metrics_port``, the next one up, ...), and one embedded broker serves them all.

>>> core_groups([0, 1, 2, 3, 4], 2)
[{0, 1}, {2, 3, 4}]
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from typing import Any

from streamscore.models.embedder import cpu_cores
from streamscore.streams.kafka.broker import bootstrap_or_embedded, require_broker
from streamscore.streams.settings import Settings
from streamscore.streams.worker.run import run_worker


def core_groups(cores: list[int], n: int) -> list[set[int]]:
    """``cores`` cut into ``n`` disjoint runs of nearly equal size (neighbours stay together)."""
    return [set(cores[i * len(cores) // n : (i + 1) * len(cores) // n]) for i in range(n)]


def run_processes(settings: Settings) -> int:
    """Run ``settings.processes`` workers (0: one per core) until SIGTERM/Ctrl-C or one fails.

    A worker process that exits on its own stops the others and its exit code becomes this
    command's, so a supervisor (systemd, Kubernetes, compose) restarts the whole set; what the
    failed worker had not confirmed is scored again (at-least-once)."""
    require_broker(settings.bootstrap_servers, settings.embedded_broker)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    n = settings.processes or max(1, cpu_cores())
    if n == 1:
        return run_worker(settings)
    if n > len(cores):
        raise ValueError(
            f"processes={n} but this process may use {len(cores) or 'an unknown number of'} CPU "
            f"cores: ask for at most {len(cores)} (0 means one per core)"
        )
    spawn = multiprocessing.get_context("spawn")  # no fork: torch and Faust hold threads
    groups = core_groups(cores, n)
    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        children = []
        for i, group in enumerate(groups):
            port = settings.metrics_port + i if settings.metrics_port else 0
            one = settings.replace(bootstrap_servers=bootstrap, processes=1, metrics_port=port)
            child = spawn.Process(target=_child, args=(one, group), name=f"worker-{i}")
            child.start()
            children.append(child)
        print(
            f"streamscore worker: {n} processes in group {settings.group_id!r}, on cores "
            + ", ".join(f"{sorted(g)}" for g in groups),
            file=sys.stderr,
            flush=True,
        )
        stopping = False

        def stop(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
            nonlocal stopping
            stopping = True
            for c in children:
                if c.is_alive() and c.pid is not None:
                    os.kill(c.pid, signal.SIGTERM)  # each finishes its batches (shutdown_timeout_s)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return _wait_all(children, stop, lambda: stopping)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _wait_all(children: list[Any], stop: Any, stopping: Any) -> int:
    code = 0
    alive = list(children)
    while alive:
        ended = multiprocessing.connection.wait([c.sentinel for c in alive])
        for c in [c for c in alive if c.sentinel in ended]:
            c.join()
            alive.remove(c)
            exit_code = c.exitcode if c.exitcode is None or c.exitcode >= 0 else 128 - c.exitcode
            if not stopping():
                print(
                    f"streamscore worker: process {c.name} exited with code {exit_code}; stopping "
                    "the others (their unconfirmed batches are scored again at the next start)",
                    file=sys.stderr,
                    flush=True,
                )
                stop()
                code = code or exit_code or 1
            else:
                code = code or exit_code or 0
    return code


def _child(settings: Settings, cores: set[int]) -> None:
    # Its own process group: a terminal's Ctrl-C reaches the parent alone, which stops each
    # child once (a second signal would cut its graceful shutdown short).
    os.setpgrp()
    os.sched_setaffinity(0, cores)
    sys.exit(run_worker(settings))
