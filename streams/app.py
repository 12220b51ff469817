"""The Faust application: ``texts`` → score agent → ``texts.scored`` / ``texts.dlq``.

Read top to bottom as the data flows. Faust commits the offset of every event that has been
acknowledged, so events are acknowledged by hand (``noack_take``) and only once every output
of their micro-batch has been confirmed by the broker; a failing send is retried rather than
skipped, and scoring never raises. That gives at-least-once delivery.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import faust

from models.scoring import Scorer
from schemas.messages import Origin
from streams.broker_watch import BrokerWatch
from streams.delivery import Delivery, Record, deliver, send_batched
from streams.drift_monitor import signals_in
from streams.drift_watch import DriftWatch
from streams.faust_transport import StreamApp
from streams.kafka_security import client_options, faust_credentials
from streams.metrics import BatchStats, WorkerMetrics
from streams.pipeline import BatchOutput, RawMessage, process_batch, signal_records
from streams.serving import ModelHolder
from streams.settings import Settings

log = logging.getLogger("streamscore.worker")


def create_app(
    settings: Settings, bootstrap_servers: str, holder: ModelHolder, metrics: WorkerMetrics | None = None
) -> faust.App:
    metrics = metrics or WorkerMetrics.create()
    datadir = settings.registry / "worker-data" / settings.group_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    show_model(metrics, holder.scorer)
    # Read at each scrape from whichever embedder serves then (a new model may bring a new one).
    metrics.watch_cache(lambda: holder.scorer.embedder.cache_counts())
    metrics.watch_encoder(lambda: holder.scorer.embedder.pool)
    app = StreamApp(
        settings.group_id,
        broker=f"kafka://{bootstrap_servers}",
        broker_credentials=faust_credentials(settings),
        fetch_wait_ms=settings.fetch_wait_ms,
        store="memory://",
        # Faust wants a data dir even for memory tables; keep it out of the user's cwd.
        datadir=str(datadir),
        web_enabled=False,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # A Kafka broker's default message.max.bytes: a scored record of an input just under
        # max_message_bytes (1,000,000) is a little bigger than that (Faust's default limit).
        producer_max_request_size=1_048_576,
        broker_session_timeout=30,
        # After a crash, everything confirmed since the last commit is scored again.
        broker_commit_interval=settings.commit_interval_s,
        broker_heartbeat_interval=3,
    )
    # Raw bytes in and out: we validate ourselves so a bad message is dead-lettered, not dropped.
    # The topics the agents read; outputs go to the producer directly (streams/delivery.py).
    texts, signals = (
        app.topic(name, key_serializer="raw", value_serializer="raw")
        for name in (settings.input_topic, settings.signals_topic)
    )

    def records_of(out: BatchOutput) -> list[Record]:
        return (
            [(settings.scored_topic, k, v) for k, v in out.scored]
            + [(settings.dlq_topic, k, v) for k, v in out.dead]
            + [(settings.signals_topic, None, v) for v in signal_records(out)]
        )

    def producer() -> Any:
        # Faust's own aiokafka producer: started before the agents, stopped after them. Records
        # go to it a partition batch at a time (streams/delivery.py), not through Topic.send.
        return app.producer._ensure_producer()  # type: ignore[attr-defined]

    # A pipeline, so the encoder never waits for Kafka: Faust fills the next batch while
    # ``holder.in_flight`` batches are scored at once (their forward passes share the encoder's
    # threads: models/encode_pool.py), their outputs are sent in input order, and the broker
    # confirms one batch while the next ones are scored. A batch's events are acknowledged (so
    # their offsets may be committed) only once all its outputs are confirmed; Faust commits
    # only offsets below the lowest unacknowledged one per partition. Every queue is bounded: a
    # slow broker stops the intake (backpressure).
    #
    # A batch goes to the scorers only while fewer than ``in_flight`` are there: one per encoder
    # thread, and one more so that a thread which finishes finds work at once instead of idling
    # until the event loop, busy with the other batches' records, has formed the next (py-spy:
    # the threads of the fast int8 encoder had idled a fifth of their time). What arrives
    # meanwhile is merged into the next batch: small batches embed at up to twice the cost per
    # text, so dispatching every Faust ``take`` as it came would queue small batches under load.
    in_flight = holder.in_flight
    to_score: asyncio.Queue[tuple[Any, list[Any]]] = asyncio.Queue(maxsize=8)
    free_scorers = asyncio.Semaphore(in_flight)
    to_send: asyncio.Queue[tuple[list[tuple[Any, Any]], list[RawMessage], asyncio.Future, float]] = (
        asyncio.Queue(maxsize=in_flight)
    )
    # (events, batch, its output, the records sent for it, their deliveries, time taken)
    to_confirm: asyncio.Queue[
        tuple[list[tuple[Any, Any]], list[RawMessage], BatchOutput, list[Record], list[Delivery], float]
    ] = asyncio.Queue(maxsize=2)
    next_offset: dict[int, int] = {}  # per input partition: the next offset to process
    stages: list[asyncio.Task] = []

    held: list[list[tuple[Any, Any]]] = []  # a take that did not fit the last batch

    async def next_batch() -> list[tuple[Any, Any]]:
        """(stream, event) pairs: the next take, plus those queued behind it while they fit."""
        if not held:
            stream, events = await to_score.get()
            held.append([(stream, e) for e in events])
        batch = held.pop()
        while not to_score.empty():
            stream, events = to_score.get_nowait()
            if len(batch) + len(events) > settings.batch_size:
                held.append([(stream, e) for e in events])
                break
            batch += [(stream, e) for e in events]
        return batch

    async def score_stage() -> None:
        while True:
            await free_scorers.acquire()
            events = await next_batch()
            taken = time.perf_counter()
            batch = [
                RawMessage(
                    key=e.message.key,
                    value=e.message.value,
                    origin=Origin(e.message.topic, e.message.partition, e.message.offset),
                    timestamp_ms=int(e.message.timestamp * 1000) if e.message.timestamp else None,
                )
                for _, e in events
            ]
            job = asyncio.ensure_future(process_batch(batch, holder.score, settings))  # never raises
            job.add_done_callback(lambda _: free_scorers.release())
            await to_send.put((events, batch, job, taken))

    async def send_stage() -> None:
        while True:
            events, batch, job, taken = await to_send.get()
            out = await job
            pending = records_of(out)  # built once: the signals are encoded here
            sent = await send_batched(producer(), pending)
            await to_confirm.put((events, batch, out, pending, sent, taken))

    async def confirm_stage() -> None:
        while True:
            events, batch, out, pending, sent, taken = await to_confirm.get()
            await deliver(producer(), pending, sent)
            for stream, e in events:
                await stream.ack(e)
            metrics.observe_batch(
                BatchStats(len(batch), out.labels, out.is_ood, out.event_ms, out.reasons, out.embed_s),
                time.perf_counter() - taken,
            )
            for raw in batch:
                p = raw.origin.partition
                next_offset[p] = max(next_offset.get(p, 0), raw.origin.offset + 1)
            if out.dead:
                log.info("dead-lettered %d of %d messages: %s", len(out.dead), len(batch), dict(out.reasons))

    def supervise(task: asyncio.Task) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("a scoring stage stopped: %r; stopping the worker", error)
            asyncio.ensure_future(app.crash(error))  # unacknowledged batches are redone

    @app.agent(texts)
    async def score(stream: Any) -> None:  # faust's StreamT stub lacks noack_take
        if not stages or any(t.done() for t in stages):
            stages[:] = [asyncio.create_task(f()) for f in (score_stage, send_stage, confirm_stage)]
            for t in stages:
                t.add_done_callback(supervise)
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_wait_s):
            await to_score.put((stream, events))  # waits while 8 takes are queued: backpressure

    drift = DriftWatch(settings, bootstrap_servers, holder)

    @app.agent(signals)
    async def watch_drift(stream: Any) -> None:
        await drift.restore()
        last_snapshot = 0.0
        async for events in stream.take_events(100, within=0.2):
            raised, n_signals = [], 0
            for e in events:
                offset = e.message.offset
                try:
                    record = json.loads(e.message.value)
                    monitor = await drift.monitor_for(record["model_version"])
                    batch = signals_in(record)
                except Exception:  # a record we cannot read must not stop drift watching
                    log.exception("skipping unreadable drift signals record at offset %s", offset)
                    continue
                n_signals += len(batch)
                if monitor is None:
                    continue
                raised += drift.closing_alerts()
                for index, signal in enumerate(batch):
                    try:
                        raised += monitor.observe(signal, offset, index)
                    except Exception:
                        log.exception("skipping unreadable drift signal %s of offset %s", index, offset)
            if drift.monitor is not None:
                metrics.observe_drift(drift.monitor.detectors, drift.monitor.open_episodes, raised, n_signals)
            for alert in raised:
                log.warning("drift alert: %s %s (%s)", alert["detector"], alert["status"], alert["alert_id"])
            if raised:
                await deliver(
                    producer(),
                    [(settings.alerts_topic, a["alert_id"].encode(), json.dumps(a).encode()) for a in raised],
                )
            now = time.monotonic()
            # The snapshot follows every alert, so a restart never repeats one; else once a second.
            if drift.monitor is not None and (raised or now - last_snapshot > 1.0):
                await deliver(producer(), [(settings.drift_state_topic, b"drift", drift.monitor.snapshot())])
                last_snapshot = now

    @app.timer(interval=settings.reload_interval_s)
    async def follow_current_model() -> None:
        try:
            if await holder.follow_registry():
                show_model(metrics, holder.scorer)
        except Exception:  # a timer that raises would stop following; log and try next tick
            log.exception("checking the registry for a new model failed")

    broker = BrokerWatch(bootstrap_servers, metrics, client_options(settings))

    @app.timer(interval=2.0)
    async def watch_broker() -> None:
        await broker.check()

    @app.timer(interval=2.0)
    async def report_lag() -> None:
        try:
            assigned = app.consumer.assignment()
            lags = {}
            for tp in assigned:
                if tp.topic != settings.input_topic:
                    continue
                end = app.consumer.highwater(tp)
                position = next_offset.get(tp.partition)
                if position is None:
                    position = await app.consumer.position(tp)
                if end is not None and position is not None:
                    lags[tp.partition] = end - position
            metrics.set_lag(settings.input_topic, lags)
            metrics.set_ready(bool(assigned))
        except Exception:  # metrics must never stop the worker
            log.debug("could not compute consumer lag", exc_info=True)

    return app


def show_model(metrics: WorkerMetrics, scorer: Scorer) -> None:
    """Publish the serving model's version, OOD reference rate and label prior."""
    artifact = scorer.artifact
    keep = float(artifact.manifest.get("thresholds", {}).get("keep_in_dist", 0.95))
    prior: dict[str, float] = {}
    if artifact.drift is not None:
        prior = dict(zip(artifact.head.labels, artifact.drift.labels["prior"], strict=False))
    metrics.set_model(scorer.version, scorer.embedder.name, str(scorer.embedder.device), 1.0 - keep, prior)
