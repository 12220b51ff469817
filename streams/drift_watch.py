"""The drift agent's helpers: which monitor serves a model version, and resuming from a snapshot."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.drift_monitor import DriftMonitor
from streams.kafka_security import client_options
from streams.serving import ModelHolder
from streams.settings import Settings

log = logging.getLogger("streamscore.drift")


class DriftWatch:
    """Keeps the :class:`DriftMonitor` of the model version whose signals are flowing."""

    def __init__(self, settings: Settings, bootstrap_servers: str, holder: ModelHolder) -> None:
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers
        self.holder = holder
        self.monitor: DriftMonitor | None = None
        self.restored: dict[str, Any] | None = None
        self._closing: list[dict[str, Any]] = []
        self._no_calibration: set[str] = set()

    async def restore(self) -> None:
        """Read the last snapshot of ``drift.state`` (if any) so detectors resume where they were."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            **client_options(self.settings),
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.settings.drift_state_topic, 0)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            if end == 0:
                return
            consumer.seek(tp, end - 1)
            batch = await consumer.getmany(tp, timeout_ms=5_000)
            records = batch.get(tp, [])
            if records:
                self.restored = json.loads(records[-1].value)
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
        if version in self._no_calibration:
            return None
        artifact = self.holder.scorer.artifact
        if artifact.version != version:
            registry = self.holder.registry
            if registry is None:
                return None
            artifact = await asyncio.get_running_loop().run_in_executor(None, registry.load, version)
        if artifact.drift is None:
            log.error("model %s has no drift calibration: drift is not watched for it; retrain it", version)
            self._no_calibration.add(version)
            return None
        if self.monitor is not None:
            self._closing += self.monitor.close_all(f"model changed to {version}")
        monitor = DriftMonitor(
            artifact.drift, version, self.settings.drift_quiet, self.settings.drift_cooldown
        )
        if self.restored is not None and self.restored.get("model_version") == version:
            monitor.load_state(self.restored)
        self.restored = None
        self.monitor = monitor
        return monitor

    def closing_alerts(self) -> list[dict[str, Any]]:
        out, self._closing = self._closing, []
        return out
