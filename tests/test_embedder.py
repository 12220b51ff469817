"""The embedder: a text's vector depends on the text alone, whatever batch it shares."""

import json
import random

import numpy as np

from tests.conftest import CLINC


def _texts(n: int = 400) -> list[str]:
    rows = [json.loads(line) for line in open(CLINC, encoding="utf-8")]
    short = [r["text"] for r in rows if r["split"] == "test"][:n]
    rng = random.Random(5)
    # Long texts too, so several padded widths (up to the truncation limit) are exercised.
    long = [" ".join(rng.sample(short, k)) for k in (3, 6, 12, 40) for _ in range(10)]
    return short + long


def test_same_text_same_vector_whatever_the_batch(embedder):
    texts = _texts()
    whole = embedder.encode(texts)
    rng = random.Random(1)
    for _ in range(2):
        order = list(range(len(texts)))
        rng.shuffle(order)
        again = np.empty_like(whole)
        i = 0
        while i < len(order):
            chunk = order[i : i + rng.randint(1, 80)]
            again[chunk] = embedder.encode([texts[j] for j in chunk])
            i += len(chunk)
        assert np.array_equal(whole, again), float(np.abs(whole - again).max())


def test_bucketed_vectors_match_sentence_transformers(embedder):
    texts = _texts(200)
    ours = embedder.encode(texts)
    theirs = embedder._encode_plain(texts, progress=False)
    assert ours.shape == theirs.shape == (len(texts), embedder.dim)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # Same model, same maths: only float rounding differs.
    assert np.abs(ours - theirs).max() < 1e-5
