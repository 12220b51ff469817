"""``streamscore demo``: the whole product in one command on the embedded defaults.

It trains the default model from the shipped CLINC150 copy when the registry has none,
starts a broker and a worker, writes a demo stream to a file (in-distribution texts, a drift
phase with out-of-scope texts mixed in, in-distribution again, three malformed lines) and
replays it at a steady rate with ``streamscore replay``'s code, printing scored records, the
OOD rate and drift alerts as they arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from streamscore.models.drift.explain import summary
from streamscore.models.ood import KEEP_IN_DIST
from streamscore.models.registry import Registry
from streamscore.streams.commands.base import Command, common, settings_of
from streamscore.streams.commands.replay import ReplayOptions, replay_file
from streamscore.streams.kafka.broker import bootstrap_or_embedded, stop_process
from streamscore.streams.kafka.client import format_scored, read_topic
from streamscore.streams.kafka.topics import ensure_topics, topic_configs, topic_plan
from streamscore.streams.settings import Settings
from streamscore.training.data import SHIPPED_CLINC150

DEMO_DATA = SHIPPED_CLINC150


def demo_stream(
    path: Path, n_in: int, n_drift: int, drift_share: float, n_after: int = 0, seed: int = 0
) -> list[dict[str, Any]]:
    """In-scope test texts, a drift phase where ``drift_share`` of texts are out-of-scope, then
    in-scope texts again so the drift episodes can end."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    rng = random.Random(seed)
    in_scope = [r for r in rows if r["split"] == "test" and r["label"] != "oos"]
    oos = [r for r in rows if r["split"] == "test" and r["label"] == "oos"]
    rng.shuffle(in_scope)
    rng.shuffle(oos)
    stream = []
    for i in range(n_in + n_drift + n_after):
        phase = "normal" if i < n_in else "drift" if i < n_in + n_drift else "recovered"
        drifting = phase == "drift" and rng.random() < drift_share
        row = oos.pop() if drifting and oos else in_scope[i % len(in_scope)]
        stream.append(
            {
                "id": f"demo-{i:05d}",
                "text": row["text"],
                "source": "demo",
                "meta": {"phase": phase, "true_label": row["label"]},
            }
        )
    return stream


TRAIN_PER_LABEL = 50  # of CLINC150's 100 train texts an intent: half the encoding, accuracy 0.95


