"""The encoder's threads, shared by every encode in flight: forward passes a padded width at a time.

An encode is tokenized by its caller and handed over as groups of rows of one padded width (the
embedder pads each text to a multiple of 8 tokens, so a text's vector does not depend on the
rows it shares a forward with). The pool's threads then pick the work up, a forward at a time,
each forward on one thread (so a vector does not depend on how many threads there are either):

- **Oldest first.** A thread takes the width of the oldest waiting rows, so no encode waits
  behind later ones.
- **Merged under load.** It takes every waiting row of that width, from all encodes in flight,
  up to the encode's ``max_rows``: when a worker's batches queue, they share forward passes, and
  a forward of a few rows costs nearly as much as one of sixteen (it reads all the weights).
- **Split when threads idle.** A thread that would otherwise run an encode's work alone while
  another thread waits leaves part of it to that thread, so a lightly loaded worker embeds a
  batch on every core at once instead of one batch per core (docs/performance.md). It splits
  only when that saves more than the extra forward costs (``fixed_cost_tokens``).

>>> import torch
>>> pool = EncodePool(threads=2)
>>> first_column_doubled = lambda features: features["x"].numpy()[:, :1] * 2.0
>>> groups = [(8, {"x": torch.ones(3, 8)}), (16, {"x": torch.full((5, 16), 3.0)})]
>>> [v.ravel().tolist() for v in pool.run(first_column_doubled, groups, max_rows=4)]
[[2.0, 2.0, 2.0], [6.0, 6.0, 6.0, 6.0, 6.0]]
>>> pool.stats.rows, pool.stats.forwards >= 3   # 5 rows of width 16: two forwards of at most 4
(8, True)
>>> pool.close()
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Forward = Callable[[Mapping[str, Any]], np.ndarray]
"""Features of n rows of one width → their vectors, an (n, dim) float32 array."""


@dataclass
class PoolStats:
    """What the pool has done so far: forward passes, rows, and how many of the passes held
    rows of more than one batch (``merged``) or were part of a batch split across threads."""

    forwards: int = 0
    rows: int = 0
    merged: int = 0
    split: int = 0


@dataclass(eq=False)
class _Request:
    """One ``run`` call: its groups' vectors, filled in as forwards finish."""

    sizes: list[int]
    remaining: int
    vectors: list[np.ndarray | None] = field(init=False)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    # Threads finish pieces of one request at once: the count and the arrays change together.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.sizes)

    def put(self, group: int, start: int, vecs: np.ndarray) -> None:
        with self._lock:
            out = self.vectors[group]
            if out is None:
                out = self.vectors[group] = np.empty((self.sizes[group], vecs.shape[1]), dtype=vecs.dtype)
            out[start : start + len(vecs)] = vecs
            self.remaining -= len(vecs)
            if self.remaining == 0:
                self.done.set()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
                self.done.set()


@dataclass(eq=False)
class _Piece:
    """Rows ``start:start+rows`` of one group of a request, waiting for a thread."""

    request: _Request
    group: int
    features: Mapping[str, Any]
    start: int
    rows: int
    seq: int  # the request's arrival: lower is older
    max_rows: int  # the most rows its encode lets a forward hold

    def take(self, n: int) -> _Piece:
        """The first ``n`` rows as a piece of their own; this piece keeps the rest."""
        head = _Piece(
            self.request, self.group, _rows(self.features, 0, n), self.start, n, self.seq, self.max_rows
        )
        self.features = _rows(self.features, n, self.rows)
        self.start, self.rows = self.start + n, self.rows - n
        return head


