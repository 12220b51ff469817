"""The drift agent: ``drift.signals`` → the model version's :class:`DriftMonitor` → alerts, snapshots.

One agent reads the one-partition ``drift.signals`` topic, so it sees the whole stream. Each
record's signals go to the monitor of the model version that scored them, on that version's
reference. While workers reload a new model each at its own time, two versions' signals
interleave: each keeps its own monitor, and a version whose signals stopped for
``retire_after_s`` is retired, its open episodes resolved as "model changed" (flipping monitors
at every record used to close the other version's episodes and restart its detectors). Alerts go out before the snapshot
of the detectors that follows them, so a restarted worker resumes from ``drift.state`` without
relearning and never repeats an alert. The state follows the partition: whichever worker the
group gives ``drift.signals`` reads the latest snapshot then, not at its own start (another
worker may have moved the episodes on since), and a worker that gives it up writes its last
snapshot and forgets its detectors.
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
RETIRE_AFTER_S = 60.0  # a model version without signals this long, while another's flow, is retired


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
        retire_after_s: float = RETIRE_AFTER_S,
    ) -> None:
        self.topics = topics
        self.explain = explain or ExplainSettings()
        self.artifact_of = artifact_of
        self.quiet, self.cooldown = quiet, cooldown
        self.retire_after_s = retire_after_s
        self.consumer_options = consumer_options or {}  # bootstrap servers and security
        self.monitors: dict[str, DriftMonitor] = {}  # model version → its detectors
        self.last_seen: dict[str, float] = {}  # model version → when its last record came
        self.monitor: DriftMonitor | None = None  # the monitor of the latest record
        self.restored: dict[str, dict[str, Any]] = {}  # model version → state from drift.state
        self.closing: list[DriftAlert] = []
        self.no_calibration: set[str] = set()
        self.last_snapshot = 0.0
        self.stale = True  # read drift.state before the next signals: the partition is new to us

    def forget(self) -> None:
        """``drift.signals`` went to another worker: drop the detectors; read the state again if
        it comes back (the other worker may have moved the episodes on meanwhile)."""
        self._reset()
        self.stale = True

    def _reset(self) -> None:
        self.monitors, self.last_seen, self.monitor, self.restored, self.closing = {}, {}, None, {}, []

    def last_snapshot_record(self) -> bytes | None:
        """The detectors' snapshot now (None: no detectors), written before the partition goes."""
        return self.snapshot() if self.monitors else None

    def snapshot(self) -> bytes:
        """Every live monitor's state, in one ``drift.state`` record (models/drift/snapshot.py)."""
        return snapshot.encode_many({v: m.state() for v, m in self.monitors.items()})

    async def restore(self) -> None:
        """Read the last snapshot of ``drift.state`` (if any) so detectors resume where they were."""
        self.stale = False
        self._reset()
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
                self.restored = snapshot.decode_many(records[-1].value)
                for version, state in self.restored.items():
                    log.info(
                        "drift detectors resume from snapshot: model %s, signal offset %s, open episodes %s",
                        version,
                        state["last_offset"],
                        [n for n, ep in state["episodes"].items() if ep["open"]],
                    )
        finally:
            await consumer.stop()

    async def monitor_for(self, version: str) -> DriftMonitor | None:
        if version in self.monitors:
            return self.monitors[version]
        if version in self.no_calibration:
            return None
        artifact = await self.artifact_of(version)
        if artifact is None:
            return None
        if artifact.drift is None:
            log.error("model %s has no drift calibration: drift is not watched for it; retrain it", version)
            self.no_calibration.add(version)
            return None
        monitor = DriftMonitor(
            artifact.drift,
            version,
            self.quiet,
            self.cooldown,
            explainer=explainer_of(artifact, self.explain),
            ood_threshold=artifact.ood_threshold,
        )
        state = self.restored.pop(version, None)
        if state is not None:
            monitor.load_state(state)
        if self.monitors:
            log.info(
                "signals of model %s arrive beside those of %s (workers reloading each at its own time): "
                "each keeps its own detectors until its signals stop",
                version,
                ", ".join(self.monitors),
            )
        self.monitors[version] = monitor
        self.last_seen[version] = time.monotonic()
        return monitor

    def retire_quiet_versions(self, current: str) -> None:
        """Versions whose signals stopped ``retire_after_s`` ago, while ``current``'s flow: their
        open episodes are resolved, their detectors dropped."""
        now = time.monotonic()
        for version in [v for v in self.monitors if v != current]:
            if now - self.last_seen.get(version, now) >= self.retire_after_s:
                self.closing += self.monitors.pop(version).close_all(f"model changed to {current}")
                self.last_seen.pop(version, None)

    async def handle(self, records: list[tuple[int, bytes]]) -> Handled:
        """``(offset, value)`` of ``drift.signals`` records → alerts, and the snapshot when due.

        A record or signal that cannot be read is logged and skipped: it must not stop drift
        watching."""
        if self.stale:
            await self.restore()
            for version in list(self.restored):  # each version's detectors, retired in turn if it stays quiet
                await self.monitor_for(version)
                self.restored.pop(version, None)
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
            self.monitor = monitor
            self.last_seen[monitor.model_version] = time.monotonic()
            self.retire_quiet_versions(monitor.model_version)
            out.alerts += self.closing
            self.closing = []
            for index, signal in enumerate(signals):
                try:
                    out.alerts += monitor.observe(signal, offset, index)
                except Exception:
                    log.exception("skipping unreadable drift signal %s of offset %s", index, offset)
        out.episodes = [episode_record_of(a) for a in out.alerts if a.explanation is not None]
        for m in self.monitors.values():
            out.episodes += m.due_records(self.explain.every)
        now = time.monotonic()
        # The snapshot follows every alert, so a restart never repeats one; else once a second.
        if self.monitors and (out.alerts or now - self.last_snapshot > SNAPSHOT_EVERY_S):
            out.snapshot = self.snapshot()
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
