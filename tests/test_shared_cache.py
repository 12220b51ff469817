"""The embedding cache shared by workers through a real Redis server (``embed_cache_url``).

What a user relies on: a text one worker has embedded costs another worker nothing and scores
bit for bit the same; two different encoders never read each other's vectors; and Redis going
away slows scoring down (everything is encoded again) but never stops it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from streamscore.models.cache import SharedCache
from streamscore.models.embedder import Embedder, resolve_model_path
from streamscore.streams.kafka.broker import free_port, stop_process
from tests.conftest import debian_server, small_clinc_rows, start_worker, stop_worker
from tests.kafka_helpers import collect, send_json

TEXTS = [r["text"] for r in small_clinc_rows() if r["split"] == "test"][:120]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real, throwaway redis-server (no persistence) for this module."""
    port = free_port()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            debian_server("redis-server", "redis-server", "redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.1)
    yield url
    stop_process(proc, timeout_s=10)


@pytest.fixture()
def flushed(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.config_resetstat()  # keyspace hit/miss counts start at 0 for each test
    return client


def _count_encodes(emb: Embedder) -> list[int]:
    """Wrap the model call of ``emb``: the list collects how many texts each call encoded."""
    calls: list[int] = []
    inner = emb._encode  # noqa: SLF001 - counts the model calls behind the caches

    def counting(texts: list[str], progress: bool) -> np.ndarray:
        calls.append(len(texts))
        return inner(texts, progress)

    emb._encode = counting  # type: ignore[method-assign]  # noqa: SLF001
    return calls


def test_a_second_worker_gets_every_vector_from_redis_bit_for_bit(redis_url, flushed):
    # Two embedders loaded separately, as two workers would; no in-process cache in the way.
    first = Embedder.load(device="cpu", shared_cache_url=redis_url)
    second = Embedder.load(device="cpu", shared_cache_url=redis_url)
    assert first.fingerprint == second.fingerprint
    plain = Embedder.load(device="cpu").encode(TEXTS)

    calls_first, calls_second = _count_encodes(first), _count_encodes(second)
    a = first.encode(TEXTS)
    unique = len({" ".join(t.split()) for t in TEXTS})
    assert sum(calls_first) == unique and first.shared.misses == unique
    assert flushed.dbsize() == unique
    ttl = flushed.ttl(next(iter(flushed.scan_iter())))
    assert 0 < ttl <= 7 * 24 * 3600

    b = second.encode(TEXTS)
    assert calls_second == []  # not one text encoded again
    assert second.shared.hits == unique and second.shared.misses == 0
    assert a.tobytes() == b.tobytes() == plain.tobytes()
    assert second.cache_counts() == {("shared", "hit"): unique, ("shared", "miss"): 0, ("shared", "error"): 0}


def test_local_lru_answers_first_and_a_new_text_costs_one_encode(redis_url, flushed):
    emb = Embedder.load(device="cpu", cache_size=1_000, shared_cache_url=redis_url)
    calls = _count_encodes(emb)
    emb.encode(TEXTS[:10])
    emb.encode(TEXTS[:10] + ["a text nobody has sent before"])
    assert calls == [len(set(TEXTS[:10])), 1]
    counts = emb.cache_counts()
    assert counts[("local", "hit")] == len(set(TEXTS[:10]))
    assert counts[("shared", "miss")] == len(set(TEXTS[:10])) + 1


def test_a_vector_no_worker_wrote_is_never_used(redis_url, flushed):
    """Whoever may write to Redis cannot choose what a worker scores (issue 37, item 7): a vector
    under another secret, a bare vector of the right length and a checksummed vector of NaNs are
    each refused, and the text is encoded instead."""
    emb = Embedder.load(device="cpu", shared_cache_url=redis_url, shared_cache_secret="ours")
    true = Embedder.load(device="cpu").encode(TEXTS[:1])
    key = emb.shared.key(" ".join(TEXTS[0].split()))
    forged = np.full(emb.dim, 0.5, dtype=np.float32)
    values = [
        SharedCache(None, emb.fingerprint, emb.dim, secret="theirs").seal(key, forged),
        forged.tobytes(),
        SharedCache(None, emb.fingerprint, emb.dim).seal(key, np.full(emb.dim, np.nan, dtype=np.float32)),
    ]
    calls = _count_encodes(emb)
    for value in values:
        flushed.set(key, value)
        assert emb.encode(TEXTS[:1]).tobytes() == true.tobytes()
    assert calls == [1, 1, 1] and emb.shared.refused == 2  # the bare vector is a miss by its length
    assert emb.encode(TEXTS[:1]).tobytes() == true.tobytes() and calls == [1, 1, 1]  # its own: a hit


def test_different_encoders_never_share_vectors(redis_url, flushed, tmp_path):
    emb = Embedder.load(device="cpu", shared_cache_url=redis_url)
    emb.encode(TEXTS[:5])
    assert emb.shared is not None
    # Another runtime, another device kind, or other weights: another fingerprint, other keys.
    onnx = dataclasses.replace(emb, backend="onnx-int8")
    gpu = dataclasses.replace(emb, device="cuda")
    model = Path(resolve_model_path(emb.name))
    tuned = tmp_path / "tuned"
    shutil.copytree(model, tuned, ignore=shutil.ignore_patterns("model.safetensors"))
    (tuned / "model.safetensors").write_bytes(b"other weights")
    prints = {
        emb.fingerprint,
        onnx.fingerprint,
        gpu.fingerprint,
        dataclasses.replace(emb, name=str(tuned)).fingerprint,
    }
    assert len(prints) == 4
    other = emb.shared.for_encoder(onnx.fingerprint, emb.dim)
    assert other.get_many(TEXTS[:5]) == [None] * 5
    # A value of the wrong size (another dimension, a truncated write) is a miss, not a crash.
    flushed.set(emb.shared.key(" ".join(TEXTS[0].split())), b"\x00" * 12)
    assert emb.shared.get_many([" ".join(TEXTS[0].split())]) == [None]


def test_redis_down_slows_scoring_but_never_stops_it(caplog):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    emb = Embedder.load(device="cpu", shared_cache_url=dead)
    calls = _count_encodes(emb)
    with caplog.at_level(logging.WARNING, logger="streamscore.cache"):
        vecs = emb.encode(TEXTS[:8])
        again = emb.encode(TEXTS[:8])
    assert vecs.tobytes() == again.tobytes()
    assert len(calls) == 2  # both batches encoded
    # One failed call, then Redis is left alone for retry_s instead of timing out every batch.
    assert emb.shared.errors == 1 and emb.shared.down_until > time.monotonic()
    assert "shared embedding cache: read failed" in caplog.text
    assert isinstance(emb.shared, SharedCache)


@pytest.mark.integration
def test_two_workers_share_one_cache(kafka, trained_registry, tmp_path, redis_url, flushed):
    """Worker A scores a stream; worker B (another group, no in-process cache) scores the same
    texts from Redis alone, with the same scores, and says so in its metrics."""
    texts = TEXTS[:60]
    unique = len({" ".join(t.split()) for t in texts})
    msgs = [{"id": f"m{i}", "text": t} for i, t in enumerate(texts)]
    scored, stats, lookups = {}, {}, {}
    for name in ("a", "b"):
        port = free_port()
        w = start_worker(
            kafka,
            trained_registry,
            tmp_path,
            embed_cache_url=redis_url,
            embed_cache_size="0",
            metrics_port=str(port),
        )
        try:
            send_json(kafka, w.topics["input"], msgs)
            out = collect(kafka, w.topics["scored"], len(msgs), timeout_s=120, settle_s=0)
            assert len(out) == len(msgs), w.log()
            scored[name] = {r["id"]: (r["label"], r["ood_score"], r["confidence"]) for r in out}
            stats[name] = flushed.info("stats")
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            lookups[name] = {
                m.group(1): float(m.group(2))
                for m in re.finditer(
                    r'streamscore_embedding_cache_lookups_total\{result="(\w+)",tier="shared"\} (\S+)', body
                )
            }
        finally:
            stop_worker(w)
    assert stats["a"]["keyspace_misses"] == unique and stats["a"]["keyspace_hits"] == 0
    assert lookups["a"] == {"error": 0.0, "hit": 0.0, "miss": unique}
    # Worker B read every text from Redis and encoded none.
    assert stats["b"]["keyspace_hits"] == unique
    assert stats["b"]["keyspace_misses"] == stats["a"]["keyspace_misses"]
    assert lookups["b"] == {"error": 0.0, "hit": unique, "miss": 0.0}
    assert scored["a"] == scored["b"]
