"""The calibrated detector set: fitted at training time, stored in the artifact, rebuilt to serve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from streamscore.models.drift import embedding_shift, label_mix, label_shift
from streamscore.models.drift.confidence_drop import (
    DELTA,
    MIN_INSTANCES,
    ConfidenceDrop,
    calibrate_confidence_drop,
)
from streamscore.models.drift.embedding_shift import (
    EmbeddingCentre,
    EmbeddingShift,
    calibrate_embedding_shift,
)
from streamscore.models.drift.embedding_spread import EmbeddingSpread, calibrate_embedding_spread
from streamscore.models.drift.label_mix import LabelMix, calibrate_label_mix
from streamscore.models.drift.label_shift import LabelShift, calibrate_label_shift
from streamscore.models.drift.ood_cusum import OodCusum, calibrate_cusum
from streamscore.models.drift.signal import Detector
from streamscore.models.head import rowwise_matmul


@dataclass
class DriftCalibration:
    """Everything the drift agent needs, fitted at training time and stored in the artifact."""

    ert: float
    projection_mean: np.ndarray  # PCA of training embeddings → ``projection``
    projection_components: np.ndarray  # (k, dim)
    ood: dict[str, float]  # mean, std, threshold, k
    confidence: dict[str, Any]  # threshold, delta, min_instances, by_label (list)
    # test "mix" (default): prior (list), threshold, lam; test "window" (and before 2026-12-05,
    # when there was no test key): prior, threshold, window, every
    labels: dict[str, Any]
    # mean (list), precision (list of lists), threshold, window, every (the centre test), and
    # spread (dist_mean, dist_std, threshold, k) unless calibrated without (or before 2026-12-05)
    embedding: dict[str, Any]

    def project(self, X: np.ndarray) -> np.ndarray:
        return rowwise_matmul(np.asarray(X) - self.projection_mean, self.projection_components)

    def detectors(self) -> list[Detector]:
        """Fresh detectors with the calibrated thresholds, in a fixed order."""
        return [
            OodCusum(self.ood["mean"], self.ood["std"], self.ood["threshold"], k=self.ood["k"]),
            ConfidenceDrop(
                self.confidence["threshold"], self.confidence["delta"], int(self.confidence["min_instances"])
            ),
            self._label_detector(),
            self._embedding_detector(),
        ]

    def _label_detector(self) -> Detector:
        prior = np.asarray(self.labels["prior"], dtype=np.float64)
        if self.labels.get("test", "window") == "mix":
            return LabelMix(self.labels["threshold"], prior, lam=float(self.labels["lam"]))
        return LabelShift(
            threshold=self.labels["threshold"],
            window=int(self.labels["window"]),
            every=int(self.labels["every"]),
            prior=prior,
        )

    def _embedding_detector(self) -> Detector:
        e = self.embedding
        mean, precision = np.asarray(e["mean"]), np.asarray(e["precision"])
        centre = EmbeddingCentre(
            threshold=e["threshold"],
            window=int(e["window"]),
            every=int(e["every"]),
            mean=mean,
            precision=precision,
        )
        spread = None
        if e.get("spread"):
            s = e["spread"]
            spread = EmbeddingSpread(
                mean, precision, s["dist_mean"], s["dist_std"], threshold=s["threshold"], k=s["k"]
            )
        return EmbeddingShift(centre, spread)

    def to_json(self) -> dict[str, Any]:
        return {
            "ert": self.ert,
            "ood": self.ood,
            "confidence": self.confidence,
            "labels": self.labels,
            "embedding": self.embedding,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"projection_mean": self.projection_mean, "projection_components": self.projection_components}

    @classmethod
    def from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> DriftCalibration:
        return cls(
            ert=float(meta["ert"]),
            projection_mean=np.asarray(arrays["projection_mean"]),
            projection_components=np.asarray(arrays["projection_components"]),
            ood=meta["ood"],
            confidence=meta["confidence"],
            labels=meta["labels"],
            embedding=meta["embedding"],
        )


N_DETECTORS = 4
# The bootstrap estimate of a threshold has sampling error; calibrating each detector for a
# longer run time than its share keeps the combined stream within the ERT it promises.
HEADROOM = 1.25
CUSUM_K = 0.25
LabelTest = Literal["mix", "window"]  # the EWMA chi-square (label_mix.py) or the G-test of 500
EmbeddingTest = Literal["centre+spread", "centre"]


def calibrate_drift(
    X_train: np.ndarray,
    X_val: np.ndarray,
    ood_scores: np.ndarray,
    confidence: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    ert: float = 10_000.0,
    dims: int = 8,
    seed: int = 0,
    label_test: LabelTest = "mix",
    embedding_test: EmbeddingTest = "centre+spread",
) -> DriftCalibration:
    """Calibrate every detector on held-out in-distribution signals (``*_val``).

    The combined alert stream must respect ``ert``, so each of the ``N_DETECTORS`` detectors gets
    ``N_DETECTORS * ert``: the false-alarm rates add up to at most ``1 / ert``; the embedding
    detector's two parts share its rate, each calibrated for twice its run time.
    """
    per = ert * N_DETECTORS * HEADROOM
    mu = X_train.mean(axis=0)
    _, _, vt = np.linalg.svd(X_train - mu, full_matrices=False)
    components = vt[:dims].astype(np.float32)
    proj = (X_val - mu) @ components.T
    # Every threshold covers the error of a reference estimated from the held-out texts (each
    # simulated stream is tested against a bootstrap resample's reference): a small validation
    # set otherwise gives thresholds that alarm far more often than the ERT promises.
    m, s, h = calibrate_cusum(ood_scores, per, k=CUSUM_K, seed=seed)
    ph = calibrate_confidence_drop(confidence, per, seed=seed)
    if label_test == "mix":
        prior, g = calibrate_label_mix(labels, n_labels, per, seed=seed)
        label_cal = {"test": "mix", "prior": prior.tolist(), "threshold": g, "lam": label_mix.LAMBDA}
    else:
        prior, g = calibrate_label_shift(labels, n_labels, per, seed=seed)
        label_cal = {
            "test": "window",
            "prior": prior.tolist(),
            "threshold": g,
            "window": label_shift.WINDOW,
            "every": label_shift.EVERY,
        }
    parts = 2 if embedding_test == "centre+spread" else 1
    emean, eprec, e = calibrate_embedding_shift(proj, per * parts, seed=seed)
    spread = calibrate_embedding_spread(proj, per * parts, seed=seed) if parts == 2 else None
    return DriftCalibration(
        ert=ert,
        projection_mean=mu.astype(np.float32),
        projection_components=components,
        ood={"mean": m, "std": s, "threshold": h, "k": CUSUM_K},
        confidence={
            "threshold": ph,
            "delta": DELTA,
            "min_instances": MIN_INSTANCES,
            "by_label": confidence_by_label(confidence, labels, n_labels),
        },
        labels=label_cal,
        embedding={
            "mean": emean.tolist(),
            "precision": eprec.tolist(),
            "threshold": e,
            "window": embedding_shift.WINDOW,
            "every": embedding_shift.EVERY,
            "spread": spread,
        },
    )


def confidence_by_label(confidence: np.ndarray, labels: np.ndarray, n_labels: int) -> list[float]:
    """Mean confidence of held-out texts by predicted label (the overall mean for a label never
    predicted): what an episode's confidence is compared with, to say whose fell.

    >>> confidence_by_label(np.array([0.9, 0.7, 0.5]), np.array([0, 0, 1]), 3)
    [0.8, 0.5, 0.7]
    """
    confidence, labels = np.asarray(confidence, dtype=np.float64), np.asarray(labels)
    overall = float(confidence.mean()) if len(confidence) else 1.0
    return [
        round(float(confidence[labels == i].mean()), 6) if (labels == i).any() else round(overall, 6)
        for i in range(n_labels)
    ]
