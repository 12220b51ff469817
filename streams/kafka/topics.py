"""Creating the topics streamscore uses, with the partition counts the design asks for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaConnectionError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from streamscore.schemas.messages import KAFKA_MAX_MESSAGE_BYTES
from streamscore.streams.kafka.access import AccessError
from streamscore.streams.kafka.security import REFUSED_LOGINS, unreachable
from streamscore.streams.settings import Settings

log = logging.getLogger("streamscore.kafka")


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name → partitions. Drift topics have one partition: one global view, in order."""
    return {
        settings.input_topic: settings.partitions,
        settings.scored_topic: settings.partitions,
        settings.dlq_topic: 1,
        settings.signals_topic: 1,
        settings.alerts_topic: 1,
        settings.drift_state_topic: 1,
        settings.episodes_topic: 1,
    }


def one_partition_topics(settings: Settings) -> dict[str, str]:
    """Topics read as one ordered stream (name → what breaks with more partitions): the drift
    agent de-duplicates signals by offset and resumes from the one snapshot record."""
    return {
        settings.signals_topic: "the drift agent reads it as one ordered stream and drops signals by offset",
        settings.drift_state_topic: "the drift agent resumes from its one latest snapshot",
    }


@contextlib.asynccontextmanager
async def admin_client(
    bootstrap_servers: str, options: dict[str, Any] | None = None
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client (10 s per request unless ``options`` say otherwise), closed after."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, **{"request_timeout_ms": 10_000, **(options or {})}
    )
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def partitions_of(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The partitions' metadata (leader, replicas, ...) of each of ``topics`` that exists."""
    existing = set(await admin.list_topics())
    present = [t for t in topics if t in existing]
    found = await admin.describe_topics(present) if present else []
    return {meta["topic"]: meta["partitions"] for meta in found}


async def partition_counts(
    bootstrap_servers: str, topics: list[str], options: dict[str, Any] | None = None
) -> dict[str, int]:
    """How many partitions each of ``topics`` that exists has."""
    async with admin_client(bootstrap_servers, options) as admin:
        return {topic: len(parts) for topic, parts in (await partitions_of(admin, topics)).items()}


def check_one_partition(settings: Settings, counts: dict[str, int]) -> None:
    """Raise, in one line with the fix, if a topic read as one ordered stream has several partitions.

    >>> s = Settings()
    >>> check_one_partition(s, {"drift.signals": 1})
    >>> check_one_partition(s, {"drift.signals": 3})
    Traceback (most recent call last):
    ...
    ValueError: topic 'drift.signals' has 3 partitions, but the drift agent reads it as one ordered stream and drops signals by offset: it needs exactly 1. Delete it and let the worker create it again, or name a new one (STREAMSCORE_SIGNALS_TOPIC)
    """
    for topic, why in one_partition_topics(settings).items():
        if counts.get(topic, 1) > 1:
            setting = "SIGNALS_TOPIC" if topic == settings.signals_topic else "DRIFT_STATE_TOPIC"
            raise ValueError(
                f"topic '{topic}' has {counts[topic]} partitions, but {why}: it needs exactly 1. "
                f"Delete it and let the worker create it again, or name a new one (STREAMSCORE_{setting})"
            )


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic configs beyond the broker's defaults: the drift state is a snapshot under one key
    and an episode's record is rewritten as it grows, so compaction keeps the latest of each (docker-compose.yml creates it the same);
    ``min_insync_replicas``, when set, on every topic."""
    configs: dict[str, dict[str, str]] = {
        settings.drift_state_topic: {"cleanup.policy": "compact"},
        settings.episodes_topic: {"cleanup.policy": "compact"},  # the latest record of each episode
    }
    if settings.min_insync_replicas:
        for name in topic_plan(settings):
            configs.setdefault(name, {})["min.insync.replicas"] = str(settings.min_insync_replicas)
    return configs


def raise_topic_errors(response: Any) -> None:
    """aiokafka's ``create_topics`` returns the broker's per-topic errors instead of raising them."""
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        if code:
            message = entry[2] if len(entry) > 2 and entry[2] else ""
            raise errors.for_code(code)(f"{topic}: {message}".rstrip(": "))


async def ensure_topics(
    bootstrap_servers: str,
    plan: dict[str, int],
    options: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
    configs: dict[str, dict[str, str]] | None = None,
    replication_factor: int = 1,
) -> None:
    """Create the topics of ``plan`` that do not exist yet, with their ``configs`` and
    ``replication_factor``; leave existing ones alone. ``options``: security options
    (streams/kafka/security.py)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, **{"request_timeout_ms": 10_000, **(options or {})}
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
            NewTopic(name, n, replication_factor, topic_configs=(configs or {}).get(name, {}))
            for name, n in plan.items()
            if name not in existing
        ]
        if missing:
            try:
                raise_topic_errors(await admin.create_topics(missing))
            except TopicAlreadyExistsError:
                pass  # another worker created it between our list and create
            except InvalidReplicationFactorError:
                brokers = len((await admin.describe_cluster())["brokers"])
                raise ValueError(
                    f"replication_factor={replication_factor} but the cluster at {bootstrap_servers} has "
                    f"{brokers} broker(s): set STREAMSCORE_REPLICATION_FACTOR "
                    f"to at most {brokers}"
                ) from None
            except TopicAuthorizationFailedError:
                names = ", ".join(f"'{t.name}'" for t in missing)
                raise AccessError(
                    f"the broker's ACLs refused to create {names}: the client's principal may not "
                    "see them (DESCRIBE) or create them (CREATE). Create them first and grant the "
                    "ACLs in docs/reliability.md, Kafka ACLs, or grant CREATE"
                ) from None
    finally:
        await admin.close()


async def describe_configs(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, dict[str, str] | None]:
    """Each topic's configs as the broker reports them (the embedded broker: only those set on
    the topic); None for a topic whose configs it refused to describe (an ACL)."""
    found: dict[str, dict[str, str] | None] = {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            # (error_code, error_message, type, name, [(key, value, read_only, ...), ...])
            code, name = resource[0], resource[3]
            found[name] = None if code else {e[0]: e[1] for e in resource[4] if e[1] is not None}
    return found


async def max_message_bytes(
    bootstrap_servers: str, topics: list[str], options: dict[str, Any] | None = None
) -> dict[str, int]:
    """The largest record batch each topic takes (``max.message.bytes``, its own or the broker's
    default), so that no record the worker writes is refused; Kafka's default where the broker
    does not say (the embedded broker, or a principal without DESCRIBE_CONFIGS)."""
    async with admin_client(bootstrap_servers, options) as admin:
        configs = await describe_configs(admin, topics)
    limits = {}
    for topic in topics:
        found = configs.get(topic)
        if found is None:
            log.warning(
                "could not read max.message.bytes of '%s' (no DESCRIBE_CONFIGS?): assuming Kafka's "
                "default %d",
                topic,
                KAFKA_MAX_MESSAGE_BYTES,
            )
        limits[topic] = int((found or {}).get("max.message.bytes", KAFKA_MAX_MESSAGE_BYTES))
    return limits
