"""``streamscore worker``: load the serving model, make sure the topics exist, run the app."""

from __future__ import annotations

import asyncio
import logging
import sys

from models.embedder import Embedder
from models.scoring import Scorer
from streams.app import create_app
from streams.broker import bootstrap_or_embedded
from streams.metrics import MetricsServer, WorkerMetrics
from streams.serving import ModelHolder
from streams.settings import Settings
from streams.topics import ensure_topics, topic_plan
from training.registry import Registry

log = logging.getLogger("streamscore.worker")


def load_scorer(settings: Settings) -> Scorer:
    artifact = Registry(settings.registry).load(settings.model)
    embedder = Embedder.load(
        artifact.embedder_name,
        settings.device,
        settings.embed_batch_size,
        backend=settings.backend,
        cache_size=settings.embed_cache_size,
        cache_dir=settings.cache_dir,
        parallel=settings.scoring_parallel,
    )
    return Scorer.load(artifact, embedder, settings.top_k)


def run_worker(settings: Settings) -> int:
    import faust

    scorer = load_scorer(settings)  # fail before touching Kafka when there is no usable model
    metrics = WorkerMetrics.create()
    server = None
    if settings.metrics_port:
        server = MetricsServer(metrics, settings.metrics_host, settings.metrics_port).start()
    with bootstrap_or_embedded(settings.bootstrap_servers) as bootstrap:
        asyncio.run(ensure_topics(bootstrap, topic_plan(settings)))
        asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed the last one
        # A pinned --model never changes; otherwise follow the registry's CURRENT pointer.
        follow = None if settings.model else Registry(settings.registry)
        app = create_app(settings, bootstrap, ModelHolder(scorer, follow), metrics)
        print(
            f"streamscore worker: model {scorer.version} ({scorer.embedder.name} on "
            f"{scorer.embedder.device}), {settings.input_topic} → {settings.scored_topic} "
            f"(bad input → {settings.dlq_topic}) on {bootstrap}",
            file=sys.stderr,
            flush=True,
        )
        if server is not None:
            print(
                f"streamscore worker: metrics on {server.url} (health: /healthz)", file=sys.stderr, flush=True
            )
        worker = faust.Worker(app, loglevel=settings.log_level, redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        finally:
            if server is not None:
                server.stop()
    return 0
