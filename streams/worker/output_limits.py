"""How big a record may be on each output topic, read from the topics' ``max.message.bytes``."""

from __future__ import annotations

from typing import Any

from streamscore.models.batch import MIN_RECORD_BYTES, OutputLimits
from streamscore.schemas.messages import RECORD_OVERHEAD_BYTES, record_bytes_allowed
from streamscore.streams.kafka.topics import max_message_bytes
from streamscore.streams.settings import Settings


async def read_output_limits(bootstrap: str, settings: Settings, security: dict[str, Any]) -> OutputLimits:
    """What each output topic's ``max.message.bytes`` and the producer's request size leave for
    one record. A topic that takes too little to dead-letter into is an error that says the fix."""
    roles = {
        "scored": settings.scored_topic,
        "dead_letter": settings.dlq_topic,
        "signals": settings.signals_topic,
    }
    found = await max_message_bytes(bootstrap, list(roles.values()), security)
    for topic in roles.values():
        if record_bytes_allowed(found[topic]) < MIN_RECORD_BYTES:
            raise RuntimeError(
                f"topic '{topic}' takes records of at most {found[topic]:,} bytes (max.message.bytes); "
                f"streamscore needs {MIN_RECORD_BYTES + RECORD_OVERHEAD_BYTES:,} or more: raise it, "
                f"for example to Kafka's default with kafka-configs.sh --alter --entity-type topics "
                f"--entity-name {topic} --add-config max.message.bytes=1048588"
            )
    return OutputLimits(**{role: record_bytes_allowed(found[topic]) for role, topic in roles.items()})
