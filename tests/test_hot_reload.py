"""A running worker switches to a newly promoted model between batches, losing nothing."""

import asyncio
import json
import shutil
import threading
import time
from collections import Counter, defaultdict

import pytest

from streamscore.models.registry import Registry
from streamscore.training.fit import train
from tests.conftest import FROZEN, small_clinc_rows, start_worker, stop_worker
from tests.kafka_helpers import collect, send_json

pytestmark = pytest.mark.integration


def _stream(bootstrap, topic, msgs, rate):
    for i in range(0, len(msgs), 20):
        send_json(bootstrap, topic, msgs[i : i + 20])
        time.sleep(20 / rate)


def test_hot_swap_under_live_stream_then_refuse_broken_model(
    kafka, trained_registry, small_data, embedder, tmp_path
):
    root = tmp_path / "registry"
    shutil.copytree(trained_registry, root)
    reg = Registry(root)
    first = reg.current()
    second = train(small_data, reg, FROZEN, quiet=True, embedder=embedder, promote=False)
    assert not second.promoted and reg.current() == first
    w = start_worker(kafka, root, tmp_path, reload_interval="0.5")
    try:
        texts = [r["text"] for r in small_clinc_rows() if r["split"] == "test"]
        msgs = [{"id": f"h{i}", "text": texts[i % len(texts)]} for i in range(1200)]
        sender = threading.Thread(target=_stream, args=(kafka, w.topics["input"], msgs, 100.0))
        sender.start()
        # Promote a new version while the stream is flowing.
        out = collect(kafka, w.topics["scored"], 300, settle_s=0, match=lambda r: r["id"].startswith("h"))
        assert len(out) >= 300
        reg.set_current(second.version)  # what `streamscore models promote` does
        sender.join()
        out = collect(
            kafka, w.topics["scored"], len(msgs), timeout_s=180, match=lambda r: r["id"].startswith("h")
        )

        counts = Counter(r["id"] for r in out)
        assert set(counts) == {m["id"] for m in msgs}, "messages lost across the swap"
        assert max(counts.values()) == 1, "messages scored twice across the swap"
        versions = Counter(r["model_version"] for r in out)
        assert set(versions) == {first, second.version}, versions
        # Within each partition, the switch happens once: old version, then new, never back.
        by_partition = defaultdict(list)
        for r in sorted(out, key=lambda r: r["origin"]["offset"]):
            by_partition[r["origin"]["partition"]].append(r["model_version"])
        for seq in by_partition.values():
            changes = sum(a != b for a, b in zip(seq, seq[1:], strict=False))
            assert changes <= 1, seq
            if changes:
                assert (seq[0], seq[-1]) == (first, second.version)

        # A broken artifact pointed at by CURRENT is refused; the worker keeps serving.
        broken = reg.path_of("v9999")
        shutil.copytree(reg.path_of(second.version), broken)
        manifest = json.loads((broken / "manifest.json").read_text())
        manifest["version"] = "v9999"
        (broken / "manifest.json").write_text(json.dumps(manifest))
        (broken / "head.npz").write_bytes((broken / "head.npz").read_bytes()[:200])  # truncated
        reg.current_file.write_text("v9999\n")
        time.sleep(2)
        late = [{"id": f"late{i}", "text": texts[i]} for i in range(50)]
        send_json(kafka, w.topics["input"], late)
        out = collect(kafka, w.topics["scored"], 50, match=lambda r: r["id"].startswith("late"))
        assert len(out) == 50 and {r["model_version"] for r in out} == {second.version}
        assert w.process.poll() is None
        assert "refusing model v9999" in w.log() and "SHA-256" in w.log()
    finally:
        stop_worker(w)


def test_a_model_on_another_encoder_is_ready_before_its_first_batch(trained_registry, embedder):
    import copy

    from streamscore.models.embedder import resolve_model_path
    from streamscore.models.scoring import Scorer
    from streamscore.streams.worker.serving import ModelHolder

    reg = Registry(trained_registry)
    current = reg.load()
    other = copy.deepcopy(current)  # the same weights, named by their path: another encoder to load
    other.manifest["embedder"]["name"] = resolve_model_path(embedder.name)
    assert other.embedder_name != embedder.name

    class PointsAtOther:
        def path_of(self, version):
            return reg.path_of(version)

        def load(self, version):
            return other

    holder = ModelHolder(Scorer.load(current, embedder), PointsAtOther())  # type: ignore[arg-type]
    try:
        assert holder._switch_to(current.version)  # noqa: SLF001 - the swap itself, without the timer == current.version
        loaded = holder.scorer.embedder
        assert loaded is not embedder and loaded.name == other.embedder_name
        assert loaded.traced  # traced in the switch, off the event loop, not in the first batch
    finally:
        holder.executor.shutdown()


def test_an_encoder_replaced_by_a_swap_is_freed_though_frozen_at_start(trained_registry, embedder):
    """The worker freezes its start-up objects (streams/worker/memory.py); the encoder a swap replaces
    sits in reference cycles, so it must be unfrozen to be collected, and nothing may keep it."""
    import copy
    import gc
    import weakref

    from streamscore.models.embedder import Embedder, resolve_model_path
    from streamscore.models.scoring import Scorer
    from streamscore.streams.worker.memory import freeze_long_lived
    from streamscore.streams.worker.serving import ModelHolder

    reg = Registry(trained_registry)
    current = reg.load()
    other = copy.deepcopy(current)
    other.manifest["embedder"]["name"] = resolve_model_path(embedder.name)

    class PointsAtOther:
        def path_of(self, version):
            return reg.path_of(version)

        def load(self, version):
            return other

    first = Embedder.load()  # not the session's embedder: this one must be free to go
    holder = ModelHolder(Scorer.load(current, first), PointsAtOther())  # type: ignore[arg-type]
    asyncio.run(holder.score(["warm the scorer threads up"]))
    gone = weakref.ref(first.model)
    del first
    try:
        freeze_long_lived()
        assert holder._switch_to(current.version)  # noqa: SLF001 - the swap itself, without the timer == current.version
        assert gone() is not None and holder.retirement.waiting  # frozen until now, in a cycle
        assert holder.retirement.settle() and gone() is None  # collected at the next check
        assert gc.get_freeze_count() > 0  # and what lives on is frozen again
        assert asyncio.run(holder.score(["still scoring"]))[1] == current.version
    finally:
        gc.unfreeze()
        holder.executor.shutdown()
