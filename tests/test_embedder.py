"""The embedder: a text's vector depends on the text alone, whatever batch it shares."""

import json
import random

import numpy as np
import pytest

from tests.conftest import CLINC


@pytest.fixture(scope="module")
def encoder(embedder):
    """The session's embedder without its cache: these tests are of the encoding itself."""
    import dataclasses

    return dataclasses.replace(embedder, cache=None)


def _texts(n: int = 400) -> list[str]:
    rows = [json.loads(line) for line in open(CLINC, encoding="utf-8")]
    short = [r["text"] for r in rows if r["split"] == "test"][:n]
    rng = random.Random(5)
    # Long texts too, so several padded widths (up to the truncation limit) are exercised: a few
    # of each width are enough, and they cost as much to encode as all the short ones together.
    long = [" ".join(rng.sample(short, k)) for k in (3, 6, 12, 40) for _ in range(4)]
    return short + long


def test_same_text_same_vector_whatever_the_batch(encoder):
    texts = _texts()
    whole = encoder.encode(texts)
    rng = random.Random(1)
    for _ in range(2):
        order = list(range(len(texts)))
        rng.shuffle(order)
        again = np.empty_like(whole)
        i = 0
        while i < len(order):
            chunk = order[i : i + rng.randint(1, 80)]
            again[chunk] = encoder.encode([texts[j] for j in chunk])
            i += len(chunk)
        assert np.array_equal(whole, again), float(np.abs(whole - again).max())


def test_bucketed_vectors_match_sentence_transformers(encoder):
    texts = _texts(200)
    ours = encoder.encode(texts)
    theirs = encoder._encode_plain(texts, progress=False)  # noqa: SLF001 - the reference path itself
    assert ours.shape == theirs.shape == (len(texts), encoder.dim)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # Same model, same maths: only float rounding differs.
    assert np.abs(ours - theirs).max() < 1e-5


def test_cache_hits_return_exactly_what_encoding_would(encoder):
    from streamscore.models.cache import EmbeddingCache

    texts = _texts(120)
    plain = encoder.encode(texts)
    cached = type(encoder)(encoder.name, encoder.device, encoder.model, cache=EmbeddingCache(1_000))
    # Duplicates and whitespace variants within one call, then the whole list again: all hits.
    noisy = texts[:40] + ["  " + t.replace(" ", "   ") + "\n" for t in texts[:40]] + texts[40:]
    first = cached.encode(noisy)
    assert np.array_equal(first[:40], plain[:40]) and np.array_equal(first[40:80], plain[:40])
    assert np.array_equal(first[80:], plain[40:])
    # The cache is asked once per distinct text of a call: a duplicate is encoded once.
    assert cached.cache.misses == len(texts) and len(cached.cache) == len(texts)
    again = cached.encode(texts)
    assert np.array_equal(again, plain)
    assert cached.cache.hits == len(texts)


def test_threads_encoding_at_once_get_exactly_the_same_vectors(encoder):
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from streamscore.models.cache import EmbeddingCache
    from streamscore.models.embedder import threads_per_call

    texts = _texts(240)
    plain = encoder.encode(texts)
    shared = type(encoder)(
        encoder.name, encoder.device, encoder.model, cache=EmbeddingCache(10_000), encoder_threads=2
    )
    chunks = [texts[i : i + 16] for i in range(0, len(texts), 16)]
    # Twice over: in the second round cache hits race with the misses of other threads.
    with ThreadPoolExecutor(2, initializer=shared.setup_thread) as pool:
        first = list(pool.map(shared.encode, chunks))
        second = list(pool.map(shared.encode, chunks))
        threads = set(pool.map(lambda _: torch.get_num_threads(), range(8)))
    assert np.array_equal(np.concatenate(first), plain)
    assert np.array_equal(np.concatenate(second), plain)
    assert shared.cache.hits >= len(texts) and len(shared.cache) == len({" ".join(t.split()) for t in texts})
    assert threads == {threads_per_call(2)}


def test_the_vectors_do_not_depend_on_the_threads(encoder):
    import dataclasses

    import torch

    texts = _texts(160)
    two = dataclasses.replace(encoder, encoder_threads=2)
    assert two.pool is not None and two.pool.threads == 2
    pooled = two.encode(texts)  # forwards side by side on the encode pool's two threads
    alone = dataclasses.replace(encoder, encoder_threads=1)  # forwards in this thread
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a forward must still run on one: two split the products by size
    try:
        assert np.array_equal(alone.encode(texts), pooled)
        assert torch.get_num_threads() == 2  # and the caller's setting is left as it was
    finally:
        torch.set_num_threads(before)


