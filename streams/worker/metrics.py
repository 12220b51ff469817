"""What a worker tells Prometheus, and the small HTTP server for ``/metrics`` and ``/healthz``.

Conventions: base units (seconds), ``_total`` counters, labels only with few values (DLQ reason,
detector, partition, the model's own labels). Each worker owns its :class:`WorkerMetrics` in a
registry of its own; several workers on one host each take a port of their own (the configured
one, or the next free one above it, printed at start). docs/observability.md lists every metric.

>>> m = WorkerMetrics.create()
>>> m.observe_batch(BatchStats(n_in=2, labels=["a", "b"], is_ood=[False, True],
...                            event_ms=[None, None], dead_reasons={}), 0.01, now_ms=0)
>>> m.value("streamscore_ood_ratio")
0.5
"""

from __future__ import annotations

import gc
import json
import logging
import platform
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from streamscore.schemas.drift import DriftAlert
from streamscore.schemas.messages import DLQ_REASONS

log = logging.getLogger("streamscore.metrics")

ROLLING = 500  # messages behind the rolling OOD rate and label-mix distance
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class BatchStats:
    """What one micro-batch did, as the metrics need it (no Kafka, no model objects)."""

    n_in: int
    labels: list[str]  # predicted label per scored message
    is_ood: list[bool]
    event_ms: list[float | None]  # event time per scored message
    dead_reasons: Mapping[str, int]
    embed_s: float = 0.0


