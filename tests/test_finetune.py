"""Encoder fine-tuning: the tuned encoder ships inside the artifact, safely, and is what serves."""

import json

import numpy as np
import pytest

from streamscore.models.artifact import ArtifactError, load_artifact
from streamscore.models.embedder import Embedder
from streamscore.models.registry import Registry
from streamscore.training.data import load_rows
from streamscore.training.evaluate import evaluate_rows
from streamscore.training.fit import TrainConfig, train
from tests.conftest import FROZEN, small_clinc_rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.jsonl"
    rows = [r for r in small_clinc_rows(n_labels=5, seed=3) if r["label"] != "oos" or r["split"] != "train"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def frozen_then_tuned(tiny, tmp_path_factory, embedder):
    """A registry where a model with a fine-tuned encoder replaced a frozen one: (registry, frozen, tuned)."""
    reg = Registry(tmp_path_factory.mktemp("reg"))
    frozen = train(tiny, reg, FROZEN, quiet=True, embedder=embedder)
    tuned = train(
        tiny,
        reg,
        TrainConfig(finetune_epochs=0.25, drift_ert=1_000),
        quiet=True,
        embedder=embedder,
        force=True,
    )
    return reg, frozen, tuned


def test_finetuned_encoder_ships_in_artifact_and_serves(tiny, frozen_then_tuned, embedder):
    reg, frozen, tuned = frozen_then_tuned
    assert tuned.promoted and reg.current() == tuned.version

    art = load_artifact(tuned.path)
    assert (tuned.path / "encoder" / "model.safetensors").is_file()
    assert all(name in art.manifest["files"] for name in ("encoder/model.safetensors", "head.npz", "ood.npz"))
    assert art.manifest["embedder"]["finetuned"]["steps"] > 0
    assert art.embedder_name == str(tuned.path / "encoder")

    # The caller's encoder was not changed by fine-tuning; the tuned one differs from it.
    probe = ["how do i change my pin", "what's the weather like"]
    tuned_emb = Embedder.load(art.embedder_name, "cpu")
    base_again = Embedder.load(device="cpu").encode(probe)
    assert np.allclose(embedder.encode(probe), base_again, atol=1e-5)
    assert not np.allclose(tuned_emb.encode(probe), base_again, atol=1e-3)

    # Each model is judged through its own encoder: the frozen model's figures are reproduced.
    test_rows = [r for r in load_rows(tiny) if r.split == "test"]
    m = evaluate_rows(art, tuned_emb, test_rows)
    assert m["accuracy"] > 0.9 and m["finetuned_encoder"] is True
    assert frozen.version in tuned.decision
    # The frozen CURRENT was judged through its own (base) encoder: its own figures, reproduced.
    assert tuned.compared_with["version"] == frozen.version
    for key in ("accuracy", "ood_auroc", "ood_fpr95"):
        assert tuned.compared_with["val"][key] == pytest.approx(frozen.metrics[key], abs=1e-6)


def test_extra_or_pickle_files_in_encoder_are_refused(frozen_then_tuned, tmp_path):
    import shutil

    path = shutil.copytree(frozen_then_tuned[2].path, tmp_path / "tuned")  # a copy to tamper with
    load_artifact(path)  # as shipped, it loads
    (path / "encoder" / "pytorch_model.bin").write_bytes(b"not really weights")
    with pytest.raises(ArtifactError, match="pickle"):
        load_artifact(path)
    (path / "encoder" / "pytorch_model.bin").unlink()
    (path / "encoder" / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="not in the manifest"):
        load_artifact(path)


def test_finetuning_stops_when_validation_accuracy_stalls_and_keeps_the_best_weights(tiny, embedder):
    import copy

    from streamscore.training.finetune import FinetuneConfig, finetune_encoder

    rows = load_rows(tiny)
    train_rows = [r for r in rows if r.split == "train" and r.label != "oos"][::3]  # a few steps will do
    val_rows = [r for r in rows if r.split == "val" and r.label != "oos"]
    emb = copy.deepcopy(embedder)
    full = emb.model.max_seq_length
    # No check can gain a whole point of accuracy: the second check ends training.
    cfg = FinetuneConfig(epochs=2.0, batch_size=8, checks_per_epoch=4, patience=1, min_gain=1.0)
    info = finetune_encoder(
        emb,
        [r.text for r in train_rows],
        [r.label for r in train_rows],
        cfg,
        val_texts=[r.text for r in val_rows],
        val_labels=[r.label for r in val_rows],
    )
    assert info["stopped_early"] is True and len(info["checks"]) == 2
    assert info["steps"] < info["steps_planned"]
    assert info["best_epoch"] == info["checks"][0]["epoch"] < info["checks"][1]["epoch"]
    assert all(0.0 <= c["val_accuracy"] <= 1.0 for c in info["checks"])
    # Texts were cut for training only: the encoder serves with its full length again.
    longest = max(len(emb.model.tokenizer(r.text)["input_ids"]) for r in train_rows)
    assert info["max_seq_length"] <= max(16, -(-longest // 8) * 8) < full
    assert emb.model.max_seq_length == full and not emb.model.training


def test_finetuning_without_validation_texts_runs_every_planned_step(tiny, embedder):
    import copy

    from streamscore.training.finetune import FinetuneConfig, finetune_encoder

    train_rows = [r for r in load_rows(tiny) if r.split == "train" and r.label != "oos"]
    probe = [r.text for r in train_rows[:3]]
    before = embedder.encode(probe)  # now in the fixture's cache, and in its copy's
    tuned = copy.deepcopy(embedder)
    info = finetune_encoder(
        tuned,
        [r.text for r in train_rows],
        [r.label for r in train_rows],
        FinetuneConfig(epochs=0.1, batch_size=8),
    )
    assert info["steps"] == info["steps_planned"] == int(len(train_rows) * 0.1 / 8) > 0
    assert "checks" not in info
    # Vectors cached before training are not served after it.
    assert not np.allclose(tuned.encode(probe), before, atol=1e-4)
