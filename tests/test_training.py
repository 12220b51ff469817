"""Training, artifacts, OOD threshold and promotion, on a small real subset of CLINC150."""

import csv
import json
import random
import shutil

import numpy as np
import pytest

from streamscore.models.artifact import ArtifactError, load_artifact
from streamscore.models.ood import STRATEGIES, OODScorer
from streamscore.models.registry import Registry
from streamscore.training.data import DataError, load_rows, training_splits
from streamscore.training.evaluate import evaluate_rows
from streamscore.training.fit import decide_promotion, train
from tests.conftest import FROZEN


def test_trained_model_classifies_held_out_texts(trained_registry, small_data, embedder):
    artifact = Registry(trained_registry).load()
    rows = [r for r in load_rows(small_data) if r.split == "test"]
    m = evaluate_rows(artifact, embedder, rows)
    assert m["n"] == len(rows) and m["n_ood"] == 1000
    assert m["accuracy"] > 0.9  # 12 intents, frozen MiniLM: well above chance (1/12)
    assert m["ood_auroc"] > 0.85
    assert 0 <= m["ood_fpr95"] <= 1 and 0 <= m["ood_recall"] <= 1


def test_threshold_passes_95_percent_of_validation(trained_registry, small_data, embedder):
    artifact = Registry(trained_registry).load()
    val = [r for r in load_rows(small_data) if r.split == "val" and r.label != "oos"]
    scores = artifact.ood.score(embedder.encode([r.text for r in val]), artifact.head)
    passed = np.mean(scores <= artifact.ood_threshold)
    assert abs(passed - 0.95) <= 1.5 / len(val) + 1e-9
    assert artifact.manifest["thresholds"]["keep_in_dist"] == 0.95


def test_ood_rows_never_train(trained_registry):
    artifact = Registry(trained_registry).load()
    assert "oos" not in artifact.head.labels
    assert len(artifact.head.labels) == 12


def test_manifest_has_provenance(trained_registry):
    m = Registry(trained_registry).load().manifest
    for key in (
        "version",
        "created_at",
        "embedder",
        "labels",
        "training_data",
        "metrics",
        "thresholds",
        "libraries",
        "files",
    ):
        assert key in m
    assert m["embedder"]["dim"] == 384 and len(m["training_data"]["sha256"]) == 64
    assert m["training_data"]["val_source"] == "val rows"


def test_artifact_round_trip_scores_identically(trained_registry, tmp_path, embedder):
    artifact = Registry(trained_registry).load()
    copy = tmp_path / "copy"
    shutil.copytree(artifact.path, copy)
    again = load_artifact(copy)
    X = embedder.encode(["how do i reset my password", "what is the capital of peru"])
    assert np.array_equal(artifact.head.predict_proba(X), again.head.predict_proba(X))
    assert np.array_equal(artifact.ood.score(X, artifact.head), again.ood.score(X, again.head))


def test_artifact_has_no_pickle(trained_registry):
    path = Registry(trained_registry).load().path
    for npz in path.glob("*.npz"):
        with np.load(npz, allow_pickle=False) as data:
            assert all(data[k].dtype != object for k in data.files)


def test_tampered_or_incomplete_artifacts_are_refused(trained_registry, tmp_path):
    src = Registry(trained_registry).load().path
    tampered = tmp_path / "tampered"
    shutil.copytree(src, tampered)
    with open(tampered / "head.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_artifact(tampered)
    missing = tmp_path / "missing"
    shutil.copytree(src, missing)
    (missing / "ood.npz").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(missing)
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        load_artifact(tmp_path)


def test_validation_held_out_when_no_val_rows(tmp_path):
    rows_path = tmp_path / "d.csv"
    with open(rows_path, "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label", "split"])
        w.writeheader()
        for i in range(40):
            w.writerow({"text": f"text {i}", "label": "a" if i % 2 else "b", "split": "train"})
    rows = load_rows(rows_path)
    s = training_splits(rows, val_fraction=0.25)
    assert s.val_source == "held out from train"
    assert {r.label for r in s.val} == {"a", "b"} and len(s.val) == 10 and len(s.train) == 30
    assert not set(map(id, s.val)) & set(map(id, s.train))


def test_bad_data_file_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"label": "y"}\n')
    with pytest.raises(DataError, match=":2:"):
        load_rows(p)


