"""The classifier head: a softmax linear layer over embeddings, stored as plain arrays.

Fitting uses scikit-learn's multinomial logistic regression; serving is two numpy lines, so
the artifact needs no pickle and scoring a batch is one matrix product.

The product goes through ``rowwise_matmul``: BLAS rounds a row differently depending on how
many rows share the call, which moved the 6th decimal of a score between two replays of the
same text; numpy's own einsum loop gives each row the same result in any batch.

>>> import numpy as np
>>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32)
>>> head = LinearHead.fit(X, ["a", "a", "b", "b"], c=10.0)
>>> head.predict_proba(np.array([[1.0, 0.0]], dtype=np.float32)).argmax(axis=1).tolist()
[0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rowwise_matmul(X: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``X @ M.T`` where each row's result does not depend on the other rows of ``X``.

    >>> X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    >>> bool((rowwise_matmul(X, X)[2] == rowwise_matmul(X[2:3], X)[0]).all())
    True
    """
    return np.einsum("ij,kj->ik", X, M)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass
class LinearHead:
    """``p(label | x) = softmax(x @ weights.T + bias)``."""

    labels: list[str]
    weights: np.ndarray  # (n_labels, dim)
    bias: np.ndarray  # (n_labels,)

    @classmethod
    def fit(cls, X: np.ndarray, y: list[str], c: float = 10.0, max_iter: int = 1000) -> LinearHead:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=max_iter)
        clf.fit(X, y)
        return cls(
            labels=[str(label) for label in clf.classes_],
            weights=clf.coef_.astype(np.float32),
            bias=clf.intercept_.astype(np.float32),
        )

    def logits(self, X: np.ndarray) -> np.ndarray:
        return rowwise_matmul(np.asarray(X, dtype=np.float32), self.weights) + self.bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.logits(X))

    def predict(self, X: np.ndarray) -> list[str]:
        idx = self.predict_proba(X).argmax(axis=1)
        return [self.labels[i] for i in idx]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "bias": self.bias}

    @classmethod
    def from_arrays(cls, labels: list[str], arrays: dict[str, np.ndarray]) -> LinearHead:
        weights = np.asarray(arrays["weights"], dtype=np.float32)
        bias = np.asarray(arrays["bias"], dtype=np.float32)
        if weights.ndim != 2 or weights.shape[0] != len(labels) or bias.shape != (len(labels),):
            raise ValueError(
                f"head arrays do not match {len(labels)} labels: weights {weights.shape}, bias {bias.shape}"
            )
        return cls(labels=list(labels), weights=weights, bias=bias)
