"""Keeping Python's cyclic garbage collector off the worker's long-lived objects.

The model, tokenizer, torch and Faust leave about 430,000 objects, none of them garbage, and
every full collection walked them all, with every thread stopped, several times in a run
(docs/performance-log.md). :func:`freeze_long_lived` puts what is alive at start out
of the collector's sight. A frozen object is still freed when its last reference goes, but one
in a reference cycle (a SentenceTransformer model is) is never collected while frozen, so an
encoder replaced by a hot swap is handed to :class:`Retirement`, which lets the collector see
everything again until that encoder is gone, then freezes what is left.

>>> class Model: ...
>>> old = Model(); old.me = old  # a reference cycle, as in a real model
>>> retirement = Retirement()
>>> freeze_long_lived() > 0
True
>>> retirement.retire(old); del old
>>> retirement.settle()  # collected now, and what is alive is frozen again
True
>>> gc.get_freeze_count() > 0
True
>>> gc.unfreeze()
"""

from __future__ import annotations

import gc
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("streamscore.worker")


def freeze_long_lived() -> int:
    """Collect once, then freeze every object alive now; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@dataclass
class Retirement:
    """Objects frozen with the rest that are no longer wanted and may sit in reference cycles."""

    waiting: list[weakref.ref] = field(default_factory=list)
    patience: int = 10  # collections to wait for them; then they are still wanted somewhere
    tries: int = 0

    def retire(self, obj: Any) -> None:
        """``obj`` is no longer wanted: unfreeze, so that it can be collected once unused."""
        if gc.get_freeze_count():
            gc.unfreeze()
            self.waiting.append(weakref.ref(obj))
            self.tries = 0

    def settle(self) -> bool:
        """Collect; once every retired object is gone, freeze what is alive again. Returns
        whether nothing is waiting any more (call it now and then: an object still in use by
        a batch in flight goes at a later call)."""
        if not self.waiting:
            return True
        gc.collect()
        self.waiting = [ref for ref in self.waiting if ref() is not None]
        self.tries += 1
        if self.waiting and self.tries < self.patience:
            return False
        if self.waiting:
            log.warning(
                "%d replaced object(s) still referenced after %d collections; not waiting for them",
                len(self.waiting),
                self.tries,
            )
            self.waiting = []
        gc.freeze()
        return True
