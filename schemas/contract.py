"""The JSON Schema (draft 2020-12) of every topic's message, read from ``schemas/json/``.

The files are the contract: the worker's own checks read their limits from them (the dead-letter
reasons, the ``ts`` forms), and the tests validate what real workers write against them.

>>> sorted(SCHEMAS)
['drift.alerts', 'drift.episodes', 'drift.signals', 'texts', 'texts.dlq', 'texts.scored']
>>> schema_role("texts.scored-1a2b"), schema_role("texts"), schema_role("orders")
('texts.scored', 'texts', None)
>>> validate("texts", {"text": "my card was declined", "ts": 1795430000})
Traceback (most recent call last):
...
streamscore.schemas.contract.SchemaError: texts: at ts: 1795430000 is not valid under any of the given schemas
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent / "json"
SCHEMAS: dict[str, dict[str, Any]] = {
    p.name.removesuffix(".schema.json"): json.loads(p.read_text())
    for p in sorted(SCHEMA_DIR.glob("*.schema.json"))
}
"""Each topic role (the default topic name) and its schema."""


class SchemaError(ValueError):
    """A message does not match its topic's schema."""


def schema_role(topic: str) -> str | None:
    """The schema a topic's messages follow, from its name: the default name, or one with a
    ``-suffix`` (``texts.scored-staging``); None for a name we cannot tell."""
    for name in (topic, topic.rsplit("-", 1)[0]):
        if name in SCHEMAS:
            return name
    return None


@cache
def _validator(role: str) -> Any:
    # jsonschema is a test dependency: the worker's hot path checks with plain Python.
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    registry: Registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values()
    )
    return Draft202012Validator(SCHEMAS[role], registry=registry)


def validate(role: str, message: Any) -> None:
    """Raise :class:`SchemaError` naming the first field that breaks ``role``'s schema."""
    errors = sorted(_validator(role).iter_errors(message), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "the top"
        raise SchemaError(f"{role}: at {where}: {e.message[:300]}")


def ts_rules() -> tuple[str, float, float]:
    """The ``texts`` schema's forms of ``ts``: the ISO-8601 pattern and the epoch-ms range."""
    forms = SCHEMAS["texts"]["properties"]["ts"]["oneOf"]
    text = next(f for f in forms if f["type"] == "string")
    number = next(f for f in forms if f["type"] == "number")
    return text["pattern"], float(number["minimum"]), float(number["exclusiveMaximum"])


def dead_letter_reasons() -> tuple[str, ...]:
    return tuple(SCHEMAS["texts.dlq"]["properties"]["reason"]["enum"])
