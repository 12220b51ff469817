"""The drift agent: ``drift.signals`` → the model version's :class:`DriftMonitor` → alerts, snapshots.

One agent reads the one-partition ``drift.signals`` topic, so it sees the whole stream. Each
record's signals go to the monitor of the model version that scored them (a new version closes
the old one's open episodes and starts on its own reference). Alerts go out before the snapshot
of the detectors that follows them, so a restarted worker resumes from ``drift.state`` without
relearning and never repeats an alert.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamscore.models.artifact import ModelArtifact
from streamscore.models.drift import snapshot
from streamscore.models.drift.explain import Explainer
from streamscore.models.drift.monitor import DriftMonitor
from streamscore.schemas.drift import DriftAlert, episode_record, signals_in
from streamscore.streams.kafka.delivery import Record

log = logging.getLogger("streamscore.drift")

SNAPSHOT_EVERY_S = 1.0  # at most this long between snapshots while signals flow without alerts
EPISODE_EVERY = 250  # messages between updates of an open episode's drift.episodes record


@dataclass(frozen=True)
class DriftTopics:
    alerts: str
    state: str  # detector snapshots, one partition, latest wins
    episodes: str = "drift.episodes"  # each episode's explanation, keyed by its id, latest wins


@dataclass(frozen=True)
class ExplainSettings:
    texts: bool = True  # False: keywords and counts only
    text_chars: int = 200
    every: int = EPISODE_EVERY  # messages between updates of an open episode's record


@dataclass
class Handled:
    """What one read of ``drift.signals`` produced: alerts to send first, then the snapshot."""

    alerts: list[DriftAlert] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)  # drift.episodes records
    signals: int = 0
    snapshot: bytes | None = None

    def alert_records(self, topic: str) -> list[Record]:
        return [(topic, a.alert_id.encode(), json.dumps(a.to_json()).encode()) for a in self.alerts]

    def episode_records(self, topic: str) -> list[Record]:
        return [(topic, e["episode_id"].encode(), json.dumps(e).encode()) for e in self.episodes]


ArtifactOf = Callable[[str], Awaitable[ModelArtifact | None]]
"""The artifact of a model version (None: it cannot be had)."""


class DriftAgent:
    """Keeps the :class:`DriftMonitor` of the model version whose signals are flowing."""

    def __init__(
        self,
        topics: DriftTopics,
        artifact_of: ArtifactOf,
        quiet: int,
        cooldown: int,
        consumer_options: dict[str, Any] | None = None,
        explain: ExplainSettings | None = None,
    ) -> None:
        self.topics = topics
        self.explain = explain or ExplainSettings()
        self.artifact_of = artifact_of
        self.quiet, self.cooldown = quiet, cooldown
        self.consumer_options = consumer_options or {}  # bootstrap servers and security
        self.monitor: DriftMonitor | None = None
        self.restored: dict[str, Any] | None = None
        self.closing: list[DriftAlert] = []
        self.no_calibration: set[str] = set()
        self.last_snapshot = 0.0

    async def restore(self) -> None:
        """Read the last snapshot of ``drift.state`` (if any) so detectors resume where they were."""
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False, isolation_level="read_committed", **self.consumer_options
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.topics.state, 0)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            if end == 0:
                return
            consumer.seek(tp, end - 1)
            batch = await consumer.getmany(tp, timeout_ms=5_000)
            records = batch.get(tp, [])
            if records:
                self.restored = snapshot.decode(records[-1].value)
                log.info(
                    "drift detectors resume from snapshot: model %s, signal offset %s, open episodes %s",
                    self.restored["model_version"],
                    self.restored["last_offset"],
                    [n for n, ep in self.restored["episodes"].items() if ep["open"]],
                )
        finally:
            await consumer.stop()

    async def monitor_for(self, version: str) -> DriftMonitor | None:
        if self.monitor is not None and self.monitor.model_version == version:
            return self.monitor
        if version in self.no_calibration:
            return None
        artifact = await self.artifact_of(version)
        if artifact is None:
            return None
        if artifact.drift is None:
            log.error("model %s has no drift calibration: drift is not watched for it; retrain it", version)
            self.no_calibration.add(version)
            return None
        if self.monitor is not None:
            self.closing += self.monitor.close_all(f"model changed to {version}")
        monitor = DriftMonitor(
            artifact.drift,
            version,
            self.quiet,
            self.cooldown,
            explainer=explainer_of(artifact, self.explain),
            ood_threshold=artifact.ood_threshold,
        )
        if self.restored is not None and self.restored.get("model_version") == version:
            monitor.load_state(self.restored)
        self.restored = None
        self.monitor = monitor
        return monitor

    async def handle(self, records: list[tuple[int, bytes]]) -> Handled:
        """``(offset, value)`` of ``drift.signals`` records → alerts, and the snapshot when due.

        A record or signal that cannot be read is logged and skipped: it must not stop drift
        watching."""
        out = Handled()
        for offset, value in records:
            try:
                record = json.loads(value)
                monitor = await self.monitor_for(record["model_version"])
                signals = signals_in(record)
            except Exception:
                log.exception("skipping unreadable drift signals record at offset %s", offset)
                continue
            out.signals += len(signals)
            if monitor is None:
                continue
            out.alerts += self.closing
            self.closing = []
            for index, signal in enumerate(signals):
                try:
                    out.alerts += monitor.observe(signal, offset, index)
                except Exception:
                    log.exception("skipping unreadable drift signal %s of offset %s", index, offset)
        out.episodes = [episode_record_of(a) for a in out.alerts if a.explanation is not None]
        if self.monitor is not None:
            out.episodes += self.monitor.due_records(self.explain.every)
        now = time.monotonic()
        # The snapshot follows every alert, so a restart never repeats one; else once a second.
        if self.monitor is not None and (out.alerts or now - self.last_snapshot > SNAPSHOT_EVERY_S):
            out.snapshot = self.monitor.snapshot()
            self.last_snapshot = now
        return out


def explainer_of(artifact: ModelArtifact, explain: ExplainSettings) -> Explainer | None:
    """What explains the episodes of ``artifact``'s model (None: it has no drift calibration)."""
    if artifact.drift is None:
        return None
    return Explainer(
        labels=list(artifact.head.labels),
        prior=list(artifact.drift.labels["prior"]),
        label_confidence=artifact.drift.confidence.get("by_label"),
        background=artifact.background,
        label_centres=artifact.label_centres,
        texts=explain.texts,
        text_chars=explain.text_chars,
    )


def episode_record_of(alert: DriftAlert) -> dict[str, Any]:
    """The ``drift.episodes`` record an alert (with an explanation) opens or closes."""
    assert alert.explanation is not None
    status: Literal["open", "resolved"] = "open" if alert.status == "drift" else "resolved"
    return episode_record(
        alert.alert_id, alert.detector, alert.model_version, status,
        alert.alarms_in_episode, alert.detected_at, alert.explanation,
    )  # fmt: skip


def artifacts_from(holder: Any) -> ArtifactOf:
    """The serving model's artifact, or another version's from the registry it follows. A
    version is read from ``drift.signals``, which anyone who may write there can fill: only a
    version of that registry is loaded, never a folder it names."""

    async def artifact_of(version: str) -> ModelArtifact | None:
        artifact = holder.scorer.artifact
        if artifact.version == version:
            return artifact
        found = holder.registry.find(version) if holder.registry is not None else None
        if found is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, holder.registry.load, found)

    return artifact_of
