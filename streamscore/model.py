"""A loaded model that scores texts or messages the way the worker does, from plain code, a
notebook (a running event loop) or an async consumer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamscore.models.batch import BatchLimits, BatchOutput, RawMessage, process_batch
from streamscore.models.embedder import Embedder
from streamscore.models.registry import Registry
from streamscore.models.scoring import Scorer, Scores
from streamscore.results import DeadLetterRecord, Result, Scored, ScoredText
from streamscore.schemas.messages import Origin
from streamscore.streams.settings import Settings

Item = Any
"""What :meth:`Model.score` takes: a text, a message as a dict or as the bytes of a Kafka value,
or a consumer record (anything with ``value``, ``topic``, ``partition``, ``offset``: aiokafka's,
confluent-kafka's after ``.value()`` is read, Faust's ``EventT.message``)."""


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

    def score(self, items: Item | Iterable[Item], topic: str = "texts") -> Scored:
        """Score one item or many; those without an origin of their own are numbered in
        ``topic`` partition 0 (so a text without an id gets the id ``texts-0-<n>``). Inside a
        running event loop (a notebook) it scores on a thread of its own and waits; there,
        ``await model.ascore(...)`` leaves the loop free meanwhile."""
        batch = _as_batch(items)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(batch, topic))
        with ThreadPoolExecutor(1, thread_name_prefix="streamscore-score") as pool:
            return pool.submit(asyncio.run, self.ascore(batch, topic)).result()

    async def ascore(self, items: Item | Iterable[Item], topic: str = "texts") -> Scored:
        """:meth:`score` for code already in an event loop: the encoder runs on a thread."""

        async def score(texts: list[str]) -> tuple[Scores, str]:
            return await asyncio.to_thread(self.scorer.score, texts), self.scorer.version

        out = await process_batch(_raw_messages(_as_batch(items), topic), score, self.limits)
        return _scored(out)

    def score_one(self, item: Item, topic: str = "texts") -> Result:
        """One message: its :class:`ScoredText`, or for a bad one its :class:`DeadLetterRecord`
        (with the reason); it never raises for what the message holds."""
        out = self.score([item], topic)
        return out.records[0] if out.records else out.dead_letters[0]


def load_model(
    model: str | Path | None = None,
    registry: str | Path | None = None,
    *,
    device: str | None = None,
    top_k: int | None = None,
    limits: BatchLimits | None = None,
) -> Model:
    """Load ``model`` (a version such as ``v0003`` or ``v3``, an artifact directory, or None for
    the registry's CURRENT) with the encoder it was trained on. What is not given comes from the
    same settings as the CLI's (``STREAMSCORE_REGISTRY``, ``STREAMSCORE_MODEL``,
    ``STREAMSCORE_DEVICE``, ``STREAMSCORE_TOP_K``, the input limits ...; docs/configuration.md)."""
    settings = Settings.from_env()
    artifact = Registry(Path(registry or settings.registry)).load(str(model or settings.model or "") or None)
    options = settings.replace(device=device or settings.device).embedder_options(cached=False)
    embedder = Embedder.load(artifact.embedder_name, **options)
    return Model(Scorer.load(artifact, embedder, top_k or settings.top_k), limits or settings.batch_limits)


def list_models(registry: str | Path | None = None) -> list[dict[str, Any]]:
    """The registry's versions, oldest first: validation metrics, OOD strategy, which is CURRENT
    (``registry``: as for :func:`load_model`)."""
    return Registry(Path(registry or Settings.from_env().registry)).describe()


def _is_one(item: Any) -> bool:
    """A single message rather than many: a text, bytes, a dict or a consumer record."""
    return isinstance(item, (str, bytes, dict)) or (hasattr(item, "value") and hasattr(item, "offset"))


def _as_batch(items: Item | Iterable[Item]) -> list[Item]:
    """``items`` as a list; one message alone (a text is not an iterable of characters here).

    >>> _as_batch("my card was declined"), _as_batch(["a", {"text": "b"}])
    (['my card was declined'], ['a', {'text': 'b'}])
    """
    return [items] if _is_one(items) else list(items)


def _raw_messages(items: list[Item], topic: str) -> list[RawMessage]:
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
    return Scored(
        [ScoredText.from_json(json.loads(v)) for _, v in out.scored],
        [DeadLetterRecord.from_json(json.loads(v)) for _, v in out.dead],
    )


__all__: Sequence[str] = ["Model", "list_models", "load_model"]