@dataclass
class WorkerMetrics:
    """Every metric of one worker, plus the rolling windows behind the derived gauges."""

    registry: CollectorRegistry
    m: dict[str, Any]
    recent_ood: deque[bool] = field(default_factory=lambda: deque(maxlen=ROLLING))
    recent_labels: deque[str] = field(default_factory=lambda: deque(maxlen=ROLLING))
    prior: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)  # per detector: see observe_drift
    open_shown: set[tuple[str, str]] = field(default_factory=set)  # (detector, episode) series shown
    health: dict[str, Any] = field(default_factory=lambda: {"status": "starting"})
    cache_counts: Callable[[], Mapping[tuple[str, str], int]] = lambda: {}
    encoder_pool: Callable[[], Any] = lambda: None  # the serving embedder's EncodePool, if any

    @classmethod
    def create(cls) -> WorkerMetrics:
        r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        p = "streamscore_"
        m: dict[str, Any] = {
            "in": Counter(p + "messages_in", "Messages read from the input topic", registry=r),
            "scored": Counter(p + "messages_scored", "Messages scored and produced", registry=r),
            "dead": Counter(p + "messages_dead_lettered", "Messages sent to the DLQ", ["reason"], registry=r),
            "ood": Counter(p + "ood", "Scored messages flagged out-of-distribution", registry=r),
            "ood_rate": Gauge(
                p + "ood_ratio", f"OOD share of the last {ROLLING} scored messages", registry=r
            ),
            "ood_ref": Gauge(
                p + "ood_reference_ratio",
                "OOD share expected on training-distribution texts (1 - keep_in_dist)",
                registry=r,
            ),
            "labels": Counter(
                p + "predicted_labels", "Scored messages by predicted label", ["label"], registry=r
            ),
            "prior": Gauge(
                p + "label_prior_ratio",
                "Share of each label in the training reference",
                ["label"],
                registry=r,
            ),
            "mix": Gauge(
                p + "label_mix_distance_ratio",
                f"Total variation distance between the last {ROLLING} predicted labels and the prior",
                registry=r,
            ),
            "e2e": Histogram(
                p + "end_to_end_latency_seconds",
                "Event time to output confirmed by the broker",
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            "proc": Histogram(
                p + "processing_latency_seconds",
                "Batch taken from the consumer to its outputs confirmed, per message",
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            "batch": Histogram(
                p + "batch_size", "Messages per micro-batch", buckets=BATCH_BUCKETS, registry=r
            ),
            "embed": Histogram(
                p + "embedding_seconds", "Embedding time per micro-batch", buckets=LATENCY_BUCKETS, registry=r
            ),
            "gc": Histogram(
                p + "gc_pause_seconds",
                "Collections of Python's cyclic garbage collector; each stops every thread of the worker",
                ["generation"],
                buckets=GC_BUCKETS,
                registry=r,
            ),
            "lag": Gauge(
                p + "consumer_lag", "Messages behind the partition's end", ["topic", "partition"], registry=r
            ),
            "drift_stat": Gauge(p + "drift_statistic", "Drift detector statistic", ["detector"], registry=r),
            "drift_thr": Gauge(
                p + "drift_threshold", "Drift detector alarm threshold", ["detector"], registry=r
            ),
            "drift_state": Gauge(
                p + "drift_state", "1 while the detector is in a drift episode", ["detector"], registry=r
            ),
            "drift_episode": Gauge(
                p + "drift_episode_open",
                "1 while the episode is open; its series ends when it resolves (Grafana's episode "
                "annotations; the episode id is the one on drift.alerts, drift.episodes and streamscore ui)",
                ["detector", "episode"],
                registry=r,
            ),
            "drift_peak": Gauge(
                p + "drift_peak_ratio",
                "Statistic over threshold: the highest of the open episode (1 or more: it alarmed), "
                "else the current value; a scrape cannot miss an alarm",
                ["detector"],
                registry=r,
            ),
            "drift_alerts": Counter(
                p + "drift_alerts", "Drift alerts sent", ["detector", "status"], registry=r
            ),
            "signals": Counter(p + "drift_signals", "Drift signals read by the drift agent", registry=r),
            "model": Info(p + "model", "The model version in service", registry=r),
            "model_loaded": Gauge(
                p + "model_loaded_timestamp_seconds", "When the serving model was loaded", registry=r
            ),
            "build": Info(p + "build", "streamscore and library versions", registry=r),
            "started": Gauge(p + "worker_start_time_seconds", "When the worker started", registry=r),
            "ready": Gauge(p + "worker_ready", "1 once the worker has partitions and a model", registry=r),
            "broker_up": Gauge(p + "broker_up", "1 while the broker answers the worker's probe", registry=r),
            "scoring_up": Gauge(p + "scoring_up", "1 while the model can score a text", registry=r),
        }
        for reason in DLQ_REASONS:  # zero series up front, so rate() sees the first dead letter
            m["dead"].labels(reason)
        m["build"].info(_build_info())
        m["started"].set(time.time())
        m["scoring_up"].set(1)  # until a probe says otherwise (streams/worker/scoring_guard.py)
        metrics = cls(r, m)
        r.register(_CacheLookups(metrics))  # type: ignore[arg-type]
        r.register(_EncoderForwards(metrics))  # type: ignore[arg-type]
        return metrics

    # --- updates -----------------------------------------------------------------------------

    def set_model(
        self, version: str, embedder: str, device: str, ood_reference: float, prior: Mapping[str, float]
    ) -> None:
        """The serving model changed (or was loaded at start)."""
        self.m["model"].info({"version": version, "embedder": embedder, "device": device})
        self.m["model_loaded"].set(time.time())
        self.m["ood_ref"].set(ood_reference)
        self.m["prior"].clear()  # a new model may have other labels
        for label, share in prior.items():
            self.m["prior"].labels(label).set(share)
            self.m["labels"].labels(label)  # zero series up front, as for DLQ reasons
        self.prior = dict(prior)
        self.recent_labels.clear()
        self.health["model_version"] = version

    def observe_batch(self, stats: BatchStats, processing_s: float, now_ms: float | None = None) -> None:
        """One micro-batch produced and confirmed ``processing_s`` after it was taken."""
        now_ms = time.time() * 1000.0 if now_ms is None else now_ms
        m = self.m
        m["in"].inc(stats.n_in)
        m["batch"].observe(stats.n_in)
        for reason, n in stats.dead_reasons.items():
            m["dead"].labels(reason).inc(n)
        n_scored = len(stats.labels)
        if n_scored:
            m["scored"].inc(n_scored)
            m["ood"].inc(sum(stats.is_ood))
            m["embed"].observe(stats.embed_s)
            for label, n in Tally(stats.labels).items():
                m["labels"].labels(label).inc(n)
            self.recent_ood.extend(stats.is_ood)
            self.recent_labels.extend(stats.labels)
            m["ood_rate"].set(sum(self.recent_ood) / len(self.recent_ood))
            m["mix"].set(label_mix_distance(self.recent_labels, self.prior))
            for t in stats.event_ms:
                if t is not None:
                    m["e2e"].observe(max(now_ms - t, 0.0) / 1000.0)
        for _ in range(stats.n_in):
            m["proc"].observe(processing_s)
        self.health["last_batch_at"] = time.time()

    def set_lag(self, topic: str, lags: Mapping[int, int]) -> None:
        """Lag of the partitions this worker holds now; partitions it lost disappear."""
        self.m["lag"].clear()
        for partition, lag in lags.items():
            self.m["lag"].labels(topic, str(partition)).set(max(lag, 0))
        self.health["partitions"] = sorted(lags)

    def set_ready(self, ready: bool) -> None:
        self.m["ready"].set(1 if ready else 0)
        self.health["ready"] = ready
        self._status()

    def set_broker(self, up: bool, down_since: float | None) -> None:
        """Whether the broker answered the last probe, and since when it has not."""
        self.m["broker_up"].set(1 if up else 0)
        if up:
            self.health["broker"] = "ok"
        else:
            since = down_since or time.time()
            self.health["broker"] = f"unreachable for {time.time() - since:.0f} s"
        self._status()

    def set_scoring(self, failing: str | None) -> None:
        """What the model fails with on every text (streams/worker/scoring_guard.py), or None."""
        self.m["scoring_up"].set(0 if failing else 1)
        self.health["scoring"] = f"failing: {failing}" if failing else "ok"
        self._status()

    def _status(self) -> None:
        # starting → ok; failing while the model cannot score (input held); degraded while the
        # broker does not answer. Both HTTP 503.
        if not self.health.get("ready"):
            self.health["status"] = "starting"
        elif self.health.get("scoring", "ok") != "ok":
            self.health["status"] = "failing"
        elif self.health.get("broker", "ok") != "ok":
            self.health["status"] = "degraded"
        else:
            self.health["status"] = "ok"

    def observe_drift(
        self, detectors: list[Any], open_episodes: Mapping[str, str], alerts: list[DriftAlert], signals: int
    ) -> None:
        """After the drift agent handled ``signals`` signals: detector values, states, the open
        episodes (detector → episode id), alerts."""
        self.m["signals"].inc(signals)
        # A detector resets its statistic when it alarms, so a gauge of the statistic sampled
        # every few seconds rarely shows it above the threshold; the alarm's own ratio is kept
        # while its episode is open.
        alarmed: dict[str, float] = {}
        for a in alerts:
            if a.status == "drift" and a.threshold > 0:
                alarmed[a.detector] = max(alarmed.get(a.detector, 0.0), a.statistic / a.threshold)
        for d in detectors:
            self.m["drift_stat"].labels(d.name).set(float(d.statistic))
            self.m["drift_thr"].labels(d.name).set(float(d.threshold))
            self.m["drift_state"].labels(d.name).set(1 if d.name in open_episodes else 0)
            now = float(d.statistic) / float(d.threshold) if d.threshold > 0 else 0.0
            if d.name in open_episodes:
                now = max(now, alarmed.get(d.name, 0.0), self.peak.get(d.name, 0.0))
            self.peak[d.name] = now
            self.m["drift_peak"].labels(d.name).set(now)
            for status in ("drift", "resolved"):  # present from the start, so increase() sees the first
                self.m["drift_alerts"].labels(d.name, status)
        for a in alerts:
            self.m["drift_alerts"].labels(a.detector, a.status).inc()
        shown = set(open_episodes.items())
        for ended in self.open_shown - shown:
            self.m["drift_episode"].remove(*ended)
        for detector, episode in shown:
            self.m["drift_episode"].labels(detector, episode).set(1)
        self.open_shown = shown

    def watch_gc(self) -> None:
        """Time every garbage collection from now on, by generation (0, 1, 2). A collection holds
        the interpreter lock, so it pauses the event loop and the scorer threads alike."""
        hist = self.m["gc"]
        for generation in ("0", "1", "2"):
            hist.labels(generation)
        started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                hist.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

        gc.callbacks.append(on_gc)

    def watch_cache(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Read ``streamscore_embedding_cache_lookups_total{tier, result}`` from ``counts`` (the
        embedder's own running totals) at each scrape."""
        self.cache_counts = counts

    def watch_encoder(self, pool: Callable[[], Any]) -> None:
        """Read ``streamscore_encoder_forwards_total{kind}`` and ``streamscore_encoder_rows_total``
        from the encode pool that ``pool`` returns (models/encode_pool.py) at each scrape."""
        self.encoder_pool = pool

    # --- reading ---------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's current value (for tests and the demo's summary)."""
        return self.registry.get_sample_value(name, dict(labels or {}))


class _CacheLookups:
    """``streamscore_embedding_cache_lookups_total``, read from the embedder at each scrape: the
    embedder counts its own lookups, and a new model may bring a new embedder."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "streamscore_embedding_cache_lookups",
            "Embedding cache lookups by tier (local LRU, shared Redis) and result",
            labels=["tier", "result"],
        )
        for (tier, result), n in sorted(self.metrics.cache_counts().items()):
            family.add_metric([tier, result], n)
        yield family


class _EncoderForwards:
    """The encode pool's forward passes, read at each scrape: all of them (``kind="all"``), those
    that held rows of more than one batch (``merged``) and those that took part of a batch an
    idle thread would otherwise have waited beside (``split``); and the rows (texts) they held."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        pool = self.metrics.encoder_pool()
        if pool is None:  # a GPU, or one encoder thread: forwards run in the scorer threads
            return
        stats = pool.stats
        forwards = CounterMetricFamily(
            "streamscore_encoder_forwards",
            "Encoder forward passes run by the encode pool: all, merged across batches, split across threads",
            labels=["kind"],
        )
        for kind, n in (("all", stats.forwards), ("merged", stats.merged), ("split", stats.split)):
            forwards.add_metric([kind], n)
        yield forwards
        yield CounterMetricFamily(
            "streamscore_encoder_rows", "Texts embedded by the encode pool's forward passes", value=stats.rows
        )


def label_mix_distance(recent: deque[str] | list[str], prior: Mapping[str, float]) -> float:
    """Total variation distance (0..1) between the labels in ``recent`` and ``prior``.

    >>> label_mix_distance(["a", "a", "b", "b"], {"a": 0.5, "b": 0.5})
    0.0
    >>> label_mix_distance(["a", "a"], {"a": 0.5, "b": 0.5})
    0.5
    """
    if not recent or not prior:
        return 0.0
    counts = Tally(recent)
    n = len(recent)
    keys = set(counts) | set(prior)
    return 0.5 * sum(abs(counts.get(k, 0) / n - prior.get(k, 0.0)) for k in keys)


def _build_info() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    info = {"python": platform.python_version()}
    for dist in ("streamscore", "faust-streaming", "aiokafka", "torch", "sentence-transformers", "river"):
        try:
            info[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            info[dist.replace("-", "_")] = "unknown"
    info["version"] = info.pop("streamscore")
    return info


# --- the HTTP endpoint ------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """``GET /metrics`` (Prometheus text format) and ``GET /healthz`` (JSON; 503 until ready)."""

    metrics: WorkerMetrics
    host: str = "127.0.0.1"
    port: int = 9464
    tries: int = 64  # ports tried upward from ``port`` when it is taken
    server: ThreadingHTTPServer | None = None

    def start(self) -> MetricsServer:
        handler = _handler(self.metrics.exposition, lambda: dict(self.metrics.health))
        last_error: OSError | None = None
        for port in range(self.port, self.port + max(self.tries, 1)):
            try:
                self.server = ThreadingHTTPServer((self.host, port), handler)
                break
            except OSError as exc:
                last_error = exc
        if self.server is None:
            raise OSError(
                f"no free port for /metrics on {self.host} in {self.port}..{self.port + self.tries - 1} "
                f"({last_error}); set --metrics-port to a free one"
            )
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _handler(exposition: Callable[[], bytes], health: Callable[[], dict[str, Any]]) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, exposition())
            elif path in ("/healthz", "/health"):
                state = health()
                code = 200 if state.get("status") == "ok" else 503
                self._send(code, "application/json", json.dumps(state).encode())
            else:
                self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: keep quiet
            pass

    return Handler
