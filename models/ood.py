"""Out-of-distribution scores: higher means further from the training distribution.

Each strategy is fitted on the training reference (in-distribution rows only) and stored as
plain arrays. ``ood_threshold`` turns scores into ``is_ood`` so that a chosen share of
in-distribution validation texts pass.

>>> import numpy as np
>>> scores = np.array([0.1, 0.2, 0.3, 0.4])
>>> float(ood_threshold(scores, keep=0.5))
0.25
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamscore.models.head import LinearHead, rowwise_matmul, softmax

SINGLE = ("energy", "msp", "mahalanobis", "relative_mahalanobis", "knn")
# A logit score fused with a distance score: each z-scored on in-distribution validation texts,
# then added. The logit score sees what the classes are; the distance sees how far a text lies
# from every training text, which a new intent close to a known one does not escape as easily.
FUSED = ("energy+knn", "msp+knn", "energy+mahalanobis", "msp+mahalanobis")
STRATEGIES = SINGLE + FUSED
KEEP_IN_DIST = 0.95  # share of in-distribution validation texts the OOD gate passes, by default
# kNN compares a text with every reference row: past this many training rows it keeps a
# stratified sample, so its cost per message stays bounded (about 0.2 ms on 2 CPU cores).
KNN_MAX_REFERENCE = 20_000


def ood_threshold(in_dist_scores: np.ndarray, keep: float = KEEP_IN_DIST) -> float:
    """The score below which ``keep`` of the in-distribution scores lie."""
    return float(np.quantile(np.asarray(in_dist_scores, dtype=np.float64), keep))


def reference_rows(y: list[str], limit: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` rows, each label keeping its share (at least one row).

    >>> y = ["a"] * 80 + ["b"] * 20
    >>> rows = reference_rows(y, 10)
    >>> len(rows), sum(y[i] == "b" for i in rows)
    (10, 2)
    >>> len(reference_rows(y, 1000))
    100
    """
    if len(y) <= limit:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    labels = np.asarray(y)
    keep = []
    for label in sorted(set(y)):
        rows = np.flatnonzero(labels == label)
        take = max(1, round(len(rows) * limit / len(y)))
        keep.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1)
    return m + np.log(np.exp(logits - m[:, None]).sum(axis=1))


@dataclass
class OODScorer:
    """One OOD strategy with its fitted arrays (empty for the head-only strategies)."""

    strategy: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        strategy: str,
        X: np.ndarray,
        y: list[str],
        labels: list[str],
        *,
        shrinkage: float = 0.01,
        k: int = 5,
        X_val: np.ndarray | None = None,
        head: LinearHead | None = None,
    ) -> OODScorer:
        """Fit on training rows ``X``, ``y``; a fused strategy also needs in-distribution
        validation rows ``X_val`` and the ``head``, to put its two scores on one scale."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown OOD strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if strategy in FUSED:
            return cls._fit_fused(strategy, X, y, labels, shrinkage, k, X_val, head)
        X = np.asarray(X, dtype=np.float64)
        if strategy in ("energy", "msp"):
            return cls(strategy)
        if strategy == "knn":
            rows = reference_rows(y, KNN_MAX_REFERENCE)
            return cls(strategy, {"reference": X[rows].astype(np.float16)}, {"k": float(k)})
        index = {label: i for i, label in enumerate(labels)}
        yi = np.array([index[label] for label in y])
        means = np.stack([X[yi == i].mean(axis=0) for i in range(len(labels))])
        centred = X - means[yi]
        eye = np.eye(X.shape[1])
        cov = centred.T @ centred / len(X)
        arrays = {
            "means": means.astype(np.float32),
            "precision": np.linalg.inv(cov + shrinkage * eye).astype(np.float32),
        }
        if strategy == "relative_mahalanobis":
            mu0 = X.mean(axis=0)
            cov0 = (X - mu0).T @ (X - mu0) / len(X)
            arrays["global_mean"] = mu0.astype(np.float32)
            arrays["global_precision"] = np.linalg.inv(cov0 + shrinkage * eye).astype(np.float32)
        return cls(strategy, arrays, {"shrinkage": shrinkage})

    @classmethod
    def _fit_fused(
        cls,
        strategy: str,
        X: np.ndarray,
        y: list[str],
        labels: list[str],
        shrinkage: float,
        k: int,
        X_val: np.ndarray | None,
        head: LinearHead | None,
    ) -> OODScorer:
        if X_val is None or head is None or len(X_val) < 2:
            raise ValueError(f"OOD strategy {strategy!r} needs in-distribution validation rows and the head")
        arrays: dict[str, np.ndarray] = {}
        params: dict[str, float] = {}
        for i, part in enumerate(strategy.split("+")):
            fitted = cls.fit(part, X, y, labels, shrinkage=shrinkage, k=k)
            arrays |= fitted.arrays
            params |= fitted.params
            val = fitted.score(np.asarray(X_val, dtype=np.float32), head)
            params[f"mean_{i}"] = float(val.mean())
            params[f"std_{i}"] = float(val.std() or 1.0)
        return cls(strategy, arrays, params)

    def score(self, X: np.ndarray, head: LinearHead, logits: np.ndarray | None = None) -> np.ndarray:
        """OOD score per row of ``X`` (unit-length embeddings); ``logits`` of ``head`` if known.

        A row gets the same score in any batch (``knn``'s product with the whole training set
        goes through BLAS in float64: its batch-dependent rounding is below 1e-12).
        """
        s = self.strategy
        if s in FUSED:
            logits = head.logits(X) if logits is None else logits
            total = np.zeros(len(X))
            for i, part in enumerate(self._parts()):
                one = part.score(X, head, logits)
                total += (one - self.params[f"mean_{i}"]) / self.params[f"std_{i}"]
            return total
        if s in ("energy", "msp"):
            logits = head.logits(X) if logits is None else logits
            return -_logsumexp(logits) if s == "energy" else 1.0 - softmax(logits).max(axis=1)
        if s == "knn":
            k = int(self.params.get("k", 5))
            # In float64, so that BLAS's batch-dependent rounding stays far below the 6 decimals a
            # scored record keeps: a text scores the same live, replayed or rescored.
            sims = np.asarray(X, dtype=np.float64) @ self._reference64().T
            kth = np.partition(sims, -k, axis=1)[:, -k]
            return 1.0 - kth
        d = self._min_class_distance(X)
        if s == "relative_mahalanobis":
            c = X - self.arrays["global_mean"]
            d = d - (rowwise_matmul(c, self.arrays["global_precision"]) * c).sum(axis=1)
        return d

    def _reference64(self) -> np.ndarray:
        """The kNN reference in float64, made once per scorer (the artifact keeps float16)."""
        if "_ref64" not in self.__dict__:
            self.__dict__["_ref64"] = self.arrays["reference"].astype(np.float64)
        return self.__dict__["_ref64"]

    def _parts(self) -> list[OODScorer]:
        """A fused strategy's parts, made once, so that their caches last."""
        if "_part_scorers" not in self.__dict__:
            self.__dict__["_part_scorers"] = [
                OODScorer(p, self.arrays, self.params) for p in self.strategy.split("+")
            ]
        return self.__dict__["_part_scorers"]

    def _min_class_distance(self, X: np.ndarray) -> np.ndarray:
        P, mu = self.arrays["precision"], self.arrays["means"]
        XP = rowwise_matmul(X, P)  # P is symmetric, so this is X @ P
        d = (
            (XP * X).sum(axis=1)[:, None]
            - 2.0 * rowwise_matmul(XP, mu)
            + ((mu @ P) * mu).sum(axis=1)[None, :]
        )
        return d.min(axis=1)
