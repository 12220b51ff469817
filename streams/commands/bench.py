"""``streamscore bench``: how close the pipeline runs to the encoder, measured in one run.

Figures, all on the same real texts (the shipped CLINC150 test split) and batch size:

- ``raw_encode_per_s``: sentence-transformers ``encode`` alone (torch, fp32), the limit the issue
  names: the best of the passes in ``raw_runs_per_s``, taken around the end-to-end runs;
- ``worker_encode_per_s``: our embedder alone, as the worker runs it (micro-batches on
  ``encoder_threads`` threads at once, torch): the limit of this pipeline's own encoder;
- ``encode_ms_per_text_by_batch``: one scorer thread alone, milliseconds per text in
  micro-batches of 1, 8 and 64 (256 texts each): what small batches at light load cost;
- ``e2e_msgs_per_s``: a real ``streamscore worker`` process (drift agent on), from the first
  message produced to ``texts`` until the last one is read back from ``texts.scored``;
- ``naive_msgs_per_s``: a plain aiokafka consumer that embeds, scores and produces one message
  at a time, the way per-request services score: sentence-transformers ``encode`` of the one
  text (torch fp32, its default threads), then the serving model's head and OOD score (the best
  of its runs, one per turn);
- ``latency_ms``: end-to-end latency percentiles (produce → scored record read back) while
  texts arrive at 50% and 90% of the median e2e run (``full_rate_per_s``), each window through
  a fresh worker on fresh topics; 50% in ``latency_windows`` windows, their messages pooled
  (each window's own percentiles beside them), 90% in one; each window with ``cpu_cores``, the
  cores the worker, the bench's producer and reader, the embedded broker (``children``) and the
  whole machine used meanwhile (streams/commands/cpu_use.py), so a slow window shows where the CPU went,
  with the worker's ``texts`` (the window's messages, as the worker counted them), ``batches``
  and ``texts_per_batch`` (small batches cost more per text), and its encoder's ``forwards``
  and ``forwards_split`` (models/encode_pool.py);
- ``worker_rss_mb``: the worker's peak resident memory (``VmHWM``), the higher of the two;
- ``scale_out``: one worker held to one core, then two workers in one consumer group held
  to a core each, on the same topics: the group's end-to-end rate over one worker's, and the
  share of the messages each scored;
- ``worker_encode_per_s_by_backend``: ``worker_encode_per_s`` for each backend measured;
- ``encoder_free``: the worker end to end with every text already in its embedding cache, so
  the encoder costs nothing and Kafka, Faust, JSON, head, OOD, drift and producing are all that
  is left: the most any backend could reach end to end on this machine;
- ``backlog`` (with ``--exactly-once``; ``--backlog`` runs it alone): ``messages`` already
  waiting in ``--backlog-partitions`` partitions, drained by a fresh worker of each guarantee,
  then a second worker joins (streams/commands/bench_backlog.py).

The end-to-end runs are taken in turns (:func:`paired_e2e`): in each turn the first backend's
worker runs between two passes of the raw encoder, then every other backend's worker runs, then
the naive consumer.
``ratios`` compare measurements of one turn, seconds apart, and give the median over the turns:
this machine's speed drifts by 15-20% over minutes, more than the targets' margins, and only
neighbouring measurements cancel that drift.

Each figure says how many messages and repetitions it rests on. Ratios between figures of one
run are what to compare across machines; absolute rates depend on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamscore.streams.commands import progress
from streamscore.streams.commands.base import Command, common, count, settings_of, show
from streamscore.streams.commands.bench_backlog import GUARANTEES, backlog_runs
from streamscore.streams.commands.bench_worker import (
    BENCH_DATA,
    WorkerProcess,
    bench_texts,
    e2e_rates,
    e2e_run,
    partitions_held,
    produce,
    ready_worker,
    settled_counts,
    start_worker,
)
from streamscore.streams.commands.cpu_use import CpuMeter
from streamscore.streams.kafka.broker import bootstrap_or_embedded
from streamscore.streams.kafka.topics import ensure_topics
from streamscore.streams.settings import Settings
from streamscore.streams.worker.serving import batches_in_flight


@dataclass(frozen=True)
class BenchOptions:
    messages: int = 4_000  # per e2e repetition
    repeats: int = 3  # turns of end-to-end runs (docs/performance.md)
    naive_messages: int = 800
    latency_seconds: float = 20.0  # per load level and window
    latency_windows: int = 3  # windows at 50% load, each through a new worker
    backends: tuple[str, ...] = ()  # empty: the settings' backend
    scale_out: bool = True  # also measure one worker on one core against two on a core each
    exactly_once: bool = False  # also an exactly-once worker in every turn (needs transactions)
    backlog_only: bool = False  # only the backlog case (streams/commands/bench_backlog.py)
    backlog_partitions: tuple[int, ...] = (4,)  # its input partition counts
    say: Any = None  # progress lines (stderr); None: quiet


@dataclass
class RawEncoder:
    """sentence-transformers' own ``encode``, torch fp32: the physical limit of the pipeline,
    loaded once so that it can be measured again next to every end-to-end run."""

    model: Any
    batch_size: int
    device: str

    @classmethod
    def load(cls, batch_size: int, device: str) -> RawEncoder:
        from streamscore.models.embedder import Embedder

        emb = Embedder.load(device=device, batch_size=batch_size)
        emb.model.encode(bench_texts(batch_size * 2), batch_size=batch_size)  # warm up
        return cls(emb.model, batch_size, emb.device)

    def rate(self, texts: list[str]) -> float:
        """Texts per second of one ``encode`` of ``texts``."""
        start = time.perf_counter()
        self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True)
        return len(texts) / (time.perf_counter() - start)


def worker_embedder(settings: Settings) -> Any:
    """The embedder as the worker loads it (no cache: the bench measures encoding)."""
    from streamscore.streams.worker.run import load_embedder

    return load_embedder(settings, cached=False)


def worker_encode_rate(texts: list[str], emb: Any, batch_size: int) -> dict[str, Any]:
    """``emb`` alone as the worker runs it: micro-batches of ``batch_size``, as many at once as
    the worker has in flight, their forwards on ``emb``'s encode pool. What the worker would
    reach if Kafka, Faust and the rest cost nothing."""
    from concurrent.futures import ThreadPoolExecutor

    in_flight = batches_in_flight(emb.encoder_threads)
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    with ThreadPoolExecutor(in_flight, initializer=emb.setup_thread) as pool:
        list(pool.map(emb.encode, batches[: in_flight * 2]))  # warm up
        start = time.perf_counter()
        list(pool.map(emb.encode, batches))
        elapsed = time.perf_counter() - start
    return {"per_s": len(texts) / elapsed, "messages": len(texts), "threads": emb.encoder_threads}


def encode_cost_by_batch(texts: list[str], emb: Any, sizes: tuple[int, ...] = (1, 8, 64)) -> dict[str, float]:
    """Milliseconds per text when one encoder thread of ``emb`` embeds micro-batches of each
    size, alone: why a lightly loaded worker, whose batches are small, pays more per text than
    a busy one."""
    from concurrent.futures import ThreadPoolExecutor

    emb = dataclasses.replace(emb, encoder_threads=1)  # the same model, its forwards in this thread

    def cost(size: int) -> float:
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        emb.encode(batches[0])  # warm up
        start = time.perf_counter()
        for batch in batches:
            emb.encode(batch)
        return round(1000 * (time.perf_counter() - start) / len(texts), 2)

    with ThreadPoolExecutor(1, initializer=emb.setup_thread) as pool:
        return {str(size): pool.submit(cost, size).result() for size in sizes}


# --- end to end, next to the raw encoder ------------------------------------------------------------


def paired_e2e(
    settings: Settings,
    bootstrap: str,
    backends: list[str],
    texts: list[str],
    turns: int,
    raw: RawEncoder,
    naive: Callable[[int], float],
    log_dir: Path,
    say: Any,
    extra: dict[str, Settings] | None = None,
) -> dict[str, Any]:
    """One worker per backend (embedding cache off: the texts repeat), then ``turns`` turns: a
    raw-encoder pass, the first backend's run, a raw-encoder pass, every other backend's run,
    the run of every ``extra`` worker (name → its settings: ``exactly_once``) and
    ``naive(turn)``, the naive consumer's rate.

    While the raw encoder and the naive consumer run, the workers are paused, so their idling
    (polling the broker, 0.05 core for two) takes nothing from them. Returns the runs and their
    per-turn ratios (:func:`turn_ratios`)."""
    workers: dict[str, WorkerProcess] = {}
    raw_runs: list[float] = []
    naive_runs: list[float] = []
    extra = extra or {}
    runs: dict[str, list[float]] = {b: [] for b in [*backends, *extra]}

    def alone(measure: Callable[..., float], *args: Any) -> float:
        with contextlib.ExitStack() as stack:
            for w in workers.values():
                stack.enter_context(w.paused())
            return float(measure(*args))

    try:
        for b in backends:
            workers[b] = ready_worker(
                settings.replace(backend=b, embed_cache_size=0),
                bootstrap,
                uuid.uuid4().hex[:8],
                log_dir,
                f"-{b}",
            )
        for name, variant in extra.items():
            workers[name] = ready_worker(
                variant.replace(embed_cache_size=0), bootstrap, uuid.uuid4().hex[:8], log_dir, f"-{name}"
            )
        for turn in range(turns):
            for i, b in enumerate(backends):
                if i == 0:
                    raw_runs.append(alone(raw.rate, texts))
                runs[b] += e2e_rates(bootstrap, workers[b], texts, 1, f"e2e{turn}")
                if i == 0:
                    raw_runs.append(alone(raw.rate, texts))
            for name in extra:
                runs[name] += e2e_rates(bootstrap, workers[name], texts, 1, f"e2e{turn}")
            naive_runs.append(alone(naive, turn))
            say(
                f"turn {turn + 1}/{turns}: raw {raw_runs[-2]:.0f}, {backends[0]} {runs[backends[0]][-1]:.0f}, "
                f"raw {raw_runs[-1]:.0f}"
                + "".join(f", {b} {runs[b][-1]:.0f}" for b in [*backends[1:], *extra])
                + f", naive {naive_runs[-1]:.0f} per s"
            )
        peak_rss = workers[backends[0]].peak_rss_mb() or 0.0
    finally:
        for w in workers.values():
            w.stop()
    return {
        "raw_runs": raw_runs,
        "naive_runs": naive_runs,
        "runs": runs,
        "by_turn": turn_ratios(raw_runs, naive_runs, runs, backends[0]),
        "peak_rss_mb": peak_rss,
    }


def turn_ratios(
    raw_runs: list[float], naive_runs: list[float], runs: dict[str, list[float]], first: str
) -> dict[str, list[float]]:
    """Per turn of :func:`paired_e2e`: ``first``'s run over the mean of the two raw passes
    around it and over the naive run, every other backend's run over torch's, and an
    ``exactly_once`` worker's run over ``first``'s (at-least-once).

    >>> turn_ratios([400, 440, 500, 500], [90, 100], {"torch": [378, 450], "onnx-int8": [756, 990]}, "torch")
    {'e2e_over_raw': [0.9, 0.9], 'e2e_over_naive': [4.2, 4.5], 'onnx-int8_over_torch_e2e': [2.0, 2.2]}
    >>> turn_ratios([400, 440, 500, 500], [90, 100], {"torch": [378, 450], "exactly_once": [340.2, 450]}, "torch")
    {'e2e_over_raw': [0.9, 0.9], 'e2e_over_naive': [4.2, 4.5], 'exactly_once_over_at_least_once': [0.9, 1.0]}
    """
    turns = len(runs[first])
    around = [(raw_runs[2 * t] + raw_runs[2 * t + 1]) / 2 for t in range(turns)]
    ratios = {
        "e2e_over_raw": [runs[first][t] / around[t] for t in range(turns)],
        "e2e_over_naive": [runs[first][t] / naive_runs[t] for t in range(turns)],
    }
    if "torch" in runs:
        for b, rates in runs.items():
            if b not in ("torch", "exactly_once"):
                ratios[f"{b}_over_torch_e2e"] = [rates[t] / runs["torch"][t] for t in range(turns)]
    if "exactly_once" in runs:
        eos = runs["exactly_once"]
        ratios["exactly_once_over_at_least_once"] = [eos[t] / runs[first][t] for t in range(turns)]
    return ratios


def latency_at_loads(
    settings: Settings,
    bootstrap: str,
    full_rate: float,
    seconds: float,
    windows: int,
    log_dir: Path,
    say: Any,
) -> tuple[dict[str, Any], float]:
    """Latency percentiles while texts arrive at 50% of ``full_rate`` for ``seconds``, in
    ``windows`` windows, then at 90% once, and the workers' peak memory.

    Each window runs through a new worker on new topics: the embedded broker spends more CPU
    per request as its in-memory topics grow (0.20 → 0.41 cores at a steady 200 msgs/s over
    8,000 messages), taking it from the worker; Apache Kafka's indexed logs do not. The 50%
    figure pools the windows' messages, so a slow minute of the machine counts as it came;
    each window's own percentiles are beside it. The 90% window follows the first 50% one."""

    def at(worker: WorkerProcess, share: float, run: str) -> tuple[list[float], dict[str, Any]]:
        """Each message's latency while texts arrive at ``share`` of ``full_rate`` through
        ``worker``, their percentiles, the cores each party used meanwhile and the worker's
        micro-batches (from its ``/metrics``)."""
        rate = share * full_rate
        n = max(int(rate * seconds), 50)
        before = _work_done(worker)
        meter = CpuMeter.start({"worker": worker.proc.pid, "bench": os.getpid()})
        _, latency = asyncio.run(e2e_run(bootstrap, worker, bench_texts(n), run, rate))
        cores = meter.cores()
        values = list(latency.values())
        done = {k: v - before[k] for k, v in _work_done(worker).items()}
        percentiles: dict[str, Any] = {
            **_percentiles(values),
            "cpu_cores": cores,
            "texts": int(done["texts"]),
            "batches": int(done["batches"]),
            "texts_per_batch": round(done["texts"] / max(done["batches"], 1), 1),
            "forwards": int(done["forwards"]),
            "forwards_split": int(done["split"]),
        }
        say(f"[{settings.backend}] latency at {share:.0%} load ({rate:.0f}/s), {run}: {percentiles}")
        return values, percentiles

    pooled: list[float] = []
    per_window: list[dict[str, Any]] = []
    load_90: dict[str, Any] = {}
    peak_rss = 0.0
    for window in range(windows):
        worker = ready_worker(
            settings.replace(embed_cache_size=0), bootstrap, uuid.uuid4().hex[:8], log_dir, "-lat"
        )
        try:
            half, percentiles = at(worker, 0.5, f"load_50w{window}")
            pooled += half
            per_window.append(percentiles)
            if window == 0:
                load_90 = {"rate_per_s": round(0.9 * full_rate, 1), **at(worker, 0.9, "load_90")[1]}
            peak_rss = max(peak_rss, worker.peak_rss_mb() or 0.0)
        finally:
            worker.stop()
    load_50 = {
        "rate_per_s": round(0.5 * full_rate, 1),
        **_percentiles(pooled),
        "windows": per_window,
        "p99_median_of_windows": round(statistics.median(w["p99"] for w in per_window), 1),
        "seconds_per_window": seconds,
    }
    return {"load_50": load_50, "load_90": load_90}, peak_rss