def test_a_long_encode_with_a_progress_bar_gives_the_same_vectors(encoder, capsys):
    import dataclasses

    small = dataclasses.replace(encoder, batch_size=8, encoder_threads=2)  # parts of 128 texts
    texts = _texts(300)
    assert np.array_equal(small.encode(texts, progress=True), small.encode(texts))
    assert "embedding" in capsys.readouterr().err  # the bar moved over the parts


def test_onnx_backends_agree_with_torch(encoder, tmp_path):
    from streamscore.models.embedder import Embedder

    texts = _texts(150)
    reference = encoder.encode(texts)
    fp32 = Embedder.load(backend="onnx", cache_dir=tmp_path)
    int8 = Embedder.load(backend="onnx-int8", cache_dir=tmp_path)
    assert (fp32.backend, int8.backend, fp32.device) == ("onnx", "onnx-int8", "cpu")
    cos32 = (fp32.encode(texts) * reference).sum(axis=1)
    cos8 = (int8.encode(texts) * reference).sum(axis=1)
    assert cos32.min() > 0.9999, cos32.min()
    assert cos8.mean() > 0.98 and cos8.min() > 0.9, (cos8.mean(), cos8.min())
    # fp32 ONNX keeps the batch-independence of the torch path.
    assert np.array_equal(fp32.encode(texts[:7]), fp32.encode(texts)[:7])
    # Both call their session directly, and get what sentence-transformers' own call gives.
    import torch

    features = fp32.model.preprocess(texts[:40])
    own = torch.nn.functional.normalize(fp32.model(features)["sentence_embedding"], dim=1).numpy()
    assert fp32._session and int8._session  # noqa: SLF001 - the direct-session path is what is tested
    assert np.abs(fp32.encode(texts[:40]) - own).max() < 1e-6
    # The export is made once and reused.
    exports = list((tmp_path / "onnx").iterdir())
    assert len(exports) == 1 and (exports[0] / "onnx" / "model.onnx").exists()


def test_unknown_backend_is_refused_with_the_choices():
    import pytest

    from streamscore.models.embedder import Embedder

    with pytest.raises(ValueError, match="torch, onnx, onnx-int8"):
        Embedder.load(backend="tensorrt")


def test_the_traced_encoder_gives_the_eager_vectors_bit_for_bit(encoder):
    eager = type(encoder)(encoder.name, encoder.device, encoder.model, trace=False)
    texts = _texts(200)
    assert np.array_equal(encoder.encode(texts), eager.encode(texts))
    assert encoder.traced and not eager.traced


def test_a_copy_traces_its_own_weights(encoder):
    import copy

    import torch

    texts = _texts(60)
    before = encoder.encode(texts)
    tuned = copy.deepcopy(encoder)
    assert not tuned.traced  # the original's trace holds the original's weights
    assert np.array_equal(tuned.encode(texts), before) and tuned.traced
    with torch.no_grad():  # what a fine-tuning step does to the copy
        next(tuned.model.parameters()).mul_(1.01)
    assert not np.array_equal(tuned.encode(texts), before)
    assert np.array_equal(encoder.encode(texts), before)


def test_a_model_that_traces_wrong_is_encoded_eagerly(caplog):
    import torch

    from streamscore.models.traced import trace_encoder

    class BranchesOnInput(torch.nn.Module):
        """Adds 1 to batches of more than two texts: a trace of a two-text batch cannot."""

        def preprocess(self, texts):
            ids = torch.tensor([[len(t) % 50 + 1] * 8 for t in texts])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        def forward(self, features):
            out = features["input_ids"].float()
            return {"sentence_embedding": out + 1 if out.shape[0] > 2 else out}

    assert trace_encoder(BranchesOnInput().eval()) is None
    assert "differs from the eager one" in caplog.text
    assert trace_encoder(object()) is None
    assert "could not trace the encoder" in caplog.text


