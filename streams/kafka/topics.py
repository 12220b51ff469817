"""Creating the topics streamscore uses, with the partition counts the design asks for."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, TopicAuthorizationFailedError

from streams.kafka.access import AccessError
from streams.kafka.security import REFUSED_LOGINS, unreachable
from streams.settings import Settings


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name → partitions. Drift topics have one partition: one global view, in order."""
    return {
        settings.input_topic: settings.partitions,
        settings.scored_topic: settings.partitions,
        settings.dlq_topic: 1,
        settings.signals_topic: 1,
        settings.alerts_topic: 1,
        settings.drift_state_topic: 1,
    }


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic configs beyond the broker's defaults: the drift state is a snapshot under one key,
    so compaction keeps the latest and lets the rest go (docker-compose.yml creates it the same)."""
    return {settings.drift_state_topic: {"cleanup.policy": "compact"}}


async def ensure_topics(
    bootstrap_servers: str,
    plan: dict[str, int],
    options: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create the topics of ``plan`` that do not exist yet, with their ``configs``; leave existing
    ones alone. ``options``: security options (streams/kafka/security.py)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000, **(options or {})
    )
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if REFUSED_LOGINS.seen:
                raise  # the broker answered and refused the login: waiting will not change that
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(unreachable(bootstrap_servers, options)) from None
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, n, 1, topic_configs=(configs or {}).get(name, {}))
            for name, n in plan.items()
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker created it between our list and create
            except TopicAuthorizationFailedError:
                names = ", ".join(f"'{t.name}'" for t in missing)
                raise AccessError(
                    f"the broker's ACLs refused to create {names}: the client's principal may not "
                    "see them (DESCRIBE) or create them (CREATE). Create them first and grant the "
                    "ACLs in README, Kafka ACLs, or grant CREATE"
                ) from None
    finally:
        await admin.close()
