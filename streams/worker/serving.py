"""The model in service, and switching to a newly promoted one between two batches.

The worker follows the registry's CURRENT pointer. A new version is loaded and checked off the
event loop; only when it loads cleanly does it replace the scorer, in one assignment, so every
batch is scored by exactly one version and every output names it. A broken artifact is refused
once, loudly, and the worker keeps serving what it had.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from streamscore.models.artifact import ArtifactError
from streamscore.models.embedder import Embedder, setup_encoder_thread
from streamscore.models.registry import Registry
from streamscore.models.scoring import Scorer, Scores
from streamscore.streams.worker.memory import Retirement

log = logging.getLogger("streamscore.worker")


def batches_in_flight(encoder_threads: int) -> int:
    """How many batches may be scored at once: one per encoder thread (up to 4), and one more,
    so that the encoder finds the next batch tokenized when it finishes one.

    >>> batches_in_flight(2), batches_in_flight(16)
    (3, 5)
    """
    return min(encoder_threads, 4) + 1


@dataclass
class ModelHolder:
    """The scorer in service; ``registry`` set means: follow its CURRENT pointer."""

    scorer: Scorer
    registry: Registry | None = None
    refused: dict[tuple[str, float], str] = field(default_factory=dict)
    # An encoder replaced by a swap is frozen with the start-up objects and sits in reference
    # cycles: it is collected once nothing uses it (streams/worker/memory.py).
    retirement: Retirement = field(default_factory=Retirement)
    # Model work runs off the event loop, so it keeps heartbeating: a thread per batch in flight
    # (tokens, head, OOD), each set up with its share of the cores. On a CPU their forward passes
    # run on the process's encode pool, shared by the batches in flight (models/encode_pool.py).
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        embedder = self.scorer.embedder
        # Not ``embedder.setup_thread``: the pool would keep that embedder alive after a swap.
        setup = functools.partial(setup_encoder_thread, str(embedder.device), embedder.encoder_threads)
        self.executor = ThreadPoolExecutor(
            max_workers=self.in_flight, thread_name_prefix="scorer", initializer=setup
        )

    @property
    def in_flight(self) -> int:
        return batches_in_flight(self.scorer.embedder.encoder_threads)

    @property
    def version(self) -> str:
        return self.scorer.version

    async def score(self, texts: list[str]) -> tuple[Scores, str]:
        scorer = self.scorer  # one model for the whole call, even if swapped meanwhile
        scores = await asyncio.get_running_loop().run_in_executor(self.executor, scorer.score, texts)
        return scores, scorer.version

    async def follow_registry(self) -> str | None:
        """Switch to CURRENT if it changed and loads cleanly; returns the new version, if any."""
        if self.registry is None:
            return None
        self.retirement.settle()
        wanted = self.registry.current()  # a tiny file: cheap enough for the event loop
        if wanted is None or wanted == self.scorer.version:
            return None
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._switch_to, wanted)

    def _switch_to(self, wanted: str) -> str | None:
        assert self.registry is not None
        manifest = self.registry.path_of(wanted) / "manifest.json"
        key = (wanted, manifest.stat().st_mtime if manifest.exists() else 0.0)
        if key in self.refused:
            return None
        try:
            artifact = self.registry.load(wanted)
            embedder = self.scorer.embedder
            if artifact.embedder_name != embedder.name:
                embedder = Embedder.load(
                    artifact.embedder_name,
                    embedder.device,
                    embedder.batch_size,
                    backend=embedder.backend,
                    cache_size=embedder.cache.maxsize if embedder.cache else 0,
                    encoder_threads=embedder.encoder_threads,
                    trace=embedder.trace,
                    cache_dir=embedder.cache_dir,
                )
                embedder.warm_up()  # here, off the event loop, not in the first batch
                if self.scorer.embedder.shared is not None:  # same Redis, the new encoder's keys
                    embedder.shared = self.scorer.embedder.shared.for_encoder(
                        embedder.fingerprint, embedder.dim
                    )
            new = Scorer.load(artifact, embedder, self.scorer.top_k)
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            self.refused[key] = str(exc)
            log.error("refusing model %s: %s; still serving %s", wanted, exc, self.scorer.version)
            return None
        if new.embedder is not self.scorer.embedder:
            self.retirement.retire(self.scorer.embedder.model)
        old, self.scorer = self.scorer.version, new
        log.info("now serving model %s (was %s)", new.version, old)
        return new.version
