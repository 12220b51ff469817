"""Scoring a batch: embeddings → label, confidence, top-k and OOD score, all vectorised.

Typical use (needs a trained registry)::

    scorer = Scorer.load(Registry("artifacts").load(), Embedder.load())
    scorer.score(["I lost my card"]).labels   # ['report_lost_card']
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from streamscore.models.artifact import ArtifactError, ModelArtifact
from streamscore.models.embedder import Embedder, resolve_model_path
from streamscore.models.head import softmax


@dataclass
class Scores:
    """Per-row results of one batch, as arrays."""

    labels: list[str]
    confidence: np.ndarray  # (n,)
    top_k_labels: list[list[str]]
    top_k_probs: np.ndarray  # (n, k)
    ood_scores: np.ndarray  # (n,)
    ood_threshold: float
    label_index: np.ndarray | None = None  # (n,) index into the model's labels
    projection: np.ndarray | None = None  # (n, k) embedding projection for drift detection
    embed_s: float = 0.0  # seconds spent embedding this batch
    embeddings: np.ndarray | None = None  # (n, dim) what was scored: foreign texts' go to drift evidence

    @property
    def is_ood(self) -> np.ndarray:
        return self.ood_scores > self.ood_threshold


def score_embeddings(artifact: ModelArtifact, X: np.ndarray, top_k: int = 3) -> Scores:
    logits = artifact.head.logits(X)
    probs = softmax(logits)
    k = min(top_k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    top_probs = np.take_along_axis(probs, top, axis=1)
    names = artifact.head.labels
    return Scores(
        labels=[names[i] for i in top[:, 0]],
        confidence=top_probs[:, 0],
        top_k_labels=[[names[i] for i in row] for row in top],
        top_k_probs=top_probs,
        ood_scores=artifact.ood.score(X, artifact.head, logits),
        ood_threshold=artifact.ood_threshold,
        label_index=top[:, 0],
        projection=artifact.drift.project(X) if artifact.drift is not None else None,
        embeddings=X,
    )


def check_compatible(artifact: ModelArtifact, embedder: Embedder) -> None:
    """Refuse an artifact trained on another embedder: its scores would be meaningless."""
    same_model = resolve_model_path(artifact.embedder_name) == resolve_model_path(embedder.name)
    if not same_model or artifact.dim != embedder.dim:
        raise ArtifactError(
            f"model {artifact.version} was trained on embedder {artifact.embedder_name!r} "
            f"({artifact.dim}-d) but the worker runs {embedder.name!r} ({embedder.dim}-d); "
            "retrain with this embedder or start the worker with the artifact's one"
        )


@dataclass
class Scorer:
    """An artifact bound to a loaded embedder."""

    artifact: ModelArtifact
    embedder: Embedder
    top_k: int = 3

    @classmethod
    def load(cls, artifact: ModelArtifact, embedder: Embedder, top_k: int = 3) -> Scorer:
        check_compatible(artifact, embedder)
        return cls(artifact, embedder, top_k)

    @property
    def version(self) -> str:
        return self.artifact.version

    def score(self, texts: list[str]) -> Scores:
        started = time.perf_counter()
        X = self.embedder.encode(texts)
        embed_s = time.perf_counter() - started
        scores = score_embeddings(self.artifact, X, self.top_k)
        scores.embed_s = embed_s
        return scores
