"""``processing_guarantee``: what the worker promises, and what exactly-once needs from a broker.

``at_least_once`` (the default) holds on every broker: a batch's input offsets are committed
only after all its outputs are confirmed, so a crash can repeat outputs, never lose them. Each
output carries the input's ``id`` and ``origin`` (topic, partition, offset), so a consumer can
drop repeats.

``exactly_once`` needs Kafka transactions: each micro-batch's outputs and input offsets are
committed atomically, one transaction per input partition (streams/kafka/transactions.py), and
readers of the outputs read ``read_committed``. The worker tries to start a transactional
producer at start and refuses, saying why, when the broker cannot (the embedded Tansu broker
cannot).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

GUARANTEES = ("at_least_once", "exactly_once")
# Kafka API keys a transactional producer needs (KIP-98).
TRANSACTION_APIS = {
    22: "InitProducerId",
    24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn",
    26: "EndTxn",
    28: "TxnOffsetCommit",
}


class GuaranteeError(RuntimeError):
    """The requested processing guarantee cannot hold; the message says what to do."""


async def transactions_refused(
    bootstrap_servers: str, options: dict[str, Any] | None = None, prefix: str = "streamscore.probe."
) -> str | None:
    """Why the broker cannot run a transaction, or None when it can.

    Asking is not enough: the embedded Tansu broker lists every transaction API in its
    ApiVersions yet answers InitProducerId for a transactional id with an unknown error. So
    this starts a throwaway transactional producer, the first step of any transaction.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import TransactionalIdAuthorizationFailed
    from aiokafka.protocol.admin import ApiVersionRequest

    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, **(options or {}))
    await client.bootstrap()
    try:
        response = await client.send(client.get_random_node(), ApiVersionRequest())
        offered = {entry[0] for entry in response.api_versions}
    finally:
        await client.close()
    missing = [name for key, name in TRANSACTION_APIS.items() if key not in offered]
    if missing:
        return f"its ApiVersions lack {', '.join(missing)}"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        # Under the worker's own prefix, so ACLs on its transactional ids are checked too.
        transactional_id=f"{prefix}probe-{uuid.uuid4().hex[:12]}",
        **{"request_timeout_ms": 10_000, **(options or {})},
    )
    try:
        await asyncio.wait_for(producer.start(), 20)
        return None
    except TransactionalIdAuthorizationFailed:
        return (
            f"its ACLs refuse this principal the transactional ids '{prefix}*': grant WRITE and "
            f"DESCRIBE on TransactionalId prefix '{prefix}' (docs/reliability.md, Kafka ACLs)"
        )
    except Exception as exc:
        return f"it refused to start a transactional producer ({type(exc).__name__}: {exc})"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)


async def check_guarantee(
    guarantee: str,
    bootstrap_servers: str,
    options: dict[str, Any] | None = None,
    prefix: str = "streamscore.",
) -> None:
    """Raise :class:`GuaranteeError` when ``guarantee`` cannot hold on this broker; ``prefix``: the
    worker's transactional ids (streams/kafka/transactions.py)."""
    if guarantee == "at_least_once":
        return
    refused = await transactions_refused(bootstrap_servers, options, prefix)
    if refused:
        raise GuaranteeError(
            f"processing_guarantee=exactly_once needs Kafka transactions, and the broker at "
            f"{bootstrap_servers} cannot run them: {refused}. Use "
            "processing_guarantee=at_least_once (repeats after a crash carry the same id and "
            "origin, so consumers can drop them), or a broker with transactions such as Apache "
            "Kafka (docker-compose.yml)."
        )