# --- scaling out ------------------------------------------------------------------------------------


def _wait_for_split(bootstrap: str, workers: list[WorkerProcess], texts: list[str], timeout_s: float) -> None:
    """Until every worker holds input partitions and none holds another's: the group has
    rebalanced. Small runs go through meanwhile, so a partition's end is known to its holder."""
    deadline = time.monotonic() + timeout_s
    while True:
        asyncio.run(e2e_run(bootstrap, workers[0], texts, f"split{uuid.uuid4().hex[:6]}", None))
        split, held = partitions_held(workers)
        if split:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not split the partitions in {timeout_s:.0f} s: {held}")


def scale_out_rates(
    settings: Settings, bootstrap: str, texts: list[str], repeats: int, log_dir: Path, say: Any
) -> dict[str, Any]:
    """One worker held to one core, then a second in the same consumer group on another core:
    the rate of the two together over the rate of one. The broker and the bench are not held
    and take their share of both cores (on a 2-core machine they take it from the workers)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return {"skipped": f"needs 2 CPU cores, this process may use {len(cores)}"}
    settings = settings.replace(embed_cache_size=0)
    tag = uuid.uuid4().hex[:8]
    workers = [ready_worker(settings, bootstrap, tag, log_dir, name="-a", cpus={cores[0]})]
    try:
        one = e2e_rates(bootstrap, workers[0], texts, repeats, "one")
        say(f"scale-out: one worker on core {cores[0]}: {max(one):.0f} messages/s")
        workers.append(start_worker(settings, bootstrap, tag, log_dir, name="-b", cpus={cores[1]}))
        _wait_for_split(bootstrap, workers, texts[:100], timeout_s=120)
        before = settled_counts(workers)
        two = e2e_rates(bootstrap, workers[0], texts, repeats, "two")
        done = [n - b for n, b in zip(settled_counts(workers), before, strict=True)]
        say(f"scale-out: two workers on cores {cores[:2]}: {max(two):.0f} messages/s, scored {done}")
    finally:
        for w in workers:
            w.stop()
    return {
        "one_worker_per_s": round(max(one), 1),
        "two_workers_per_s": round(max(two), 1),
        "speedup": round(max(two) / max(one), 2),
        "runs_per_s": {"one": [round(x, 1) for x in one], "two": [round(x, 1) for x in two]},
        "scored_by_worker": [int(d) for d in done],  # over the runs with two workers
        "shares": [round(d / max(sum(done), 1), 3) for d in done],
        "cores_per_worker": 1,
        "messages": len(texts),
        "repeats": repeats,
    }


# --- the pipeline without its encoder --------------------------------------------------------------


def encoder_free_rate(
    settings: Settings, bootstrap: str, texts: list[str], repeats: int, log_dir: Path, say: Any
) -> dict[str, Any]:
    """The worker end to end when its encoder costs nothing: one run fills its embedding cache
    with ``texts``, the runs after it find every text there. What is left is the rest of the
    pipeline (Kafka, Faust, JSON, head, OOD, drift, producing) and the broker and the bench on
    the same cores: a ceiling that no faster encoder can lift."""
    settings = settings.replace(embed_cache_size=max(20_000, 2 * len(texts)))
    worker = start_worker(settings, bootstrap, uuid.uuid4().hex[:8], log_dir, name="-cached")
    lookups = "streamscore_embedding_cache_lookups_total"
    try:
        e2e_rates(bootstrap, worker, texts, 1, "fill")
        hits, misses = (
            worker.metric(lookups, tier="local", result="hit"),
            worker.metric(lookups, result="miss"),
        )
        rates = e2e_rates(bootstrap, worker, texts, repeats, "cached")
        settled_counts([worker])
        hits = worker.metric(lookups, tier="local", result="hit") - hits
        misses = worker.metric(lookups, result="miss") - misses
    finally:
        worker.stop()
    say(f"encoder-free (every text cached), runs: {', '.join(f'{r:.0f}' for r in rates)} messages/s")
    return {
        "per_s": round(max(rates), 1),
        "runs_per_s": [round(x, 1) for x in rates],
        # Lookups count distinct texts per batch, so a batch with a repeated text counts it once.
        "cache_hit_ratio": round(hits / max(hits + misses, 1), 4),
        "messages": len(texts),
        "repeats": repeats,
    }


# --- the naive reference ---------------------------------------------------------------------------


async def naive_rate(bootstrap: str, raw: RawEncoder, artifact: Any, texts: list[str], tag: str) -> float:
    """Messages per second of one message at a time: read it, embed it alone with the raw
    encoder's sentence-transformers model, score it with ``artifact``'s head and OOD scorer,
    produce it and wait for the ack."""
    from streamscore.models.scoring import score_embeddings
    from streamscore.schemas.messages import InputText, Origin, scored_record

    topic_in, topic_out = f"bench-naive-in-{tag}", f"bench-naive-out-{tag}"
    # Made first: on Apache Kafka an auto-created topic logs "not found" errors until it exists.
    await ensure_topics(bootstrap, {topic_in: 1, topic_out: 1})
    await produce(bootstrap, topic_in, texts, "naive", None)
    consumer = AIOKafkaConsumer(
        topic_in,
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=20,
        group_id=f"bench-naive-{tag}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    try:
        done = 0
        start = None
        while done < len(texts):
            rec = await consumer.getone()
            start = start or time.perf_counter()
            msg = json.loads(rec.value)
            vector = raw.model.encode([msg["text"]], normalize_embeddings=True, convert_to_numpy=True)
            scores = score_embeddings(artifact, vector)
            out = scored_record(
                InputText(msg["id"], msg["text"], Origin(rec.topic, rec.partition, rec.offset)),
                label=scores.labels[0],
                confidence=float(scores.confidence[0]),
                top_k=[],
                ood_score=float(scores.ood_scores[0]),
                ood_threshold=scores.ood_threshold,
                model_version=artifact.version,
                scored_at="",
                latency_ms=0.0,
            )
            await producer.send_and_wait(topic_out, json.dumps(out).encode(), key=rec.key)
            done += 1
        return len(texts) / (time.perf_counter() - (start or time.perf_counter()))
    finally:
        await consumer.stop()
        await producer.stop()


# --- the whole run -----------------------------------------------------------------------------------


def _work_done(worker: WorkerProcess) -> dict[str, float]:
    """Messages and micro-batches the worker has scored so far, and the encoder's forward passes
    (all, and those that split a batch between threads), from one scrape of its ``/metrics``
    once its scored count stops moving: the records of its last batch (of the warm-up, of the
    previous window) can be read back before it counts them, and would count in the next window."""
    settled_counts([worker])
    now = worker.samples()
    forwards = "streamscore_encoder_forwards_total"
    return {
        "texts": worker.metric("streamscore_batch_size_sum", now),
        "batches": worker.metric("streamscore_batch_size_count", now),
        "forwards": worker.metric(forwards, now, kind="all"),
        "split": worker.metric(forwards, now, kind="split"),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(qs[49], 1), "p95": round(qs[94], 1), "p99": round(qs[98], 1), "n": len(values)}


def run_bench(settings: Settings, opts: BenchOptions) -> dict[str, Any]:
    """Every figure of the module docstring, for ``opts.backends`` (the first gets latency and memory)."""
    from streamscore.streams.commands.demo import ensure_model

    say = opts.say or (lambda m: None)
    backends = list(opts.backends or (settings.backend,))
    version = ensure_model(settings)
    guarantees = GUARANTEES if opts.exactly_once else ("at_least_once",)
    if opts.backlog_only:
        return run_backlog(settings, opts, guarantees, version, say)
    texts = bench_texts(opts.messages)
    raw = RawEncoder.load(settings.embed_batch_size, settings.device)
    emb = worker_embedder(settings.replace(backend="torch"))
    enc = worker_encode_rate(texts, emb, settings.batch_size)
    say(f"our embedder as the worker runs it ({enc['threads']} threads): {enc['per_s']:.0f} texts/s")
    by_batch = encode_cost_by_batch(texts[:256], emb)
    del emb  # freed before the workers under test start
    say(f"one scorer thread, ms per text by micro-batch size: {by_batch}")
    encoders = {"torch": round(enc["per_s"], 1)}
    for backend in backends:
        if backend not in encoders:
            emb = worker_embedder(settings.replace(backend=backend))
            encoders[backend] = round(worker_encode_rate(texts, emb, settings.batch_size)["per_s"], 1)
            del emb
            say(f"[{backend}] our embedder as the worker runs it: {encoders[backend]:.0f} texts/s")
    with (
        tempfile.TemporaryDirectory() as tmp,
        bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker, log=say) as bootstrap,
    ):
        say(
            f"{opts.repeats} turns of {len(texts)} messages: raw encoder (batch {settings.embed_batch_size}), "
            f"{backends[0]}, raw encoder, " + "".join(f"{b}, " for b in backends[1:]) + "naive"
        )
        from streamscore.models.registry import Registry

        artifact = Registry(settings.registry).load(settings.model)
        naive_texts, tag = texts[: opts.naive_messages], uuid.uuid4().hex[:8]

        def naive(turn: int, encoder: RawEncoder = raw) -> float:
            return asyncio.run(naive_rate(bootstrap, encoder, artifact, naive_texts, f"{tag}-{turn}"))

        extra = {}
        if opts.exactly_once:
            extra["exactly_once"] = settings.replace(backend=backends[0], processing_guarantee="exactly_once")
        paired = paired_e2e(
            settings, bootstrap, backends, texts, opts.repeats, raw, naive, Path(tmp), say, extra
        )
        device = raw.device
        del raw, naive  # freed before the latency worker starts
        e2e = max(paired["runs"][backends[0]])
        # The loads are shares of the median run, not the best: one fast turn would otherwise
        # set "50%" at 60% of what the worker manages when the machine is at its usual speed.
        full_rate = statistics.median(paired["runs"][backends[0]])
        first = settings.replace(backend=backends[0])  # latency, encoder-free and scale-out run it
        latency, latency_rss = latency_at_loads(
            first, bootstrap, full_rate, opts.latency_seconds, opts.latency_windows, Path(tmp), say
        )
        latency["full_rate_per_s"] = round(full_rate, 1)
        free = encoder_free_rate(first, bootstrap, texts, opts.repeats, Path(tmp), say)
        scale = (
            scale_out_rates(first, bootstrap, texts, opts.repeats, Path(tmp), say) if opts.scale_out else None
        )
        backlog = (
            backlog_runs(first, bootstrap, opts.backlog_partitions, len(texts), guarantees, Path(tmp), say)
            if opts.exactly_once
            else None
        )
    runs = {b: [round(x, 1) for x in r] for b, r in paired["runs"].items()}
    exactly_once = runs.pop("exactly_once", None)
    result: dict[str, Any] = {
        "messages": len(texts),
        "repeats": opts.repeats,
        "batch_size": settings.batch_size,
        "embed_batch_size": settings.embed_batch_size,
        "raw_encode_per_s": round(max(paired["raw_runs"]), 1),
        "raw_runs_per_s": [round(x, 1) for x in paired["raw_runs"]],
        "worker_encode_per_s": encoders["torch"],
        "encoder_threads": enc["threads"],
        "encode_ms_per_text_by_batch": by_batch,
        "device": device,
        "backend": backends[0],
        "model_version": version,
        "texts": f"CLINC150 test split ({BENCH_DATA.name}), 5,500 queries, cycled",
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "worker_encode_per_s_by_backend": encoders,
        "e2e_msgs_per_s": round(e2e, 1),
        "e2e_msgs_per_s_by_backend": {b: max(r) for b, r in runs.items()},
        "e2e_runs_per_s_by_backend": runs,
        "latency_ms": latency,
        "worker_rss_mb": round(max(paired["peak_rss_mb"], latency_rss), 1),
        "encoder_free": free,
        "naive_msgs_per_s": round(max(paired["naive_runs"]), 1),
        "naive_runs_per_s": [round(x, 1) for x in paired["naive_runs"]],
        "naive_messages": len(naive_texts),
    }
    if scale is not None:
        result["scale_out"] = scale
    if backlog is not None:
        result["backlog"] = backlog
    if exactly_once is not None:
        result["exactly_once_runs_per_s"] = exactly_once
        result["processing_guarantee"] = (
            f"{backends[0]} runs: at_least_once; exactly_once_runs_per_s: exactly_once"
        )
    # Per turn, neighbouring measurements; the median over the turns (module docstring).
    result["ratios_by_turn"] = {k: [round(x, 3) for x in v] for k, v in paired["by_turn"].items()}
    result["ratios"] = {k: round(statistics.median(v), 3) for k, v in paired["by_turn"].items()}
    result["ratios"]["e2e_over_worker_encode"] = round(e2e / encoders["torch"], 3)
    if "torch" in runs:
        result["ratios"]["encoder_free_over_torch_e2e"] = round(
            free["per_s"] / result["e2e_msgs_per_s_by_backend"]["torch"], 3
        )
        for b in backends:
            if b != "torch":
                result["ratios"][f"{b}_over_torch_encoder"] = round(encoders[b] / encoders["torch"], 3)
    return result


def run_backlog(
    settings: Settings, opts: BenchOptions, guarantees: tuple[str, ...], version: str, say: Any
) -> dict[str, Any]:
    """``bench --backlog``: the backlog case alone (streams/commands/bench_backlog.py)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker, log=say) as bootstrap,
    ):
        backlog = backlog_runs(
            settings.replace(embed_cache_size=0),
            bootstrap,
            opts.backlog_partitions,
            opts.messages,
            guarantees,
            Path(tmp),
            say,
        )
    return {
        "backlog": backlog,
        "batch_size": settings.batch_size,
        "commit_interval_s": settings.commit_interval_s,
        "model_version": version,
        "texts": f"CLINC150 test split ({BENCH_DATA.name}), 5,500 queries, cycled",
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


# ------------------------------------------------------------------ the command


def partition_counts(value: str) -> tuple[int, ...]:
    """An argparse type: comma-separated partition counts, each at least 1.

    >>> partition_counts("4,100")
    (4, 100)
    >>> partition_counts("4,0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '4,0' is not a comma-separated list of partition counts (each at least 1)
    """
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a comma-separated list of partition counts (each at least 1)"
        )
    return counts


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True, as_json=True)
    sp.add_argument("--messages", type=count, default=4_000, help="per end-to-end run")
    sp.add_argument(
        "--repeats",
        type=count,
        default=3,
        help="turns of end-to-end runs, each next to raw-encoder passes (ratios: median over turns)",
    )
    sp.add_argument("--naive-messages", dest="naive_messages", type=count, default=800)
    sp.add_argument(
        "--latency-seconds",
        dest="latency_seconds",
        type=float,
        default=20.0,
        help="per load level and window",
    )
    sp.add_argument(
        "--latency-windows",
        dest="latency_windows",
        type=count,
        default=3,
        help="windows at 50%% load, each through a new worker; the percentiles pool them",
    )
    sp.add_argument(
        "--backends", default=None, help="comma-separated, e.g. torch,onnx,onnx-int8 (first: latency, memory)"
    )
    sp.add_argument(
        "--no-scale-out",
        dest="no_scale_out",
        action="store_true",
        help="skip one worker on one core vs. two workers on a core each",
    )
    sp.add_argument(
        "--exactly-once",
        dest="exactly_once",
        action="store_true",
        help="also run an exactly-once worker in every turn (a broker with transactions: Apache Kafka)",
    )
    sp.add_argument(
        "--backlog",
        action="store_true",
        help="only the backlog case: --messages waiting in each --backlog-partitions count, a fresh "
        "worker drains them (with --exactly-once: each guarantee)",
    )
    sp.add_argument(
        "--backlog-partitions",
        dest="backlog_partitions",
        type=partition_counts,
        default=(4,),
        help="comma-separated input partition counts of the backlog case, e.g. 4,100",
    )
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    sp.add_argument("--device", default=None)


def run(args: argparse.Namespace) -> int:
    opts = BenchOptions(
        messages=args.messages,
        repeats=args.repeats,
        naive_messages=args.naive_messages,
        latency_seconds=args.latency_seconds,
        latency_windows=args.latency_windows,
        backends=tuple(b for b in (args.backends or "").split(",") if b),
        scale_out=not args.no_scale_out,
        exactly_once=args.exactly_once,
        backlog_only=args.backlog,
        backlog_partitions=args.backlog_partitions,
        say=progress.say("bench"),
    )
    result = run_bench(settings_of(args), opts)
    show(args, result, json.dumps(result, indent=2))
    return 0


COMMAND = Command(
    name="bench",
    help="raw encoder vs. end-to-end worker vs. naive consumer, latency and memory (docs/performance.md)",
    options=options,
    run=run,
    examples=(
        "streamscore bench --bootstrap-servers localhost:9092 --json",
        "streamscore bench --bootstrap-servers localhost:9092 --backlog --exactly-once "
        "--backlog-partitions 4,100 --messages 6000 --json",
    ),
)
