"""Themes: new groups among foreign texts are found, pure, with telling keywords; scattered texts are none."""

import json
import random

import pytest

from streamscore.models.themes import Background, find_themes
from tests.conftest import CLINC

ROWS = [json.loads(line) for line in open(CLINC, encoding="utf-8")]
BY_LABEL: dict[str, list[str]] = {}
for r in ROWS:
    BY_LABEL.setdefault(r["label"], []).append(r["text"])
TWO = ("lost_luggage", "pto_request")


@pytest.fixture(scope="module")
def background():
    rng = random.Random(1)
    others = [lab for lab in sorted(BY_LABEL) if lab not in TWO and lab != "oos"]
    return Background.of([t for lab in rng.sample(others, 60) for t in BY_LABEL[lab][:20]])


def scattered(n: int, seed: int) -> list[str]:
    """One text of each of ``n`` intents: foreign texts with nothing in common."""
    rng = random.Random(seed)
    others = [lab for lab in sorted(BY_LABEL) if lab not in TWO and lab != "oos"]
    return [rng.choice(BY_LABEL[lab]) for lab in rng.sample(others, n)]


def test_two_new_intents_among_scattered_texts_come_out_as_two_pure_themes(embedder, background):
    texts = BY_LABEL[TWO[0]][:25] + BY_LABEL[TWO[1]][:25] + scattered(50, 2)
    truth = [TWO[0]] * 25 + [TWO[1]] * 25 + ["other"] * 50
    report = find_themes(texts, embedder.encode(texts), background)
    assert len(report.themes) == 2, report.summary
    for theme in report.themes:
        members = [truth[i] for i in theme.members]
        top = max(set(members), key=members.count)
        assert top in TWO and members.count(top) / theme.size >= 0.9, members
        assert members.count(top) >= 20  # most of the intent's texts
        assert len(theme.examples) == 3 and all(e in BY_LABEL[top] for e in theme.examples)
    keywords = {kw for t in report.themes for kw in t.keywords}
    assert {"luggage"} <= keywords and ({"pto", "vacation", "time"} & keywords), keywords
    assert report.unthemed == len(texts) - sum(t.size for t in report.themes)


def test_scattered_foreign_texts_are_no_coherent_theme(embedder, background):
    texts = scattered(80, 3)
    report = find_themes(texts, embedder.encode(texts), background)
    assert report.themes == [] and report.unthemed == 80
    assert report.summary == "no coherent theme among 80 foreign texts"


def test_the_nearest_known_label_is_reported_with_its_similarity(embedder, background):
    import numpy as np

    texts = BY_LABEL["lost_luggage"][:20]
    known = ["book_flight", "pay_bill"]
    centres = np.stack([embedder.encode(BY_LABEL[k][:30]).mean(axis=0) for k in known])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    report = find_themes(texts, embedder.encode(texts), background, label_names=known, label_centres=centres)
    (theme,) = report.themes
    assert theme.nearest_label == "book_flight" and 0.2 < theme.label_similarity < 1.0
    assert json.loads(json.dumps(theme.as_json()))["nearest_label"] == "book_flight"


def test_the_background_stays_bounded_and_survives_a_restart():
    bg = Background(limit=100)
    for i in range(1_000):
        unique = "zz" + "".join(chr(97 + int(d)) for d in f"{i:04d}")  # zzaaaa, zzaaab, ...
        bg.add(f"{unique} common")
    assert len(bg.counts) <= 100 and bg.counts["common"] == 1_000 and bg.docs == 1_000
    again = Background.from_state(json.loads(json.dumps(bg.state())))
    assert again.idf("common") == bg.idf("common") < again.idf("never")


def test_the_theme_benchmark_streams_each_text_once_and_injects_at_the_share():
    import sys

    from streamscore.training.data import Row
    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from themes import make_stream, summarise

    in_dist = [Row(f"in {i}", "known", "test") for i in range(3_000)]
    new = [Row(f"new {i}", "new", "train") for i in range(1_000)]
    stream = make_stream(in_dist, new, 500, 2_000, 0.3, random.Random(0))
    assert len(stream.texts) == 2_500 == len(set(stream.texts)) and stream.injected_from == 500
    assert "new" not in stream.labels[:500]
    assert 0.27 < stream.labels[500:].count("new") / 2_000 < 0.33
    found = {
        "found": True,
        "purity": 1.0,
        "coverage": 0.7,
        "keyword_hits": ["x"],
        "messages_to_first_theme": 100,
    }
    summary = summarise({"a": found, "b": found | {"coverage": 0.5, "messages_to_first_theme": 300},
                         "c": {"found": False}})  # fmt: skip
    assert summary == {
        "found": 2, "of": 3, "median_purity": 1.0, "median_coverage": 0.5,
        "median_messages_to_first_theme": 200.0, "keyword_hits": 2,
    }  # fmt: skip


