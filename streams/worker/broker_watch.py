"""Does the broker answer? A metadata request every few seconds, told to logs, ``/healthz`` and
``streamscore_broker_up``.

The worker's own Kafka clients retry on their own and lose nothing while the broker is away
(outputs stay unconfirmed, so their offsets stay uncommitted), but they do so quietly: a frozen
broker just looks like an idle stream. This probe makes the state visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from streamscore.streams.worker.metrics import WorkerMetrics

log = logging.getLogger("streamscore.worker")


@dataclass
class BrokerWatch:
    """``check()`` probes the broker once and reports a change of state."""

    bootstrap_servers: str
    metrics: WorkerMetrics
    client_options: dict[str, Any] = field(default_factory=dict)  # security settings
    timeout_s: float = 3.0
    down_since: float | None = None
    _client: Any = field(default=None, repr=False)

    async def check(self) -> bool:
        up = await self._probe()
        if up and self.down_since is not None:
            log.warning(
                "broker %s answers again after %.0f s; resuming",
                self.bootstrap_servers,
                time.time() - self.down_since,
            )
            self.down_since = None
        elif not up and self.down_since is None:
            self.down_since = time.time()
            log.warning(
                "broker %s does not answer (%.0f s timeout); in-flight batches wait unconfirmed and "
                "uncommitted, nothing is lost; retrying",
                self.bootstrap_servers,
                self.timeout_s,
            )
        self.metrics.set_broker(up, self.down_since)
        return up

    async def _probe(self) -> bool:
        from aiokafka.client import AIOKafkaClient

        try:
            if self._client is None:
                self._client = AIOKafkaClient(
                    bootstrap_servers=self.bootstrap_servers,
                    **{**self.client_options, "request_timeout_ms": int(self.timeout_s * 1000)},
                )
                await asyncio.wait_for(self._client.bootstrap(), self.timeout_s)
            await asyncio.wait_for(self._client.fetch_all_metadata(), self.timeout_s)
            return True
        except Exception:  # any failure means "not answering"; a fresh connection next time
            await self.close()
            return False

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self.timeout_s)
