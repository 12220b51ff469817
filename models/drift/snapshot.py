"""A drift monitor's state as one ``drift.state`` record of at most 512 KiB, whatever the texts.

The bulk of a snapshot is evidence: up to 150 sampled foreign texts per open episode, each with
its packed embedding, and the latest foreign signals kept for an episode about to start. Open
episodes of one incident sample much the same messages, so each text and embedding is written
once, in ``shared``, and referred to by its index. UTF-8 is written as it is (escaped, a CJK
character takes 6 bytes and an emoji 12). If the record is still too big (several episodes of
long non-Latin texts), each episode's sample is cut to the messages whose ids hash lowest (still
a uniform sample, as the sample itself is) and the oldest lead signals go, by steps, then texts
are shortened: counts and detector states are never cut.

>>> seen = {"id": "m1", "text": "ü" * 10, "embedding": "AAA="}
>>> state = {"evidence": {name: {"sample": [seen], "most_foreign": [seen]} for name in "ab"},
...          "lead": [[7, seen]]}
>>> data = encode(state)
>>> data.count("ü".encode()) == 10  # written once, unescaped
True
>>> decode(data) == state
True
>>> len(encode({"evidence": {}, "lead": [[1, {"id": "x", "text": "😀" * 2000, "embedding": ""}]]},
...            max_bytes=1_000)) <= 1_000
True
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from streamscore.models.drift.evidence import priority

SNAPSHOT_MAX_BYTES = 512 * 1024  # half of Kafka's default max.message.bytes
# Fractions of each episode's sample and of the lead kept, tried in turn until the record fits.
KEEP = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.0)
TEXT_CHARS = (None, 60, 0)  # then texts shortened to this many characters
_BULKY = ("text", "embedding")


def encode(state: dict[str, Any], max_bytes: int = SNAPSHOT_MAX_BYTES) -> bytes:
    """``state`` (a :meth:`DriftMonitor.state`) as a record of at most ``max_bytes``."""
    full = _dump(_share(state, 1.0, None))
    if len(full) <= max_bytes:
        return full
    base = len(_dump(_share(state, 0.0, 0)))
    for chars in TEXT_CHARS:
        for keep in KEEP:
            if chars is None and base + keep * (len(full) - base) > 1.2 * max_bytes:
                continue  # cannot fit by the estimate: skip the encoding
            data = _dump(_share(state, keep, chars))
            if len(data) <= max_bytes:
                return data
    raise ValueError(f"a drift snapshot without texts is still over {max_bytes:,} bytes")


def encode_many(states: dict[str, dict[str, Any]], max_bytes: int = SNAPSHOT_MAX_BYTES) -> bytes:
    """The states of several monitors (model version → state: versions whose signals interleave
    while workers reload) in one record, each within an equal share of ``max_bytes``.

    >>> data = encode_many({"v0001": {"seen": 1}, "v0002": {"seen": 2}})
    >>> {version: state["seen"] for version, state in decode_many(data).items()}
    {'v0001': 1, 'v0002': 2}
    """
    share = max_bytes // max(len(states), 1) - 200  # the version keys and the braces around
    parts = [json.dumps(version).encode() + b":" + encode(state, share) for version, state in states.items()]
    return b'{"monitors":{' + b",".join(parts) + b"}}"


def decode_many(data: bytes) -> dict[str, dict[str, Any]]:
    """Model version → state, from :func:`encode_many` or a one-monitor snapshot of before."""
    state = json.loads(data)
    if "monitors" in state:
        return {version: decode(s) for version, s in state["monitors"].items()}
    return {state["model_version"]: decode(state)}


def decode(data: bytes | dict[str, Any]) -> dict[str, Any]:
    """The state :func:`encode` wrote (a snapshot of the earlier format passes unchanged)."""
    state = json.loads(data) if isinstance(data, bytes | str) else copy.deepcopy(data)
    shared = state.pop("shared", None)
    if shared is None:
        return state

    def expand(item: dict[str, Any]) -> dict[str, Any]:
        ref = item.pop("shared")
        return {**item, **dict(zip(_BULKY, shared[ref], strict=True))}

    for ev in state.get("evidence", {}).values():
        ev["sample"] = [expand(x) for x in ev.get("sample", [])]
        ev["most_foreign"] = [expand(x) for x in ev.get("most_foreign", [])]
    state["lead"] = [[seen, expand(sig)] for seen, sig in state.get("lead", [])]
    return state


def _dump(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()


def _share(state: dict[str, Any], keep: float, chars: int | None) -> dict[str, Any]:
    """A copy of ``state`` whose texts and embeddings sit once in ``shared``; each episode's
    sample and the lead cut to the fraction ``keep``, texts to ``chars`` characters."""
    shared: list[list[Any]] = []
    index: dict[tuple[Any, Any], int] = {}

    def refer(item: dict[str, Any]) -> dict[str, Any]:
        text = item.get("text")
        bulky = (text[:chars] if chars is not None and isinstance(text, str) else text, item.get("embedding"))
        if bulky not in index:
            index[bulky] = len(shared)
            shared.append(list(bulky))
        return {**{k: v for k, v in item.items() if k not in _BULKY}, "shared": index[bulky]}

    evidence = {}
    for name, ev in state.get("evidence", {}).items():
        sample = ev.get("sample", [])
        kept = sorted(sample, key=lambda x: priority(str(x["id"])))[: math.ceil(keep * len(sample))]
        evidence[name] = {
            **ev,
            "sample": [refer(x) for x in kept],
            "most_foreign": [refer(x) for x in ev.get("most_foreign", [])],
        }
    lead = state.get("lead", [])
    lead = lead[len(lead) - math.ceil(keep * len(lead)) :]
    return {
        **state,
        "evidence": evidence,
        "lead": [[seen, refer(sig)] for seen, sig in lead],
        "shared": shared,
    }
