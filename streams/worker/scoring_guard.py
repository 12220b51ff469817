"""A model that fails on every text holds the stream instead of emptying it into the DLQ.

A batch whose every message failed scoring (after ``process_batch``'s retries and its
one-by-one pass) is either a batch of poison messages or a broken model: an encoder out of
memory, a device gone, a model that cannot run. A probe text tells them apart. If the model
scores it, the messages were at fault and go to the dead-letter topic as before. If not, the
batch is held and scored again after a growing pause; meanwhile the worker reports itself
failing (``/healthz`` 503, ``streamscore_scoring_up`` 0) and takes no more input (the queues
before the scorers fill), and nothing is committed past the held batch. When the probe scores
again (the device is back, a hot reload brought a model that works), the batch is scored and
the stream goes on.

>>> import asyncio
>>> from streamscore.models.batch import BatchOutput
>>> broken = {"on": True}
>>> async def model(texts):
...     if broken["on"]:
...         raise RuntimeError("CUDA error: device lost")
>>> async def process(messages):  # what process_batch gives while the model fails, then after
...     out = BatchOutput()
...     for m in messages:
...         if broken["on"]:
...             out.reasons["scoring_failed"] += 1
...         else:
...             out.scored.append((m.encode(), b"{}"))
...     return out
>>> said = []
>>> guard = ScoringGuard(model, said.append, first_pause_s=0.01)
>>> async def demo():
...     held = asyncio.ensure_future(guard.score(["m1", "m2"], process))
...     await asyncio.sleep(0.05)
...     waiting = not held.done()
...     broken["on"] = False  # the device comes back
...     return waiting, len((await held).scored)
>>> asyncio.run(demo())
(True, 2)
>>> said
['RuntimeError: CUDA error: device lost', None]
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from streamscore.models.batch import BatchOutput

log = logging.getLogger("streamscore.worker")

PROBE_TEXT = "streamscore checks that its model can score a text"
M = TypeVar("M")


def failed_whole(out: BatchOutput) -> bool:
    """Whether a batch had messages to score and scoring failed for every one of them."""
    return out.reasons.get("scoring_failed", 0) > 0 and not out.scored


@dataclass
class ScoringGuard:
    """Holds batches while the model fails on the probe text; ``report`` is told what fails
    (one line) when it starts failing and None when it scores again."""

    model: Callable[[list[str]], Awaitable[Any]]
    report: Callable[[str | None], None]
    first_pause_s: float = 1.0
    max_pause_s: float = 30.0
    failing: str | None = None  # what the probe last raised, while the model fails

    async def score(
        self, messages: list[M], process: Callable[[list[M]], Awaitable[BatchOutput]]
    ) -> BatchOutput:
        """``process(messages)``, held and done again for as long as the model cannot score."""
        out = await process(messages)
        pause, held = self.first_pause_s, False
        while failed_whole(out):
            error = await self.probe()
            if error is None:
                if not held:
                    return out  # the model works: these messages are at fault, dead-lettered
                self._works()
                out, held = await process(messages), False
                continue
            if not held:
                log.error(
                    "the model fails on every text (%s): holding %d messages and taking no more "
                    "until it scores again; nothing goes to the dead-letter topic meanwhile",
                    error,
                    len(messages),
                )
            held = True
            self._fails(error)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.max_pause_s)
        return out

    async def probe(self) -> str | None:
        """What the model raises on a text (one line), or None when it scores it."""
        try:
            # A text never seen before: a cached embedding would answer without the encoder.
            await self.model([f"{PROBE_TEXT} ({uuid.uuid4().hex[:12]})"])
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"

    def _fails(self, error: str) -> None:
        if self.failing != error:
            self.failing = error
            self.report(error)

    def _works(self) -> None:
        if self.failing is not None:
            log.warning("the model scores again: the held messages go on")
            self.failing = None
            self.report(None)
