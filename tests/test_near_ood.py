"""Near-OOD: fused OOD strategies, and labels withheld from training to be scored as new intents."""

import json
import sys

import numpy as np
import pytest

from streamscore.models.artifact import load_artifact, save_artifact
from streamscore.models.head import LinearHead
from streamscore.models.ood import FUSED, OODScorer
from streamscore.models.registry import Registry
from streamscore.training.fit import train
from tests.conftest import FROZEN, ROOT, cli, last_json

sys.path.insert(0, str(ROOT / "benchmarks"))
from quality import choose_withheld, markdown_table, withhold  # noqa: E402

from streamscore.training.data import Row  # noqa: E402


def _blobs(seed=0, n=60, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 3
    X = np.concatenate([c + rng.normal(size=(n, dim)) for c in centres])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = [lab for lab in "abc" for _ in range(n)]
    return X.astype(np.float32), y


@pytest.mark.parametrize("strategy", FUSED)
def test_a_fused_strategy_puts_both_scores_on_the_validation_scale(strategy, tmp_path):
    X, y = _blobs()
    head = LinearHead.fit(X[::2], y[::2], c=10.0)
    with pytest.raises(ValueError, match="needs in-distribution validation rows"):
        OODScorer.fit(strategy, X[::2], y[::2], head.labels)
    ood = OODScorer.fit(strategy, X[::2], y[::2], head.labels, X_val=X[1::2], head=head)
    val = ood.score(X[1::2], head)
    assert abs(val.mean()) < 1e-4 and 1.0 < val.std() < 2.0 + 1e-9, (
        "each part z-scored on validation, then added"
    )
    far = -X[:5]  # the opposite direction of a known class
    assert ood.score(far, head).min() > np.quantile(val, 0.95)
    manifest = {
        "version": "v0001",
        "labels": head.labels,
        "thresholds": {"ood": 0.0},
        "embedder": {"name": "e", "dim": 16},
    }
    path = save_artifact(tmp_path / "a", manifest, head, ood)
    again = load_artifact(path).ood
    assert again.strategy == strategy and np.allclose(again.score(X[1::2], head), val, atol=1e-3)


def test_withheld_labels_keep_only_their_test_rows_and_the_choice_is_seeded():
    rows = [
        Row(f"{lab}{i}", lab, split) for lab in "abcd" for i, split in enumerate(["train", "val", "test"])
    ]
    kept = withhold(rows, ["b", "d"])
    assert [(r.label, r.split) for r in kept if r.label in "bd"] == [("b", "test"), ("d", "test")]
    assert len([r for r in kept if r.label in "ac"]) == 6
    groups = {"bank": list("abcdef"), "travel": list("ghijkl")}
    assert choose_withheld(groups, 2, seed=3) == choose_withheld(groups, 2, seed=3)
    assert choose_withheld(groups, 2, seed=3) != choose_withheld(groups, 2, seed=4)
    chosen = choose_withheld(groups, 2)
    assert (
        len([x for x in chosen if x in groups["bank"]])
        == 2
        == len([x for x in chosen if x in groups["travel"]])
    )


def test_train_keeps_withheld_labels_out_and_evaluate_scores_them_as_near_ood(small_data, tmp_path, embedder):
    rows = [json.loads(line) for line in small_data.read_text().splitlines()]
    labels = sorted({r["label"] for r in rows} - {"oos"})
    held = labels[:2]
    registry = Registry(tmp_path / "reg")
    cfg = FROZEN.__class__(**{**FROZEN.__dict__, "withhold": tuple(held)})
    res = train(small_data, registry, cfg, quiet=True, embedder=embedder)
    artifact = registry.load(res.version)
    assert not set(held) & set(artifact.head.labels), "a withheld label was trained on"
    assert artifact.manifest["training_data"]["withheld"] == held
    # Thresholds come from validation rows of the known labels only: as many val rows as they have.
    n_val = sum(r["split"] == "val" and r["label"] not in held and r["label"] != "oos" for r in rows)
    assert artifact.manifest["training_data"]["rows_val"] == n_val
    metrics = last_json(
        cli("evaluate", "--data", str(small_data), "--registry", str(registry.root), "--json", timeout=300)
    )
    n_near = sum(r["split"] == "test" and r["label"] in held for r in rows)
    assert metrics["n_near_ood"] == n_near > 0
    assert 0.5 < metrics["near_ood_auroc"] <= 1.0 and "ood_auroc" in metrics
    assert metrics["n_in_scope"] == sum(
        r["split"] == "test" and r["label"] not in held + ["oos"] for r in rows
    )


def test_an_unknown_withheld_label_is_a_usage_error(small_data, tmp_path):
    proc = cli("train", "--data", str(small_data), "--withhold", "no_such_intent", "--finetune-epochs", "0",
               "--registry", str(tmp_path), check=False, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "--withhold no_such_intent: no such label" in proc.stderr, proc.stderr[
        -1000:
    ]


@pytest.mark.parametrize("strategy", ["knn", "msp+knn", "energy+knn"])
def test_a_text_scores_the_same_alone_and_in_any_batch(strategy):
    """Live, replayed and rescored records of one text must agree to the 6 decimals they keep."""
    X, y = _blobs(n=400, dim=64)
    head = LinearHead.fit(X[::2], y[::2], c=10.0)
    ood = OODScorer.fit(strategy, X[::2], y[::2], head.labels, X_val=X[1::2], head=head)
    batch = ood.score(X[1:201:2], head)
    alone = np.array([ood.score(X[i : i + 1], head)[0] for i in range(1, 201, 2)])
    assert np.abs(batch - alone).max() < 1e-9


def test_the_quality_table_lists_every_variant_and_marks_the_default():
    def m(acc, near=None):
        out = {
            "accuracy": acc,
            "ms_per_text_head_ood": 0.02,
            "ms_per_text_encode": 1.6,
            "train_seconds": 90.0,
        }
        if near:
            out |= {"near_ood_auroc": near, "near_ood_fpr95": 0.3}
        return out

    report = {
        "a": {"_scenario": {"seed": 0}, "frozen+lr+msp+knn": m(0.9), "finetuned2+lr+msp+knn": m(0.95, 0.94)},
        "b": {"finetuned2+lr+energy": m(0.8)},
    }
    rows = markdown_table(report, "msp+knn").splitlines()[2:]
    assert rows == [
        "| a | frozen · msp+knn | 0.9000 | — | — | 1.6 + 0.020 | 1.5 min |",
        "| a | **fine-tuned 2 ep · msp+knn (default)** | 0.9500 | 0.9400 / 0.300 | — | 1.6 + 0.020 | 1.5 min |",
        "| b | fine-tuned 2 ep · energy | 0.8000 | — | — | 1.6 + 0.020 | 1.5 min |",
    ]


def test_knn_keeps_a_bounded_stratified_reference(monkeypatch):
    import streamscore.models.ood as ood_module

    X, y = _blobs(n=60)
    monkeypatch.setattr(ood_module, "KNN_MAX_REFERENCE", 30)
    head = LinearHead.fit(X, y, c=10.0)
    ood = OODScorer.fit("msp+knn", X, y, head.labels, X_val=X[::3], head=head)
    ref = ood.arrays["reference"]
    assert ref.shape == (30, X.shape[1])
    # Each label keeps its share of the reference: 10 rows of each of the 3 blobs.
    nearest = np.argmax(ref.astype(np.float32) @ X.T, axis=1)
    assert sorted(np.bincount(np.array([ord(y[i]) - ord("a") for i in nearest]), minlength=3)) == [10, 10, 10]