def test_a_worker_loads_the_model_once_without_library_notices_then_starts_from_its_saved_trace(
    trained_registry, tmp_path
):
    """torch's trace of the encoder touches properties that make sentence-transformers and
    transformers print deprecation notices at every load; a user of the worker sees none. The
    first start saves the trace into the cache folder; the next one loads only that."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO)\n"
        "from streamscore.streams.settings import Settings\n"
        "from streamscore.streams.worker.run import load_scorer\n"
        f"load_scorer(Settings.from_env({{'STREAMSCORE_REGISTRY': {str(trained_registry)!r}, "
        f"'STREAMSCORE_CACHE_DIR': {str(tmp_path)!r}}}))\n"
        "print('heavy', 'sentence_transformers' in sys.modules, 'transformers' in sys.modules)\n"
    )
    starts = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
        for _ in range(2)
    ]
    first, second = starts
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    assert "Loading SentenceTransformer model" in first.stderr, first.stderr[-2000:]  # the rest still shows
    assert "_target_device" not in first.stderr and "loss_type" not in first.stderr, first.stderr[-2000:]
    assert "saved the traced encoder" in first.stderr and first.stdout.split() == ["heavy", "True", "True"]
    assert "Loading SentenceTransformer model" not in second.stderr, second.stderr[-2000:]
    assert second.stdout.split() == ["heavy", "False", "False"]


LEAN_START = """
import json, sys
import numpy as np
from streamscore.models.embedder import Embedder
texts = json.load(open(sys.argv[2]))
emb = Embedder.load(device="cpu", cache_dir=sys.argv[1])
np.save(sys.argv[3], emb.encode(texts))
heavy = sorted(m for m in ("sentence_transformers", "transformers") if m in sys.modules)
print(json.dumps({"heavy": heavy, "traced": emb.traced, "pad": emb.pad_multiple, "fingerprint": emb.fingerprint}))
"""


def test_a_saved_trace_starts_without_sentence_transformers_and_gives_the_same_vectors(encoder, tmp_path):
    import subprocess
    import sys

    from streamscore.models import saved_trace
    from streamscore.models.embedder import resolve_model_path

    folder = saved_trace.folder_for(resolve_model_path(encoder.name), tmp_path / "cache")
    assert saved_trace.save(encoder.model, encoder._forward(), folder)  # noqa: SLF001 - the trace a start saves
    texts = _texts(200) + ["Café crème", "我的包裹在哪里", "word " * 400]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            LEAN_START,
            str(tmp_path / "cache"),
            str(tmp_path / "texts.json"),
            str(tmp_path / "v.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    started = json.loads(out.stdout.strip().splitlines()[-1])
    assert started["heavy"] == [] and started["traced"]
    # The same vectors, padding and cache keys as the model itself: workers that start lean and
    # workers that do not share a Redis cache and replay each other's scores.
    assert np.array_equal(np.load(tmp_path / "v.npy"), encoder.encode(texts))
    assert (started["pad"], started["fingerprint"]) == (encoder.pad_multiple, encoder.fingerprint)


def test_a_saved_trace_that_does_not_match_its_model_is_not_used(encoder, tmp_path, caplog):
    from streamscore.models import saved_trace

    folder = tmp_path / "trace"
    assert saved_trace.save(encoder.model, encoder._forward(), folder)  # noqa: SLF001
    first = (folder / "encoder.pt").stat().st_ino
    # A second process that saved meanwhile keeps the first's: workers may be loading it.
    assert saved_trace.save(encoder.model, encoder._forward(), folder)  # noqa: SLF001
    assert (folder / "encoder.pt").stat().st_ino == first
    meta = json.loads((folder / "meta.json").read_text())
    # A tokenizer that truncates elsewhere than the model's tokenizer is caught by the check.
    (folder / "meta.json").write_text(json.dumps({**meta, "max_length": 64}))
    wrong = saved_trace.load(folder)
    assert wrong is not None and not saved_trace._same(encoder.model, encoder._forward(), wrong)  # noqa: SLF001
    # A damaged file is not loaded: the embedder then loads the model.
    (folder / "encoder.pt").write_bytes(b"not a trace")
    assert saved_trace.load(folder) is None
    assert "loading the model instead" in caplog.text
    # The next start that traces the model saves a good one in its place.
    assert saved_trace.save(encoder.model, encoder._forward(), folder)  # noqa: SLF001
    assert saved_trace.load(folder) is not None


def test_a_changed_model_folder_gets_a_new_saved_trace(tmp_path):
    from streamscore.models import saved_trace

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    before = saved_trace.folder_for(str(tmp_path / "model"), tmp_path / "cache")
    assert saved_trace.folder_for(str(tmp_path / "model"), tmp_path / "cache") == before
    (tmp_path / "model" / "model.safetensors").write_bytes(b"new weights")
    assert saved_trace.folder_for(str(tmp_path / "model"), tmp_path / "cache") != before


def test_only_the_most_recently_used_saved_traces_are_kept(tmp_path):
    import os

    from streamscore.models import saved_trace

    for i in range(5):
        (tmp_path / f"t{i}").mkdir()
        (tmp_path / f"t{i}" / "meta.json").write_text("{}")
        os.utime(tmp_path / f"t{i}" / "meta.json", (1_000 + i, 1_000 + i))
    os.utime(tmp_path / "t0" / "meta.json")  # t0 was loaded just now
    (tmp_path / "scratch").mkdir()  # not a saved trace (a save under way): left alone
    removed = saved_trace.prune(tmp_path, keep=3)
    assert sorted(p.name for p in removed) == ["t1", "t2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch", "t0", "t3", "t4"]