def test_csv_training_and_promotion_rules(tmp_path, small_data, embedder):
    rows = [json.loads(line) for line in open(small_data)]
    csv_path = tmp_path / "small.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label", "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    reg = Registry(tmp_path / "reg")
    first = train(csv_path, reg, FROZEN, quiet=True, embedder=embedder)
    assert first.promoted and reg.current() == first.version == "v0001"
    # Same data, same seed: ties the serving model, so it is not promoted...
    second = train(csv_path, reg, FROZEN, quiet=True, embedder=embedder)
    assert not second.promoted and "ties" in second.decision and reg.current() == "v0001"
    # A model trained on half-scrambled labels loses on the same validation rows: refused.
    rng = random.Random(1)
    labels = sorted({r["label"] for r in rows if r["label"] != "oos"})
    noisy = [
        dict(r, label=rng.choice(labels))
        if r["split"] == "train" and r["label"] != "oos" and rng.random() < 0.6
        else r
        for r in rows
    ]
    noisy_path = tmp_path / "noisy.csv"
    with open(noisy_path, "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label", "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(noisy)
    weak = train(noisy_path, reg, FROZEN, quiet=True, embedder=embedder)
    assert not weak.promoted and "accuracy" in weak.decision and reg.current() == "v0001"
    # ...unless forced.
    forced = train(csv_path, reg, FROZEN, quiet=True, embedder=embedder, force=True)
    assert forced.promoted and reg.current() == forced.version
    assert reg.rollback() == "v0001" and reg.current() == "v0001"


def test_decide_promotion_says_which_metric_decided():
    ok, why = decide_promotion(
        {"accuracy": 0.9, "ood_auroc": 0.8}, {"accuracy": 0.85, "ood_auroc": 0.9}, "v0001", False
    )
    assert ok and "accuracy" in why and "+0.05" in why
    ok, why = decide_promotion(
        {"accuracy": 0.9, "ood_auroc": 0.8}, {"accuracy": 0.9, "ood_auroc": 0.9}, "v0001", False
    )
    assert not ok and "ood_auroc" in why


@pytest.fixture(scope="module")
def train_embeddings(trained_registry, embedder):
    """The training rows of the small model and their embeddings, encoded once for all strategies."""
    artifact = Registry(trained_registry).load()
    rows = load_rows(artifact.manifest["training_data"]["path"])
    train_rows = [r for r in rows if r.split == "train" and r.label != "oos"]
    return train_rows, embedder.encode([r.text for r in train_rows])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_ood_strategy_ranks_unrelated_text_higher(
    strategy, trained_registry, embedder, train_embeddings
):
    artifact = Registry(trained_registry).load()
    train_rows, X = train_embeddings
    scorer = OODScorer.fit(
        strategy, X, [r.label for r in train_rows], artifact.head.labels, X_val=X[::7], head=artifact.head
    )
    ins = scorer.score(embedder.encode([train_rows[0].text, train_rows[500].text]), artifact.head)
    out = scorer.score(
        embedder.encode(["the mitochondria is the powerhouse of the cell", "zxqv blorp"]), artifact.head
    )
    assert out.min() > ins.max()


def test_an_encoder_path_outside_the_artifact_is_refused(trained_registry, tmp_path):
    """A manifest may not send the worker to load an encoder from elsewhere (issue 37, item 7)."""
    src = Registry(trained_registry).load().path
    for path in ("../../elsewhere", "/etc"):
        moved = tmp_path / f"moved-{len(path)}"
        shutil.copytree(src, moved)
        manifest = json.loads((moved / "manifest.json").read_text())
        manifest["embedder"]["path"] = path
        (moved / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match="points outside the artifact"):
            load_artifact(moved)


def test_the_drift_agent_loads_only_versions_of_its_registry(trained_registry, tmp_path):
    """A model_version read from drift.signals that names a folder is not loaded (issue 37, item 7)."""
    import asyncio
    from types import SimpleNamespace

    from streamscore.streams.worker.drift_agent import artifacts_from

    registry = Registry(trained_registry)
    serving = registry.load()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(serving.path, elsewhere)  # a valid artifact, outside the registry
    holder = SimpleNamespace(
        scorer=SimpleNamespace(artifact=SimpleNamespace(version="v0099")), registry=registry
    )
    artifact_of = artifacts_from(holder)
    assert asyncio.run(artifact_of(str(elsewhere))) is None
    assert asyncio.run(artifact_of("v1")).version == serving.version  # a version of the registry is
