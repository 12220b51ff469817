"""The Faust application: ``texts`` → score agent → ``texts.scored`` / ``texts.dlq`` / ``drift.signals``
→ drift agent → ``drift.alerts``.

Read top to bottom as the data flows; everything is wired here, once, and each part gets only
what it uses. Faust commits the offset of every event that has been acknowledged, so events are
acknowledged by hand (``noack_take``) and only once every output of their micro-batch has been
confirmed by the broker (streams/worker/stages.py); a failing send is retried rather than
skipped, and scoring never raises. That gives at-least-once delivery. With
``processing_guarantee=exactly_once`` each batch's outputs and input offsets are committed in
Kafka transactions instead, one per input partition, and Faust commits none of those offsets
(streams/kafka/transactions.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import faust

from streamscore.models.batch import BatchOutput, OutputLimits, RawMessage, process_batch
from streamscore.models.ood import KEEP_IN_DIST
from streamscore.models.scoring import Scorer
from streamscore.schemas.messages import PRODUCER_MAX_REQUEST_BYTES, Origin
from streamscore.streams.kafka import internals
from streamscore.streams.kafka.delivery import deliver
from streamscore.streams.kafka.faust_transport import StreamApp
from streamscore.streams.kafka.security import client_options, faust_credentials, faust_properties
from streamscore.streams.kafka.transactions import PartitionTransactions
from streamscore.streams.settings import Settings
from streamscore.streams.worker.broker_watch import BrokerWatch
from streamscore.streams.worker.drift_agent import (
    RETIRE_AFTER_S,
    DriftAgent,
    DriftTopics,
    ExplainSettings,
    artifacts_from,
)
from streamscore.streams.worker.metrics import BatchStats, WorkerMetrics
from streamscore.streams.worker.offsets import OffsetTracker
from streamscore.streams.worker.output_limits import read_output_limits
from streamscore.streams.worker.scoring_guard import ScoringGuard
from streamscore.streams.worker.serving import ModelHolder
from streamscore.streams.worker.stages import Batch, Intake, OutputTopics, Stages, Take

log = logging.getLogger("streamscore.worker")


def create_app(
    settings: Settings,
    bootstrap_servers: str,
    holder: ModelHolder,
    metrics: WorkerMetrics | None = None,
    output: OutputLimits | None = None,
) -> faust.App:
    """``output``: how big a record may be on each output topic (default: Kafka's defaults)."""
    metrics = metrics or WorkerMetrics.create()
    security = client_options(settings)  # built once; each part gets only what it uses
    show_model(metrics, holder.scorer)
    # Read at each scrape from whichever embedder serves then (a new model may bring a new one).
    metrics.watch_cache(lambda: holder.scorer.embedder.cache_counts())
    metrics.watch_encoder(lambda: holder.scorer.embedder.pool)
    transactions = None
    if settings.processing_guarantee == "exactly_once":
        transactions = PartitionTransactions(
            bootstrap_servers,
            settings.group_id,
            settings.input_topic,
            security,
            # fenced while the group still gives it to us: the rebalance says whose it is now
            on_lost=lambda _: internals.request_rejoin(app),
        )
    app = faust_app(
        settings,
        bootstrap_servers,
        settings.registry / "worker-data" / settings.group_id,
        frozenset({settings.input_topic}) if transactions is not None else frozenset(),
    )
    # Raw bytes in and out: we validate ourselves so a bad message is dead-lettered, not dropped.
    # The topics the agents read; outputs go to the producer directly (streams/kafka/delivery.py).
    texts, signals = (
        app.topic(name, key_serializer="raw", value_serializer="raw")
        for name in (settings.input_topic, settings.signals_topic)
    )

    def producer() -> Any:
        # Faust's own producer: records go to it a partition batch at a time, not by Topic.send.
        return internals.faust_producer(app)

    # texts → score agent → texts.scored, texts.dlq, drift.signals
    async def read_limits() -> OutputLimits:
        return await read_output_limits(bootstrap_servers, settings, security)

    stages = score_stages(settings, holder, metrics, producer, transactions, output, read_limits)
    if transactions is not None:
        follow_partitions(app, settings.input_topic, transactions)

    @app.agent(texts)
    async def score(stream: Any) -> None:  # faust's StreamT stub lacks noack_take
        stages.ensure_running(lambda error: asyncio.ensure_future(app.crash(error)))
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_wait_s):
            await stages.take(Take([raw_message(e.message) for e in events], [(stream, e) for e in events]))

    # drift.signals → drift agent → drift.alerts, drift.state
    drift = DriftAgent(
        DriftTopics(settings.alerts_topic, settings.drift_state_topic, settings.episodes_topic),
        artifacts_from(holder),
        settings.drift_quiet,
        settings.drift_cooldown,
        {"bootstrap_servers": bootstrap_servers, **security},
        ExplainSettings(settings.explain_texts, settings.explain_text_chars),
        # workers reload each at its own time: a version is retired once all have moved on
        retire_after_s=max(RETIRE_AFTER_S, 3 * settings.reload_interval_s),
    )

    follow_signals(app, settings.signals_topic, drift, producer)

    @app.agent(signals)
    async def watch_drift(stream: Any) -> None:
        async for events in stream.take_events(100, within=0.2):  # restores from drift.state first
            await run_drift_agent(
                drift, [(e.message.offset, e.message.value) for e in events], metrics, producer
            )

    # Beside the flow: a new model, the broker's health, the consumer's lag.
    @app.timer(interval=settings.reload_interval_s)
    async def follow_current_model() -> None:
        try:
            if await holder.follow_registry():
                show_model(metrics, holder.scorer)
        except Exception:  # a timer that raises would stop following; log and try next tick
            log.exception("checking the registry for a new model failed")

    broker = BrokerWatch(bootstrap_servers, metrics, security)

    @app.timer(interval=2.0)
    async def watch_broker() -> None:
        await broker.check()

    @app.timer(interval=2.0)
    async def report_lag() -> None:
        await report_consumer_lag(app.consumer, settings.input_topic, stages.offsets, metrics)

    return app


