"""Whether the broker's ACLs let the worker do its job, asked before anything is consumed.

Without the rights it needs, a worker fails late and obscurely: a consumer without READ gets an
authorization error deep in Faust, a producer without WRITE has its records refused again and
again. So the worker asks first. Metadata v8 (KIP-430) answers, per topic, which operations the
caller's principal may perform; aiokafka stops at v5, so the request is declared here. A broker
without an authorizer, or one that does not answer v8 (the embedded Tansu broker), passes.

>>> missing_rights({"texts": Need("input", frozenset({"READ"}))}, {"texts": 1 << OPERATIONS["DESCRIBE"]})
[('texts', 'input', 'READ')]
>>> missing_rights({"texts": Need("input", frozenset({"READ"}))}, {"texts": UNKNOWN})
[]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from streamscore.streams.settings import Settings

# Kafka's AclOperation codes; bit ``code`` of an authorized-operations field is that operation.
OPERATIONS = {"READ": 3, "WRITE": 4, "CREATE": 5, "DESCRIBE": 8, "IDEMPOTENT_WRITE": 12}
UNKNOWN = -(2**31)  # the broker did not compute the field (no authorizer, or not asked)
TOPIC_AUTHORIZATION_FAILED = 29

log = logging.getLogger("streamscore.worker")


class _MetadataResponseV8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(("node_id", Int32), ("host", String("utf-8")), ("port", Int32), ("rack", String("utf-8"))),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("name", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", Array(Int32)),
                        ("isr_nodes", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequestV8(RequestStruct):
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponseV8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _AuthorizedOperations(Request[_MetadataRequestV8]):
    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[_MetadataRequestV8]) -> _MetadataRequestV8:
        return request_struct_class(self.topics, False, False, True)


@dataclass(frozen=True)
class Need:
    """What the worker does with a topic (its role, for the message) and the operations that takes."""

    role: str
    operations: frozenset[str]


class AccessError(RuntimeError):
    """The broker's ACLs refuse the worker something it needs; the message says what to grant."""


def missing_rights(needs: dict[str, Need], authorized: dict[str, int]) -> list[tuple[str, str, str]]:
    """(topic, role, operation) for every operation ``needs`` asks that ``authorized`` lacks.
    DESCRIBE is implied by READ and WRITE in Kafka, so it is not asked separately."""
    missing = []
    for topic, need in needs.items():
        ops = authorized.get(topic, UNKNOWN)
        if ops == UNKNOWN:
            continue
        missing += [(topic, need.role, op) for op in sorted(need.operations) if not ops >> OPERATIONS[op] & 1]
    return missing


async def authorized_operations(
    bootstrap_servers: str, topics: list[str], options: dict[str, Any]
) -> dict[str, int]:
    """Per topic, the operations the caller may perform as a bit field; UNKNOWN where the broker
    did not say, and 0 for a topic it may not even see."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import IncompatibleBrokerVersion

    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, **options)
    await client.bootstrap()
    try:
        response = await client.send(client.get_random_node(), _AuthorizedOperations(topics))
    except (IncompatibleBrokerVersion, NotImplementedError):
        return {}
    except Exception:  # a broker that answers v8 its own way (Tansu 0.6 sends a shorter reply)
        log.debug("the broker's Metadata v8 answer could not be read; ACLs not checked", exc_info=True)
        return {}
    finally:
        await client.close()
    found = {}
    for error_code, name, _internal, _partitions, ops in response.topics:
        found[name] = 0 if error_code == TOPIC_AUTHORIZATION_FAILED else ops
    return found


def worker_needs(settings: Settings) -> dict[str, Need]:
    """The topics a worker uses and what it does with each (docs/reliability.md, Kafka ACLs)."""
    read, write, both = frozenset({"READ"}), frozenset({"WRITE"}), frozenset({"READ", "WRITE"})
    return {
        settings.input_topic: Need("input", read),
        settings.scored_topic: Need("scored output", write),
        settings.dlq_topic: Need("dead letters", write),
        settings.signals_topic: Need("drift signals", both),
        settings.alerts_topic: Need("drift alerts", write),
        settings.drift_state_topic: Need("drift state", both),
    }


def principal_of(settings: Settings) -> str:
    """The principal the broker sees, as far as the client can tell."""
    if settings.security_protocol.startswith("SASL"):
        return f"User:{settings.sasl_username}"
    if settings.security_protocol == "SSL":
        return "the principal of the worker's certificate (User:CN=...)"
    return "User:ANONYMOUS"


async def check_access(bootstrap_servers: str, settings: Settings, options: dict[str, Any]) -> None:
    """Raise :class:`AccessError` naming each topic (and the group) and the ACL to grant when the
    worker's principal lacks one."""
    from aiokafka import TopicPartition
    from aiokafka.errors import GroupAuthorizationFailedError

    from streamscore.streams.kafka.client import group_offsets

    principal = principal_of(settings)
    needs = worker_needs(settings)
    missing = missing_rights(needs, await authorized_operations(bootstrap_servers, list(needs), options))
    lacks = [f"{op} on topic '{topic}' ({role})" for topic, role, op in missing]
    grant = [f"--operation {op.title()} --topic {topic}" for topic, _, op in missing]
    try:
        first = [TopicPartition(settings.input_topic, 0)]  # not all: Tansu 0.6 garbles that answer
        await group_offsets(bootstrap_servers, settings.group_id, first, options)
    except GroupAuthorizationFailedError:
        lacks.append(f"READ on group '{settings.group_id}' (the worker's consumer group)")
        grant.append(f"--operation Read --group {settings.group_id}")
    if lacks:
        raise AccessError(
            f"the broker's ACLs do not let {principal} do what the worker needs: {'; '.join(lacks)}. "
            f"Grant it, for example kafka-acls.sh --bootstrap-server {bootstrap_servers} --add "
            f"--allow-principal {principal} {grant[0]} (docs/reliability.md, Kafka ACLs lists every ACL the worker needs)"
        )