def training_file(path: Path, out: Path) -> Path:
    """The demo model's training data: the first :data:`TRAIN_PER_LABEL` train rows of each label
    and every validation row (which calibrates the OOD gate and the drift detectors) of ``path``."""
    kept: dict[str, int] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(path, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            row = json.loads(line)
            if row["split"] == "train":
                kept[row["label"]] = kept.get(row["label"], 0) + 1
            if row["split"] == "val" or (row["split"] == "train" and kept[row["label"]] <= TRAIN_PER_LABEL):
                dst.write(line)
    return out


def ensure_model(settings: Settings) -> str:
    registry = Registry(settings.registry)
    if registry.current() is None:
        from streamscore.training.fit import TrainConfig, train

        print(
            f"[demo] no model in {settings.registry}: training a quick model (frozen encoder, "
            f"{TRAIN_PER_LABEL} texts an intent) on {DEMO_DATA.name}, about a minute on 2 cores; "
            "`streamscore train` on all of it, fine-tuned, gives the best one",
            flush=True,
        )
        data = training_file(DEMO_DATA, Path(settings.registry) / "demo" / "train.jsonl")
        result = train(data, registry, TrainConfig(finetune_epochs=0), cache_dir=settings.cache_dir)
        print(f"[demo] {result.version}: validation accuracy {result.metrics['accuracy']:.3f}", flush=True)
    current = registry.current()
    assert current is not None
    return current


MALFORMED = ("not json at all", '{"id": "bad-1"}', '{"id": "bad-2", "text": ""}')


def write_stream(stream: list[dict[str, Any]], path: Path) -> Path:
    """The demo stream as a JSONL file for replay, ending with three malformed lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for msg in stream:
            f.write(json.dumps(msg, ensure_ascii=False) + "\n")
        for line in MALFORMED:
            f.write(line + "\n")
    return path


def short_fetch(settings: Settings) -> dict[str, int]:
    """Both readers (scored records, alerts) wait per fetch no longer than the worker does
    (``fetch_wait_ms``): the embedded broker holds a fetch for the whole wait, and with
    aiokafka's 500 ms the two readers printed up to half a second out of step, so a drift alert
    could show before the scored records that caused it."""
    return {"fetch_max_wait_ms": settings.fetch_wait_ms}


async def _watch(
    bootstrap: str, settings: Settings, total: int, show_every: int, reference: float
) -> dict[str, Any]:
    window: deque[bool] = deque(maxlen=100)
    seen = ood = 0
    by_phase: dict[str, list[int]] = {"normal": [0, 0], "drift": [0, 0], "recovered": [0, 0]}
    async for rec in read_topic(
        bootstrap, settings.scored_topic, idle_timeout_s=60, limit=total, options=short_fetch(settings)
    ):
        v = rec["value"]
        seen += 1
        ood += bool(v["is_ood"])
        window.append(bool(v["is_ood"]))
        if v["meta"].get("phase") == "drift" and not by_phase["drift"][0]:
            print(
                "\n[demo] ===== drift phase: out-of-scope texts are now mixed into the stream =====\n",
                flush=True,
            )
        if v["meta"].get("phase") == "recovered" and not by_phase["recovered"][0]:
            print("\n[demo] ===== drift phase over: in-scope texts only again =====\n", flush=True)
        phase = by_phase[v["meta"].get("phase", "normal")]
        phase[0] += 1
        phase[1] += bool(v["is_ood"])
        if seen % show_every == 0 or (v["is_ood"] and v["meta"].get("phase") == "drift" and seen % 5 == 0):
            print(f"  {format_scored(rec)}  «{v['meta'].get('true_label')}»", flush=True)
        if seen % 100 == 0:
            rate = sum(window) / len(window)
            flag = "  <-- above reference" if rate > 2 * reference else ""
            print(
                f"[demo] scored {seen:>5}: OOD rate over the last 100 = {rate:5.1%} (reference {reference:.0%}){flag}",
                flush=True,
            )
    return {"scored": seen, "ood": ood, "by_phase": by_phase}


async def _watch_alerts(bootstrap: str, settings: Settings, seen: list[dict[str, Any]]) -> None:
    """Print drift alerts as the drift agent raises them (runs until cancelled)."""
    async for rec in read_topic(bootstrap, settings.alerts_topic, options=short_fetch(settings)):
        a = rec["value"]
        seen.append(a)
        mark = "DRIFT ALERT" if a["status"] == "drift" else "resolved   "
        print(
            f"\n[demo] *** {mark} {a['detector']} on {a['signal']}: statistic {a['statistic']:.3g} vs "
            f"threshold {a['threshold']:.3g}, over the last {a['window']['n']} messages "
            f"({a['alert_id']})\n         {a['message']}",
            flush=True,
        )
        for line in summary(a["explanation"]) if a.get("explanation") else []:
            print(f"         {line}", flush=True)
        print(flush=True)


def run_demo(
    settings: Settings,
    n_in: int = 600,
    n_drift: int = 400,
    drift_share: float = 0.5,
    rate: float = 150.0,
    n_after: int = 1_200,
) -> int:
    version = ensure_model(settings)
    stream = demo_stream(DEMO_DATA, n_in, n_drift, drift_share, n_after=n_after)
    stream_file = write_stream(stream, Path(settings.registry) / "demo" / "demo-stream.jsonl")
    with bootstrap_or_embedded(  # the demo is self-contained: its own broker unless given one
        settings.bootstrap_servers, embedded=True, log=lambda m: print(f"[demo] {m}", flush=True)
    ) as bootstrap:
        plan, configs = topic_plan(settings), topic_configs(settings)
        asyncio.run(
            ensure_topics(bootstrap, plan, configs=configs, replication_factor=settings.replication_factor)
        )
        log_path = Path(settings.registry) / "demo-worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings.replace(bootstrap_servers=bootstrap).to_env()}
        with open(log_path, "w") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "streamscore.streams.cli", "worker"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        print(
            f"[demo] worker started with model {version} (log: {log_path}); replaying {stream_file} "
            f"({len(stream)} texts + {len(MALFORMED)} malformed lines) at {rate:.0f}/s, as "
            f"`streamscore replay {stream_file} --rate {rate:g} --send-malformed` would",
            flush=True,
        )
        try:

            async def both() -> dict[str, Any]:
                watch = asyncio.create_task(_watch(bootstrap, settings, len(stream), 50, 1 - KEEP_IN_DIST))
                alerts = asyncio.create_task(_watch_alerts(bootstrap, settings, seen_alerts))
                sent = await replay_file(
                    stream_file,
                    bootstrap,
                    ReplayOptions(topic=settings.input_topic, rate=rate, send_malformed=True),
                    state_dir=settings.registry,
                )
                if not sent.complete:
                    raise RuntimeError(f"the demo stream was not fully sent: {sent.error}")
                summary = await watch
                await asyncio.sleep(3)  # the drift agent trails the scorer by a batch or two
                alerts.cancel()
                return summary

            seen_alerts: list[dict[str, Any]] = []

            summary = asyncio.run(both())
            dead = asyncio.run(_count(bootstrap, settings.dlq_topic))
            metrics_url, metrics_lines = _scrape(log_path)
        finally:
            stop_process(worker, timeout_s=20)
    normal, drift = summary["by_phase"]["normal"], summary["by_phase"]["drift"]
    opened = [a for a in seen_alerts if a["status"] == "drift"]
    closed = [a for a in seen_alerts if a["status"] == "resolved"]
    print("\n[demo] done.")
    print(
        f"  scored {summary['scored']} of {len(stream)} texts; {dead} malformed messages went to {settings.dlq_topic}"
    )
    print(
        f"  OOD rate: {normal[1] / max(normal[0], 1):.1%} before the drift, {drift[1] / max(drift[0], 1):.1%} during it"
    )
    print(
        f"  drift alerts: {len(opened)} episode(s) opened ({', '.join(sorted({a['detector'] for a in opened})) or 'none'}), "
        f"{len(closed)} resolved; topic {settings.alerts_topic}"
    )
    print(
        f"\n[demo] where to look next (this demo's broker stopped with it; docs/messages.md has the message formats):\n"
        f"  topics: {settings.input_topic} (input), {settings.scored_topic} (results), {settings.dlq_topic} "
        f"(bad input, with reasons), {settings.alerts_topic} (drift alerts), {settings.episodes_topic} "
        f"(each episode's explanation), {settings.signals_topic}, {settings.drift_state_topic}\n"
        f"  a broker that stays up:   streamscore broker &   export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092\n"
        f"  then:                     streamscore worker &   streamscore tail --pretty\n"
        f"  the same stream again:    streamscore replay {stream_file} --rate {rate:g}\n"
        f"  score it with a model:    streamscore rescore --from=-10m --model {version} --compare\n"
        f"  drift episodes on a page: streamscore ui   (then open http://127.0.0.1:8090/)\n"
        f"  metrics: the worker served {metrics_url or '/metrics (see its log)'} while it ran; "
        f"with Prometheus and Grafana: docker compose up (docs/observability.md)"
    )
    for line in metrics_lines:
        print(f"    {line}")
    return 0 if summary["scored"] == len(stream) else 1


SHOWN_METRICS = (
    "streamscore_messages_in_total",
    "streamscore_messages_scored_total",
    "streamscore_ood_reference_ratio",
    'streamscore_drift_alerts_total{detector="ood_cusum",status="drift"}',
    'streamscore_messages_dead_lettered_total{reason="invalid_json"}',
)


def _scrape(worker_log: Path) -> tuple[str | None, list[str]]:
    """The worker's metrics URL (from its log) and a few of its metrics, read once."""
    found = re.search(r"metrics on (http://\S+/metrics)", worker_log.read_text(errors="replace"))
    if not found:
        return None, []
    try:
        with urllib.request.urlopen(found.group(1), timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return found.group(1), []
    return found.group(1), [line for line in text.splitlines() if line.startswith(SHOWN_METRICS)]


async def _count(bootstrap: str, topic: str) -> int:
    n = 0
    async for _ in read_topic(bootstrap, topic, idle_timeout_s=3):
        n += 1
    return n


# ------------------------------------------------------------------ the command


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True)
    sp.add_argument("--n-in", type=int, default=600, help="in-distribution messages before the drift")
    sp.add_argument("--n-drift", type=int, default=400, help="messages in the drift phase")
    sp.add_argument("--drift-share", type=float, default=0.5, help="share of OOD texts in the drift phase")
    sp.add_argument("--n-after", type=int, default=1_200, help="in-distribution messages after the drift")
    sp.add_argument("--rate", type=float, default=150.0, help="messages per second")


def run(args: argparse.Namespace) -> int:
    return run_demo(
        settings_of(args),
        n_in=args.n_in,
        n_drift=args.n_drift,
        drift_share=args.drift_share,
        rate=args.rate,
        n_after=args.n_after,
    )


COMMAND = Command(
    name="demo",
    help="broker + model + worker + a demo stream with a drift phase",
    options=options,
    run=run,
    examples=("streamscore demo", "streamscore demo --n-drift 800 --drift-share 0.8"),
)