@pytest.mark.integration
def test_themes_command_finds_a_new_intent_in_a_range_of_the_input_topic(kafka, trained_registry):
    import asyncio
    import uuid

    from streamscore.streams.kafka.topics import ensure_topics
    from tests.conftest import cli, last_json, small_clinc_rows
    from tests.kafka_helpers import send_json, send_raw

    known = {r["label"] for r in small_clinc_rows()}
    assert "lost_luggage" not in known  # a new intent for the model trained on the small subset
    rng = random.Random(4)
    normal = [r["text"] for r in small_clinc_rows() if r["split"] == "test" and r["label"] != "oos"]
    new = BY_LABEL["lost_luggage"][:60]
    stream = [{"id": f"n{i}", "text": t} for i, t in enumerate(rng.sample(normal, 240))]
    stream += [{"id": f"l{i}", "text": t} for i, t in enumerate(new)]
    stream.append({"id": "x", "text": "<script>alert(1)</script> where is my lost luggage bag"})
    rng.shuffle(stream)
    topic = f"themes-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(kafka, {topic: 2}))
    send_json(kafka, topic, stream)
    send_raw(kafka, topic, [(b"bad", b"{not json")])

    def themes(*extra: str) -> dict:
        proc = cli("themes", "--registry", str(trained_registry), "--bootstrap-servers", kafka,
                   "--input-topic", topic, "--from-offset", "0", "--json", *extra)  # fmt: skip
        assert len(proc.stdout.strip().splitlines()) == 1  # --json: one document; progress on stderr
        assert f"themes ← {topic}: done" in proc.stderr and "[themes] grouping" in proc.stderr
        return last_json(proc)

    res = themes()
    assert res["texts"] == len(stream) and res["not_texts"] == 1
    assert res["foreign"] >= 40, res  # most of the new intent's texts are flagged
    top = res["themes"][0]
    assert "luggage" in top["keywords"], res["themes"]
    assert top["nearest_label"] in known and 0.0 < top["label_similarity"] < 1.0
    assert sum(e in new for e in top["examples"]) >= 2, top["examples"]
    assert top["size"] >= 30 and top["size"] / res["clustered"] == pytest.approx(top["share"], abs=1e-3)
    # Texts are data: a text with markup comes back as the same string, never interpreted.
    assert all(isinstance(e, str) for t in res["themes"] for e in t["examples"])

    quiet = themes("--no-texts")
    assert quiet["themes"][0]["keywords"] == top["keywords"] and quiet["themes"][0]["examples"] == []
    plain = cli("themes", "--registry", str(trained_registry), "--bootstrap-servers", kafka,
                "--input-topic", topic, "--from-offset", "0", "--text-chars", "12").stdout  # fmt: skip
    assert "theme 1:" in plain and "luggage" in plain
    assert all(len(line.strip()) <= 12 + 2 for line in plain.splitlines() if line.strip().startswith("«"))


def test_the_artifact_keeps_label_centres_and_refuses_centres_of_the_wrong_shape(trained_registry, tmp_path):
    import shutil

    import numpy as np

    from streamscore.models.artifact import CENTRES, ArtifactError, load_artifact, sha256_file
    from streamscore.models.registry import Registry

    art = Registry(trained_registry).load(None)
    assert art.label_centres is not None and art.label_centres.shape == (len(art.head.labels), art.dim)
    assert np.allclose(np.linalg.norm(art.label_centres, axis=1), 1.0, atol=1e-5)
    # Each centre is classified as its own label by the head trained on the same texts.
    assert art.head.predict(art.label_centres) == art.head.labels

    copy = tmp_path / "copy"
    shutil.copytree(art.path, copy)
    with open(copy / CENTRES, "wb") as f:
        np.savez(f, centres=np.zeros((2, art.dim), dtype=np.float32))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][CENTRES] = sha256_file(copy / CENTRES)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="label centres have shape"):
        load_artifact(copy)
