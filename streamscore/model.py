"""A loaded model that scores a batch of texts or messages the way the worker does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamscore.models.embedder import Embedder
from streamscore.models.registry import Registry
from streamscore.models.scoring import Scorer, Scores
from streamscore.schemas.messages import Origin
from streamscore.streams.worker.batch import BatchLimits, BatchOutput, RawMessage, process_batch

Item = Any
"""What :meth:`Model.score` takes: a text, a message as a dict or as the bytes of a Kafka value,
or a consumer record (anything with ``value``, ``topic``, ``partition``, ``offset``: aiokafka's,
confluent-kafka's after ``.value()`` is read, Faust's ``EventT.message``)."""


@dataclass(frozen=True)
class Scored:
    """What came of a batch: ``texts.scored`` records (Kafka key: ``record["id"]``) and
    ``texts.dlq`` records (key: ``record["key"]``), each in input order. Nothing is dropped:
    every item is in one list or the other."""

    records: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Model:
    """A trained model bound to its encoder. Heavy work is batched: pass many items at once."""

    scorer: Scorer
    limits: BatchLimits = field(default_factory=BatchLimits)

    @property
    def version(self) -> str:
        return self.scorer.version

    @property
    def labels(self) -> list[str]:
        return list(self.scorer.artifact.head.labels)

    @property
    def ood_threshold(self) -> float:
        return float(self.scorer.artifact.ood_threshold)

    def score(self, items: Iterable[Item], topic: str = "texts") -> Scored:
        """Score ``items``; those without an origin of their own are numbered in ``topic``
        partition 0 (so a text without an id gets the id ``texts-0-<n>``)."""
        return asyncio.run(self.ascore(items, topic))

    async def ascore(self, items: Iterable[Item], topic: str = "texts") -> Scored:
        """:meth:`score` for code already in an event loop: the encoder runs on a thread."""

        async def score(texts: list[str]) -> tuple[Scores, str]:
            return await asyncio.to_thread(self.scorer.score, texts), self.scorer.version

        out = await process_batch(_raw_messages(items, topic), score, self.limits)
        return _scored(out)


def load_model(
    model: str | Path | None = None,
    registry: str | Path = "artifacts",
    *,
    device: str = "auto",
    top_k: int = 3,
    limits: BatchLimits | None = None,
) -> Model:
    """Load ``model`` (a version such as ``v3``, an artifact directory, or None for the
    registry's CURRENT) with the encoder it was trained on, on ``device`` (auto: CUDA if there)."""
    artifact = Registry(Path(registry)).load(str(model) if model is not None else None)
    embedder = Embedder.load(artifact.embedder_name, device)
    return Model(Scorer.load(artifact, embedder, top_k), limits or BatchLimits())


def list_models(registry: str | Path = "artifacts") -> list[dict[str, Any]]:
    """The registry's versions, oldest first: validation metrics, OOD strategy, which is CURRENT."""
    return Registry(Path(registry)).describe()


def _raw_messages(items: Iterable[Item], topic: str) -> list[RawMessage]:
    raws = []
    for n, item in enumerate(items):
        if hasattr(item, "value") and hasattr(item, "offset"):
            key = item.key if isinstance(item.key, (bytes, type(None))) else str(item.key).encode()
            origin = Origin(item.topic, item.partition, item.offset)
            raws.append(
                RawMessage(key, _as_bytes(item.value), origin, _epoch_ms(getattr(item, "timestamp", None)))
            )
        else:
            raws.append(RawMessage(None, _as_bytes(item), Origin(topic, 0, n)))
    return raws


def _epoch_ms(ts: Any) -> int | None:
    """A record's timestamp in epoch ms: aiokafka gives ms, Faust seconds as a float."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts <= 0:
        return None
    return int(ts * 1000) if ts < 1e11 else int(ts)


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return json.dumps({"text": value}).encode()
    try:
        return json.dumps(value).encode()
    except (TypeError, ValueError):
        return repr(value).encode()  # dead-lettered as invalid JSON, with what it was


def _scored(out: BatchOutput) -> Scored:
    return Scored([json.loads(v) for _, v in out.scored], [json.loads(v) for _, v in out.dead])


__all__: Sequence[str] = ["Model", "Scored", "list_models", "load_model"]