class EncodePool:
    """``threads`` threads running forward passes for whoever calls :meth:`run`."""

    def __init__(
        self,
        threads: int,
        setup: Callable[[], None] | None = None,
        fixed_cost_tokens: int = 32,
        name: str = "encoder",
    ) -> None:
        self.threads, self.fixed_cost_tokens = threads, fixed_cost_tokens
        self.stats = PoolStats()
        self._setup = setup
        self._cond = threading.Condition()
        # (forward, width) → waiting pieces, oldest first. Rows of one key may share a forward.
        self._waiting: dict[tuple[Forward, int], deque[_Piece]] = {}
        self._busy = 0
        self._closed = False
        self._seq = itertools.count()
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._workers:
            t.start()

    def run(
        self, forward: Forward, groups: Sequence[tuple[int, Mapping[str, Any]]], max_rows: int = 64
    ) -> list[np.ndarray]:
        """The vectors of each ``(width, features)`` group, in order; blocks until all are done.
        No forward holds more than ``max_rows`` rows.

        ``forward`` must be the same object (or an equal bound method) for calls whose rows may
        share a forward pass: rows are merged only under the same forward and width."""
        sizes = [_count(features) for _, features in groups]
        if not sizes or sum(sizes) == 0:
            return [np.zeros((0, 0), dtype=np.float32) for _ in sizes]
        request = _Request(sizes, sum(sizes))
        with self._cond:
            if self._closed:
                raise RuntimeError("the encode pool is closed")
            seq = next(self._seq)
            for group, ((width, features), n) in enumerate(zip(groups, sizes, strict=True)):
                if n:
                    piece = _Piece(request, group, features, 0, n, seq, max(1, max_rows))
                    self._waiting.setdefault(_key(forward, width), deque()).append(piece)
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return [v if v is not None else np.zeros((0, 0), dtype=np.float32) for v in request.vectors]

    def close(self) -> None:
        """Stop the threads once the work already handed in is done."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._workers:
            if t is not threading.current_thread():
                t.join()

    # --- the threads -----------------------------------------------------------------------------

    def _work(self) -> None:
        if self._setup is not None:
            self._setup()
        while self._work_once():
            pass

    def _work_once(self) -> bool:
        """Wait for rows, run one forward over them; False once closed with nothing left. Its
        own call, so that a thread waiting for work holds no forward (and with it no model)."""
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if not self._waiting:
                return False
            idle_peers = self.threads - self._busy - 1
            key, pieces, split = self._pick(idle_peers)
            self._busy += 1
            if self._waiting:
                self._cond.notify()  # rows are left: a waiting peer may take them
            self.stats.forwards += 1
            self.stats.rows += sum(p.rows for p in pieces)
            self.stats.merged += len({id(p.request) for p in pieces}) > 1
            self.stats.split += split
        try:
            live = [p for p in pieces if p.request.error is None]
            if live:
                self._forward(key[0], live)
        finally:
            with self._cond:
                self._busy -= 1
        return True

    def _forward(self, forward: Forward, pieces: list[_Piece]) -> None:
        try:
            vecs = forward(_concat([p.features for p in pieces]))
        except BaseException as exc:  # noqa: BLE001 (handed to the caller, who raises it)
            for p in pieces:
                p.request.fail(exc)
            return
        at = 0
        for p in pieces:
            p.request.put(p.group, p.start, vecs[at : at + p.rows])
            at += p.rows

    def _pick(self, idle_peers: int) -> tuple[tuple[Forward, int], list[_Piece], bool]:
        """Under the lock: the next forward's key and pieces, and whether it splits a batch."""
        oldest = min(q[0].seq for q in self._waiting.values())
        rows = {k: sum(p.rows for p in q) for k, q in self._waiting.items()}
        # Of the widths the oldest request waits on, the one with the most tokens first, so the
        # small ones are left to run beside it.
        key = max((k for k, q in self._waiting.items() if q[0].seq == oldest), key=lambda k: rows[k] * k[1])
        queue = self._waiting[key]
        width, n = key[1], min(rows[key], queue[0].max_rows)
        take, split = n, False
        if idle_peers > 0 and n > 1:
            fixed = self.fixed_cost_tokens
            # Tokens the idle peers could run meanwhile: every other waiting forward.
            rest = sum(fixed + r * k[1] for k, r in rows.items() if k != key)
            rest += (rows[key] - n) * width
            # Split when this forward alone would finish last, by more than the extra forward
            # costs: half the difference is what the split saves.
            if n * width - rest >= 2 * fixed:
                peers = min(idle_peers, n - 1)
                take = min(n, max(1, math.ceil((n + rest / width) / (peers + 1))))
                split = take < n
        taken: list[_Piece] = []
        while take > 0:
            piece = queue[0]
            if piece.rows > take:
                taken.append(piece.take(take))
                break
            taken.append(queue.popleft())
            take -= piece.rows
        if not queue:
            del self._waiting[key]
        return key, taken, split


def _key(forward: Forward, width: int) -> tuple[Forward, int]:
    assert isinstance(forward, Hashable)
    return forward, width


def _count(features: Mapping[str, Any]) -> int:
    for value in features.values():
        if hasattr(value, "shape"):
            return int(value.shape[0])
    raise ValueError("features hold no tensor to count rows in")


def _rows(features: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] if hasattr(v, "shape") else v for k, v in features.items()}


def _concat(parts: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    if len(parts) == 1:
        return parts[0]
    import torch

    return {k: torch.cat([p[k] for p in parts]) if hasattr(v, "shape") else v for k, v in parts[0].items()}


_shared: dict[int, EncodePool] = {}
_shared_lock = threading.Lock()


def shared_pool(threads: int) -> EncodePool:
    """This process's pool of ``threads`` encoder threads, started at the first call. Every
    CPU embedder of the process encodes through it (rows of different models never share a
    forward), as torch's own threads are shared; it holds no model once their encodes end."""
    with _shared_lock:
        pool = _shared.get(threads)
        if pool is None:
            pool = _shared[threads] = EncodePool(threads, setup=_one_torch_thread)
        return pool


def set_torch_threads(n: int) -> None:
    """Run the calling thread's torch ops on ``n`` CPU threads from now on, whatever other
    threads set later."""
    import torch

    # ATen gives a thread, at its first parallel op, the count that any thread set last; have
    # that happen now, or a set_num_threads elsewhere before this thread's first forward undoes n.
    torch.get_num_threads()
    torch.set_num_threads(n)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """The calling thread's torch ops on ``n`` CPU threads for the block, its count before after."""
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    set_torch_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_torch_thread() -> None:
    # A forward on several threads splits its matrix products by their size, and with them the
    # rounding: one thread per forward keeps a text's vector the same whatever else is encoded.
    set_torch_threads(1)


def _close_shared() -> None:
    for pool in list(_shared.values()):
        pool.close()


# At exit the threads finish what they hold before the interpreter (and ONNX Runtime's
# sessions) go away under them.
atexit.register(_close_shared)
if hasattr(os, "register_at_fork"):  # a forked child has none of its parent's threads
    os.register_at_fork(after_in_child=_shared.clear)
