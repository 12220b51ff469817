"""``streamscore worker``: load the serving model, make sure the topics exist, run the app."""

from __future__ import annotations

import asyncio
import logging
import sys

from models.embedder import Embedder
from models.scoring import Scorer
from streams.app import create_app
from streams.broker import bootstrap_or_embedded
from streams.serving import ModelHolder
from streams.settings import Settings
from streams.topics import ensure_topics, topic_plan
from training.registry import Registry

log = logging.getLogger("streamscore.worker")


def load_scorer(settings: Settings) -> Scorer:
    artifact = Registry(settings.registry).load(settings.model)
    embedder = Embedder.load(artifact.embedder_name, settings.device, settings.embed_batch_size)
    return Scorer.load(artifact, embedder, settings.top_k)


def run_worker(settings: Settings) -> int:
    import faust

    scorer = load_scorer(settings)  # fail before touching Kafka when there is no usable model
    with bootstrap_or_embedded(settings.bootstrap_servers) as bootstrap:
        asyncio.run(ensure_topics(bootstrap, topic_plan(settings)))
        asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed the last one
        # A pinned --model never changes; otherwise follow the registry's CURRENT pointer.
        follow = None if settings.model else Registry(settings.registry)
        app = create_app(settings, bootstrap, ModelHolder(scorer, follow))
        print(
            f"streamscore worker: model {scorer.version} ({scorer.embedder.name} on "
            f"{scorer.embedder.device}), {settings.input_topic} → {settings.scored_topic} "
            f"(bad input → {settings.dlq_topic}) on {bootstrap}",
            file=sys.stderr,
            flush=True,
        )
        worker = faust.Worker(app, loglevel=settings.log_level, redirect_stdouts=False)
        worker.execute_from_commandline()
    return 0
