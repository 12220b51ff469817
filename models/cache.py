"""An LRU cache of embeddings, keyed by normalised text, so replays and duplicates cost nothing.

The embedder encodes the *normalised* text (whitespace runs collapsed, ends stripped), so a
vector depends on its key alone and a cache hit returns exactly what encoding would: scores
stay reproducible whatever the cache held. One cache belongs to one embedder (one model and
backend); a worker that switches embedder starts a new one.

``SharedCache`` is the same idea in Redis, shared by every worker of an encoder: its keys start
with the encoder's fingerprint (weights, backend, device kind), so two encoders never read each
other's vectors. Whoever may write to that Redis could otherwise choose what a worker scores, so
each value carries a tag: an HMAC-SHA256 of its key and vector under ``secret``
(``STREAMSCORE_EMBED_CACHE_SECRET``), or without one a SHA-256 checksum that catches garbage but
not a forger. A value whose tag does not match, or that holds NaN or infinity, is a miss.

>>> cache = EmbeddingCache(maxsize=2)
>>> normalise("  where is   my parcel ")
'where is my parcel'
>>> cache.put("a", np.ones(3, dtype=np.float32)); cache.put("b", np.zeros(3, dtype=np.float32))
>>> cache.get("a") is not None, cache.get("c") is None
(True, True)
>>> cache.put("c", np.ones(3, dtype=np.float32))  # evicts "b", the least recently used
>>> sorted(cache.keys()), (cache.hits, cache.misses)
(['a', 'c'], (1, 1))
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("streamscore.cache")
TAG_BYTES = 16  # of HMAC-SHA256 (or SHA-256) before the float32 vector in each Redis value


def normalise(text: str) -> str:
    """The cache key and the text the encoder sees: whitespace runs → one space, ends stripped.

    WordPiece and most subword tokenizers split on whitespace first, so this does not change
    what the model computes for them.
    """
    return " ".join(text.split())


@dataclass
class EmbeddingCache:
    """Least-recently-used map from normalised text to its embedding vector."""

    maxsize: int = 20_000
    hits: int = 0
    misses: int = 0
    _items: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, repr=False)

    def get(self, key: str) -> np.ndarray | None:
        vec = self._items.get(key)
        if vec is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return vec

    def put(self, key: str, vec: np.ndarray) -> None:
        if self.maxsize <= 0:
            return
        self._items[key] = vec
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def keys(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class SharedCache:
    """Embeddings in Redis, shared by workers on one encoder: ``get_many`` / ``put_many``.

    A cache must never stop scoring: when Redis fails, the batch is encoded as if every text
    missed, and Redis is left alone for ``retry_s`` so a dead server does not add its timeout to
    every batch. Values are a tag and the raw float32 bytes, so a hit is bit-identical to encoding.

    >>> c = SharedCache(None, "enc", 2, secret="s")
    >>> v = np.array([0.5, -1.0], dtype=np.float32)
    >>> value = c.seal("k", v)
    >>> len(value), c.open("k", value).tolist(), c.open("other-key", value), c.open("k", b"x" * 24)
    (24, [0.5, -1.0], None, None)
    >>> c.open("k", c.seal("k", np.array([np.nan, 1.0], dtype=np.float32))) is None
    True
    """

    client: Any  # a redis.Redis (thread-safe: scorer threads share it)
    namespace: str  # the encoder's fingerprint
    dim: int
    ttl_s: int = 7 * 24 * 3600
    retry_s: float = 10.0
    hits: int = 0
    misses: int = 0
    errors: int = 0
    refused: int = 0  # values whose tag did not match or that held NaN or infinity
    down_until: float = 0.0
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def connect(
        cls, url: str, namespace: str, dim: int, ttl_s: int = 7 * 24 * 3600, secret: str | None = None
    ) -> SharedCache:
        """A cache on the Redis at ``url`` (``redis://host:6379/0``); it connects on first use."""
        try:
            import redis
        except ImportError:
            raise RuntimeError(
                "embed_cache_url needs the redis client: pip install 'streamscore[redis]'"
            ) from None
        if not secret:
            log.warning(
                "the shared embedding cache has no secret (STREAMSCORE_EMBED_CACHE_SECRET): its values "
                "are checked for corruption, not for who wrote them"
            )
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return cls(client, namespace, dim, ttl_s, secret=secret)

    def for_encoder(self, namespace: str, dim: int) -> SharedCache:
        """The same Redis for another encoder, under that encoder's keys."""
        return SharedCache(self.client, namespace, dim, self.ttl_s, self.retry_s, secret=self.secret)

    def key(self, text: str) -> str:
        # emb2: values carry a tag (before: bare vectors, now read as misses and written again)
        return f"streamscore:emb2:{self.namespace}:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"

    def _tag(self, key: str, vector_bytes: bytes) -> bytes:
        message = key.encode() + b"\0" + vector_bytes
        if self.secret:
            return hmac.new(self.secret.encode(), message, hashlib.sha256).digest()[:TAG_BYTES]
        return hashlib.sha256(message).digest()[:TAG_BYTES]

    def seal(self, key: str, vec: np.ndarray) -> bytes:
        """The Redis value of ``vec`` under ``key``: its tag, then its float32 bytes."""
        data = np.asarray(vec, dtype=np.float32).tobytes()
        return self._tag(key, data) + data

    def open(self, key: str, value: Any) -> np.ndarray | None:
        """The vector a Redis value holds, None unless it is one this encoder's workers wrote."""
        if not isinstance(value, bytes) or len(value) != TAG_BYTES + 4 * self.dim:
            return None
        tag, data = value[:TAG_BYTES], value[TAG_BYTES:]
        vec = np.frombuffer(data, dtype=np.float32).copy()
        if not hmac.compare_digest(tag, self._tag(key, data)) or not np.isfinite(vec).all():
            self.refused += 1
            if self.refused % 1_000 == 1:
                log.warning(
                    "refused %d shared embedding(s) whose tag did not match or that were not finite "
                    "(written by another secret, or not by a worker): encoding those texts instead",
                    self.refused,
                )
            return None
        return vec

    def get_many(self, texts: list[str]) -> list[np.ndarray | None]:
        """The cached vector of each text, None where Redis has none (or cannot answer)."""
        if not texts or time.monotonic() < self.down_until:
            return [None] * len(texts)
        keys = [self.key(t) for t in texts]
        try:
            raw = self.client.mget(keys)
        except Exception as exc:  # any Redis or socket trouble: encode instead
            self._failed("read", exc)
            return [None] * len(texts)
        out = [self.open(key, value) for key, value in zip(keys, raw, strict=True)]
        found = sum(v is not None for v in out)
        self.hits += found
        self.misses += len(out) - found
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        if not items or time.monotonic() < self.down_until:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for text, vec in items.items():
                key = self.key(text)
                pipe.set(key, self.seal(key, vec), ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:
            self._failed("write", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        self.down_until = time.monotonic() + self.retry_s
        log.warning(
            "shared embedding cache: %s failed (%s); encoding without it for %.0f s",
            what,
            exc,
            self.retry_s,
        )
