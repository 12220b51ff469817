"""The encode pool: every encode gets exactly its rows back, oldest first, merged under load and
split across idle threads. A stand-in forward records what each pass held."""

from __future__ import annotations

import contextlib
import gc
import random
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from streamscore.models.encode_pool import EncodePool, set_torch_threads


class Recorder:
    """A forward: each row's vector is its first two features doubled; notes every pass."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.passes: list[dict] = []
        self.delay_s, self.gate = delay_s, gate
        self.lock = threading.Lock()

    def __call__(self, features):
        if self.gate is not None:
            self.gate.wait(10)
        x = features["x"]
        with self.lock:
            self.passes.append(
                {
                    "rows": x.shape[0],
                    "width": x.shape[1],
                    "tags": set(x[:, 0].tolist()),
                    "thread": threading.get_ident(),
                }
            )
        time.sleep(self.delay_s)
        return (x[:, :2] * 2).numpy()


def group(tag: float, rows: int, width: int) -> tuple[int, dict]:
    x = torch.arange(rows * width, dtype=torch.float32).reshape(rows, width) + 1000
    x[:, 0] = tag
    return width, {"x": x, "kind": "text"}


def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def pool():
    p = EncodePool(threads=2)
    yield p
    p.close()


def test_each_encode_gets_exactly_its_rows_whatever_runs_beside_it(pool):
    forward = Recorder()
    rng = random.Random(7)
    requests = [
        [group(float(r), rng.randint(1, 90), rng.choice([8, 16, 24])) for _ in range(rng.randint(1, 4))]
        for r in range(40)
    ]
    with ThreadPoolExecutor(6) as callers:
        results = list(callers.map(lambda groups: pool.run(forward, groups, max_rows=32), requests))
    for groups, vectors in zip(requests, results, strict=True):
        assert len(vectors) == len(groups)
        for (_, features), vecs in zip(groups, vectors, strict=True):
            assert np.array_equal(vecs, (features["x"][:, :2] * 2).numpy())
    assert max(p["rows"] for p in forward.passes) <= 32
    assert pool.stats.rows == sum(f["x"].shape[0] for groups in requests for _, f in groups)


@contextlib.contextmanager
def one_thread_held(first: tuple[int, dict]):
    """A pool of one thread, held in a forward over ``first`` until the block ends, so that what
    is handed in meanwhile waits; yields the pool, the forward and ``submit(groups)``."""
    gate = threading.Event()
    forward = Recorder(gate=gate)
    held = EncodePool(threads=1)
    futures = []
    try:
        with ThreadPoolExecutor(4) as callers:

            def submit(groups):
                futures.append(callers.submit(held.run, forward, groups))
                wait_until(lambda: waiting(held) == len(futures) - 1)

            futures.append(callers.submit(held.run, forward, [first]))
            wait_until(lambda: held._busy == 1)  # noqa: SLF001 - white-box: one forward running
            yield held, forward, submit
            gate.set()
            for f in futures:
                f.result(timeout=10)
    finally:
        gate.set()
        held.close()


def waiting(pool: EncodePool) -> int:
    with pool._cond:  # noqa: SLF001 - white-box: the pool's queue, under its lock
        return sum(len(q) for q in pool._waiting.values())  # noqa: SLF001


def test_waiting_rows_of_one_width_share_a_forward():
    with one_thread_held(group(1.0, 3, 16)) as (held, forward, submit):
        for tag in (2.0, 3.0):
            submit([group(tag, 5, 16)])
    assert [p["tags"] for p in forward.passes] == [{1.0}, {2.0, 3.0}]
    assert held.stats.merged == 1 and held.stats.forwards == 2


def test_the_oldest_waiting_encode_goes_first():
    with one_thread_held(group(0.0, 1, 8)) as (_, forward, submit):
        for tag, width in enumerate((24, 8, 16), start=1):
            submit([group(float(tag), 2, width)])
    # After the forward in progress, the widths in the order their encodes came.
    assert [p["width"] for p in forward.passes] == [8, 24, 8, 16]


def test_an_idle_thread_takes_half_of_a_batch_that_would_run_alone(pool):
    forward = Recorder(delay_s=0.05)
    (vecs,) = pool.run(forward, [group(1.0, 20, 16)])
    assert len(vecs) == 20
    assert sorted(p["rows"] for p in forward.passes) == [10, 10]
    assert len({p["thread"] for p in forward.passes}) == 2
    assert pool.stats.split == 1


def test_work_too_small_to_pay_for_a_second_forward_is_not_split(pool):
    forward = Recorder(delay_s=0.02)
    pool.run(forward, [group(1.0, 2, 8)])
    # A batch of several widths goes out a width per thread, none split.
    pool.run(forward, [group(2.0, 6, 16), group(2.0, 2, 8), group(2.0, 2, 24)])
    assert sorted((p["width"], p["rows"]) for p in forward.passes) == [(8, 2), (8, 2), (16, 6), (24, 2)]
    assert pool.stats.split == 0


def test_a_failing_forward_fails_its_own_encode_and_the_pool_goes_on(pool):
    def forward(features):
        if (features["x"][:, 0] == 13).any():
            raise ValueError("poisoned row")
        return features["x"][:, :2].numpy()

    with pytest.raises(ValueError, match="poisoned row"):
        pool.run(forward, [group(13.0, 4, 8)])
    (vecs,) = pool.run(forward, [group(1.0, 4, 8)])
    assert vecs.shape == (4, 2)


def test_a_closed_pool_refuses_new_work():
    p = EncodePool(threads=1)
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.run(Recorder(), [group(1.0, 1, 8)])


def test_a_thread_waiting_for_work_holds_no_forward(pool):
    # A forward holds its model: a worker that swapped models must be able to free the old one.
    forward = Recorder()
    gone = weakref.ref(forward)
    pool.run(forward, [group(1.0, 20, 16), group(1.0, 3, 8)])
    del forward
    wait_until(lambda: gc.collect() >= 0 and gone() is None)


def test_a_thread_keeps_its_torch_threads_when_another_sets_more_before_its_first_op():
    # What broke the embedder's invariance when the pool started before the padding probe ran.
    ready, go, seen = threading.Event(), threading.Event(), []

    def encoder_thread():
        set_torch_threads(1)
        ready.set()
        go.wait(10)
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    thread = threading.Thread(target=encoder_thread)
    thread.start()
    try:
        ready.wait(10)
        torch.set_num_threads(2)  # now the last count set anywhere
    finally:
        go.set()
        thread.join(10)
        torch.set_num_threads(before)
    assert seen == [1]
