"""Metrics for a trained model on labelled rows: accuracy, macro-F1 and OOD detection.

>>> import numpy as np
>>> m = ood_metrics(np.array([0.1, 0.2, 0.3]), np.array([0.9, 0.25]), threshold=0.28)
>>> m["ood_auroc"], m["ood_recall"]
(0.8333333333333334, 0.5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamscore.models.artifact import ModelArtifact
from streamscore.models.embedder import Embedder
from streamscore.models.scoring import Scores, score_embeddings
from streamscore.training.data import Row


def classification_metrics(y_true: list[str], y_pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def ood_metrics(in_scores: np.ndarray, ood_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC of OOD vs in-distribution, FPR at 95% in-distribution recall, recall at threshold."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(ood_scores))]
    at_95 = float(np.quantile(in_scores, 0.95))
    return {
        "ood_auroc": float(roc_auc_score(y, np.r_[in_scores, ood_scores])),
        "ood_fpr95": float(np.mean(ood_scores <= at_95)),
        "ood_recall": float(np.mean(ood_scores > threshold)),
        "in_scope_pass_rate": float(np.mean(in_scores <= threshold)),
    }


def evaluate_embeddings(
    artifact: ModelArtifact,
    X: np.ndarray,
    labels: list[str],
    ood_label: str = "oos",
    scores: Scores | None = None,
    near_labels: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    """All metrics for rows already embedded (and scored, if ``scores`` is given). Rows labelled
    ``ood_label`` are far-OOD (``ood_*`` metrics); rows of ``near_labels``, labels withheld from
    training, are near-OOD (``near_ood_*``): new intents that resemble the known ones."""
    scores = scores if scores is not None else score_embeddings(artifact, X)
    is_ood = np.array([label == ood_label for label in labels], dtype=bool)
    is_near = np.array([label in near_labels for label in labels], dtype=bool)
    in_scope = ~is_ood & ~is_near
    in_idx = np.flatnonzero(in_scope)
    out: dict[str, Any] = {
        "n": len(labels),
        "n_in_scope": int(len(in_idx)),
        "n_ood": int(is_ood.sum()),
    }
    if len(in_idx):
        out.update(classification_metrics([labels[i] for i in in_idx], [scores.labels[i] for i in in_idx]))
    if is_ood.any() and len(in_idx):
        out.update(ood_metrics(scores.ood_scores[in_scope], scores.ood_scores[is_ood], scores.ood_threshold))
    if is_near.any() and len(in_idx):
        near = ood_metrics(scores.ood_scores[in_scope], scores.ood_scores[is_near], scores.ood_threshold)
        out["n_near_ood"] = int(is_near.sum())
        out.update({f"near_{k}": v for k, v in near.items() if k != "in_scope_pass_rate"})
    out["model_version"] = artifact.version
    return out


def evaluate_rows(
    artifact: ModelArtifact,
    embedder: Embedder,
    rows: list[Row],
    ood_label: str = "oos",
    progress: bool = False,
    near_labels: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    import time

    t = time.perf_counter()
    X = embedder.encode([r.text for r in rows], progress=progress)
    encode_s = time.perf_counter() - t
    t = time.perf_counter()
    scores = score_embeddings(artifact, X)
    head_s = time.perf_counter() - t
    out = evaluate_embeddings(artifact, X, [r.label for r in rows], ood_label, scores, near_labels)
    # Cost per message: the encoder dominates; head + OOD is what a strategy adds.
    out["ms_per_text_encode"] = 1000 * encode_s / len(rows)
    out["ms_per_text_head_ood"] = 1000 * head_s / len(rows)
    out["finetuned_encoder"] = bool(artifact.manifest["embedder"].get("finetuned"))
    out["ood_strategy"] = artifact.ood.strategy
    return out