def faust_app(
    settings: Settings, bootstrap_servers: str, datadir: Path, transactional_topics: frozenset[str]
) -> StreamApp:
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return StreamApp(
        settings.group_id,
        transactional_topics=transactional_topics,
        broker=f"kafka://{bootstrap_servers}",
        broker_credentials=faust_credentials(settings),
        fetch_wait_ms=settings.fetch_wait_ms,
        store="memory://",
        # Faust wants a data dir even for memory tables; keep it out of the user's cwd.
        datadir=str(datadir),
        web_enabled=False,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        # No leader election here: without it Faust creates no "<group>-__assignor-__leader" topic,
        # which a worker under Kafka ACLs may not create (docs/reliability.md, Kafka ACLs).
        topic_disable_leader=True,
        producer_acks=-1,
        # A scored record of an input just under max_message_bytes (1,000,000) is a little
        # bigger than that (Faust's default limit); batch.py fits every record to it.
        producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        broker_session_timeout=settings.session_timeout_s,
        # After a crash, everything confirmed since the last commit is scored again.
        broker_commit_interval=settings.commit_interval_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        **faust_properties(settings),
    )


def follow_partitions(app: faust.App, topic: str, transactions: PartitionTransactions) -> None:
    """Exactly-once: fence in the partitions of ``topic`` this worker gets, let go of those it
    loses (Faust waits for their batches to be acknowledged first), and close all at the end."""

    # Faust's signals call receivers as (sender, *args, signal=..., **kwargs).
    async def let_go(sender: Any, revoked: set[Any], **_: Any) -> None:
        await transactions.revoke(tp.partition for tp in revoked if tp.topic == topic)

    async def fence_in(sender: Any, assigned: set[Any], **_: Any) -> None:
        await transactions.assign(tp.partition for tp in assigned if tp.topic == topic)

    async def close(sender: Any, **_: Any) -> None:
        await transactions.close()

    # cast: mode's stub for connect() does not accept an async receiver
    app.on_partitions_revoked.connect(cast(Any, let_go))
    app.on_partitions_assigned.connect(cast(Any, fence_in))
    app.on_before_shutdown.connect(cast(Any, close))


def follow_signals(app: faust.App, topic: str, drift: DriftAgent, producer: Callable[[], Any]) -> None:
    """The drift state follows ``drift.signals``: before the partition goes, its last snapshot is
    written and the detectors forgotten; whoever gets it next reads the latest snapshot first."""

    async def let_go(sender: Any, revoked: set[Any], **_: Any) -> None:
        if not any(tp.topic == topic for tp in revoked):
            return
        record = drift.last_snapshot_record()
        drift.forget()
        if record is not None:
            try:
                # bounded: a broker that does not answer must not hold up the rebalance
                await asyncio.wait_for(deliver(producer(), [(drift.topics.state, b"drift", record)]), 10)
            except Exception as exc:  # the next owner resumes from the snapshot before it
                log.warning("could not write the drift snapshot before giving up %s: %s", topic, exc)

    app.on_partitions_revoked.connect(cast(Any, let_go))


