"""``streamscore worker``: load the serving model, make sure the topics exist, run the app."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any

import faust

from streamscore.models.embedder import DEFAULT_MODEL, Embedder
from streamscore.models.registry import Registry
from streamscore.models.scoring import Scorer
from streamscore.streams.kafka.access import AccessError, check_access
from streamscore.streams.kafka.broker import bootstrap_or_embedded, require_broker
from streamscore.streams.kafka.guarantees import check_guarantee
from streamscore.streams.kafka.security import client_options
from streamscore.streams.kafka.topics import (
    check_one_partition,
    ensure_topics,
    one_partition_topics,
    partition_counts,
    topic_configs,
    topic_plan,
)
from streamscore.streams.kafka.transactions import transactional_prefix
from streamscore.streams.settings import Settings
from streamscore.streams.worker.app import create_app
from streamscore.streams.worker.memory import freeze_long_lived
from streamscore.streams.worker.metrics import MetricsServer, WorkerMetrics
from streamscore.streams.worker.output_limits import read_output_limits
from streamscore.streams.worker.serving import ModelHolder

log = logging.getLogger("streamscore.worker")


def load_embedder(settings: Settings, name: str = DEFAULT_MODEL, cached: bool = True) -> Embedder:
    """The embedder as the worker loads it; ``cached=False`` leaves out its caches (the bench
    measures encoding)."""
    return Embedder.load(name, **settings.embedder_options(cached))


def load_scorer(settings: Settings) -> Scorer:
    artifact = Registry(settings.registry).load(settings.model)
    embedder = load_embedder(settings, artifact.embedder_name)
    embedder.warm_up()  # the trace, before the first batch waits for it
    return Scorer.load(artifact, embedder, settings.top_k)


# How long a thread may hold the interpreter lock while another waits (Python: 5 ms): the encoder
# threads need it only briefly and waited behind the event loop (docs/performance-log.md).
GIL_SWITCH_S = 0.0001


def run_worker(settings: Settings) -> int:
    sys.setswitchinterval(GIL_SWITCH_S)
    require_broker(settings.bootstrap_servers, settings.embedded_broker)
    scorer = load_scorer(settings)  # fail before touching Kafka when there is no usable model
    metrics = WorkerMetrics.create()
    server = None
    if settings.metrics_port:
        server = MetricsServer(metrics, settings.metrics_host, settings.metrics_port).start()
    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        # Before anything is consumed: a guarantee that cannot hold must stop the worker here.
        security = client_options(settings)
        prefix = transactional_prefix(settings.group_id)
        asyncio.run(check_guarantee(settings.processing_guarantee, bootstrap, security, prefix))
        plan, configs = topic_plan(settings), topic_configs(settings)
        try:  # waits up to connect_timeout_s for a broker that does not answer yet
            asyncio.run(
                ensure_topics(
                    bootstrap,
                    plan,
                    security,
                    settings.connect_timeout_s,
                    configs,
                    settings.replication_factor,
                )
            )
        except AccessError:
            # A topic the principal may not see looks missing, and creating it is refused: the
            # ACL check below names what exactly is missing, when it can tell.
            asyncio.run(check_access(bootstrap, settings, security))
            raise
        asyncio.run(check_access(bootstrap, settings, security))  # ACLs: one clear line, not a late failure
        singles = list(one_partition_topics(settings))
        check_one_partition(settings, asyncio.run(partition_counts(bootstrap, singles, security)))
        output = asyncio.run(read_output_limits(bootstrap, settings, security))
        asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed the last one
        # A pinned --model never changes; otherwise follow the registry's CURRENT pointer.
        follow = None if settings.model else Registry(settings.registry)
        app = create_app(settings, bootstrap, ModelHolder(scorer, follow), metrics, output)
        print(
            f"streamscore worker: model {scorer.version} ({scorer.embedder.name} on "
            f"{scorer.embedder.device}{', TorchScript' if scorer.embedder.traced else ''}), {settings.input_topic} → {settings.scored_topic} "
            f"(bad input → {settings.dlq_topic}) on {bootstrap}",
            file=sys.stderr,
            flush=True,
        )
        if server is not None:
            print(
                f"streamscore worker: metrics on {server.url} (health: /healthz)", file=sys.stderr, flush=True
            )
        worker = BoundedShutdownWorker(
            app,
            loglevel=settings.log_level,
            redirect_stdouts=False,
            shutdown_timeout_s=settings.shutdown_timeout_s,
        )
        freeze_long_lived()  # streams/worker/memory.py: full collections then skip the model and Faust
        metrics.watch_gc()
        try:
            worker.execute_from_commandline()
        finally:
            if server is not None:
                server.stop()
    return 0


class BoundedShutdownWorker(faust.Worker):
    """A Faust worker whose SIGTERM/SIGINT shutdown ends within ``shutdown_timeout_s``.

    On a signal, Faust stops taking input, waits until every event taken has been acknowledged
    (our pipeline acknowledges a batch once its outputs are confirmed), commits and flushes the
    producer. If the broker cannot confirm, that wait has no end; past the timeout the process
    exits with code 3 and the unconfirmed batches are redone by the next worker (at-least-once).
    """

    def __init__(self, *args: Any, shutdown_timeout_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # At log level warning and above Faust adds a terminal spinner that turns the root
        # logger to DEBUG, so every debug line of Faust and aiokafka (one per record sent) is
        # built and handled for nothing.
        self.spinner = None
        self.shutdown_timeout_s = shutdown_timeout_s
        self._deadline: threading.Timer | None = None

    def _schedule_shutdown(self, signal: Any) -> None:  # mode's hook for SIGTERM and SIGINT
        if self._deadline is None:
            log.info(
                "%s received: finishing in-flight batches (at most %.0f s)",
                signal.name,
                self.shutdown_timeout_s,
            )
            self._deadline = threading.Timer(
                self.shutdown_timeout_s, _give_up, args=(self.shutdown_timeout_s,)
            )
            self._deadline.daemon = True
            self._deadline.start()
        super()._schedule_shutdown(signal)

    # By then every service has stopped, the producer is flushed and offsets are committed;
    # mode still waits up to 1 s for tasks that are never going to end, then sleeps 1 s more
    # before closing the loop. A restart or a rolling deploy pays that on every worker.
    def _gather_all(self) -> None:
        for _ in range(4):
            if not asyncio.all_tasks(self.loop):
                break
            self.loop.run_until_complete(asyncio.sleep(0.05))
        for task in asyncio.all_tasks(self.loop):
            task.cancel()

    async def _sentinel_task(self) -> None:
        await asyncio.sleep(0.05)


def _give_up(timeout_s: float) -> None:
    print(
        f"streamscore worker: shutdown did not finish in {timeout_s:.0f} s (broker unreachable?); "
        "exiting now: unconfirmed batches were not committed and will be scored again",
        file=sys.stderr,
        flush=True,
    )
    os._exit(3)
