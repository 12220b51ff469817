"""An LRU cache of embeddings, keyed by normalised text, so replays and duplicates cost nothing.

The embedder encodes the *normalised* text (whitespace runs collapsed, ends stripped), so a
vector depends on its key alone and a cache hit returns exactly what encoding would: scores
stay reproducible whatever the cache held. One cache belongs to one embedder (one model and
backend); a worker that switches embedder starts a new one.

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

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


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