def score_stages(
    settings: Settings,
    holder: ModelHolder,
    metrics: WorkerMetrics,
    producer: Any,
    transactions: PartitionTransactions | None = None,
    output: OutputLimits | None = None,
    read_limits: Callable[[], Awaitable[OutputLimits]] | None = None,
) -> Stages:
    """The score agent's stages: Faust events in, acknowledged once their outputs are confirmed.
    ``output``: how big a record may be on each output topic; ``read_limits`` reads that again."""
    limits = dataclasses.replace(settings.batch_limits, output=output or OutputLimits())

    guard = ScoringGuard(holder.score, metrics.set_scoring)

    async def process(messages: list[RawMessage]) -> BatchOutput:
        return await process_batch(messages, holder.score, limits)  # never raises

    async def score(messages: list[RawMessage]) -> BatchOutput:
        return await guard.score(messages, process)  # held while the model fails on every text

    async def refit() -> None:
        nonlocal limits
        if read_limits is not None:
            limits = dataclasses.replace(limits, output=await read_limits())

    async def ack(handles: list[Any]) -> None:
        for stream, event in handles:
            await stream.ack(event)

    def confirmed(batch: Batch, out: BatchOutput, seconds: float) -> None:
        stats = BatchStats(
            len(batch.messages), out.labels, out.is_ood, out.event_ms, out.reasons, out.embed_s
        )
        metrics.observe_batch(stats, seconds)
        if out.dead:
            log.info(
                "dead-lettered %d of %d messages: %s", len(out.dead), len(batch.messages), dict(out.reasons)
            )

    return Stages(
        intake=Intake(settings.batch_size),
        score=score,
        in_flight=holder.in_flight,
        outputs=OutputTopics(settings.scored_topic, settings.dlq_topic, settings.signals_topic),
        producer=producer,
        ack=ack,
        confirmed=confirmed,
        transactions=transactions,
        refit=refit,
        round_wait_s=settings.commit_interval_s,
    )


def raw_message(message: Any) -> RawMessage:
    """A Faust event's Kafka message as the stages see it."""
    return RawMessage(
        key=message.key,
        value=message.value,
        origin=Origin(message.topic, message.partition, message.offset),
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


async def run_drift_agent(
    drift: DriftAgent, records: list[tuple[int, bytes]], metrics: WorkerMetrics, producer: Any
) -> None:
    """One read of ``drift.signals``: alerts out and confirmed, then the snapshot that follows them."""
    handled = await drift.handle(records)
    if drift.monitor is not None:
        metrics.observe_drift(
            drift.monitor.detectors, drift.monitor.open_episode_ids, handled.alerts, handled.signals
        )
    for alert in handled.alerts:
        log.warning("drift alert: %s %s (%s)", alert.detector, alert.status, alert.alert_id)
    refused = []
    if handled.alerts:
        refused += await deliver(producer(), handled.alert_records(drift.topics.alerts))
    if handled.episodes:
        refused += await deliver(producer(), handled.episode_records(drift.topics.episodes))
    if handled.snapshot is not None:
        refused += await deliver(producer(), [(drift.topics.state, b"drift", handled.snapshot)])
    for topic, _, value in refused:  # alerts and episodes are bounded (16 KB explanations)
        log.error("a %d-byte record is larger than topic '%s' takes; it was not written", len(value), topic)


async def report_consumer_lag(
    consumer: Any, topic: str, offsets: OffsetTracker, metrics: WorkerMetrics
) -> None:
    """Messages behind the end of each assigned input partition, counted from what is confirmed."""
    try:
        assigned = consumer.assignment()
        lags = {}
        for tp in assigned:
            if tp.topic != topic:
                continue
            end = consumer.highwater(tp)
            position = offsets.position(tp.partition)
            if position is None:
                position = await consumer.position(tp)
            if end is not None and position is not None:
                lags[tp.partition] = end - position
        metrics.set_lag(topic, lags)
        metrics.set_ready(bool(assigned))
    except Exception:  # metrics must never stop the worker
        log.debug("could not compute consumer lag", exc_info=True)


def show_model(metrics: WorkerMetrics, scorer: Scorer) -> None:
    """Publish the serving model's version, OOD reference rate and label prior."""
    artifact = scorer.artifact
    keep = float(artifact.manifest.get("thresholds", {}).get("keep_in_dist", KEEP_IN_DIST))
    prior: dict[str, float] = {}
    if artifact.drift is not None:
        prior = dict(zip(artifact.head.labels, artifact.drift.labels["prior"], strict=False))
    metrics.set_model(scorer.version, scorer.embedder.name, str(scorer.embedder.device), 1.0 - keep, prior)
