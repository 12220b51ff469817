"""Online drift detectors whose thresholds are calibrated to an expected run time (ERT).

Every detector sees one :class:`Signal` per scored message, keeps its state in plain numbers
(``state()`` / ``load_state()``), and reports ``statistic`` against ``threshold``. Thresholds are
set by simulation on held-out in-distribution signals (``calibrate_*``) so that, on a stationary
stream, the mean number of messages between false alarms is the configured ERT.

>>> import numpy as np

from models.head import rowwise_matmul
>>> rng = np.random.default_rng(0)
>>> det = OodCusum(mean=0.0, std=1.0, threshold=20.0)
>>> alarms = [det.update_value(x) for x in rng.normal(0, 1, 500)]
>>> any(alarms)
False
>>> any(det.update_value(x) for x in rng.normal(3, 1, 50))
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.head import rowwise_matmul


@dataclass(frozen=True)
class Signal:
    """What the drift agent sees of one scored message."""

    ood_score: float
    confidence: float
    label: int  # index into the model's labels
    projection: tuple[float, ...]  # low-dimensional view of the embedding


# ---------------------------------------------------------------- OOD score: one-sided CUSUM


@dataclass
class OodCusum:
    """Upward CUSUM on the standardised OOD score: fast on a rising share of foreign texts.

    ``s = max(0, s + clip(z) - k)``; alarm when ``s > threshold``, then ``s`` restarts at 0.
    """

    mean: float
    std: float
    threshold: float
    k: float = 0.25  # allowance: shifts smaller than k standard deviations are ignored
    clip: float = 6.0  # one extreme text cannot raise an alarm alone
    s: float = 0.0
    last: float = 0.0  # s after the latest update, before a restart: what an alert reports
    run: int = 0  # messages since s was last 0: the span the statistic covers
    name: str = "ood_cusum"

    def update_value(self, x: float) -> bool:
        z = min(max((x - self.mean) / self.std, -self.clip), self.clip)
        self.s = self.last = max(0.0, self.s + z - self.k)
        self.span = self.run = self.run + 1 if self.s > 0 else 0
        if self.s > self.threshold:
            self.s, self.run = 0.0, 0
            return True
        return False

    def update(self, sig: Signal) -> bool:
        return self.update_value(sig.ood_score)

    @property
    def statistic(self) -> float:
        return self.last

    span: int = 0

    def state(self) -> dict[str, Any]:
        return {"s": self.s, "last": self.last, "run": self.run}

    def load_state(self, state: dict[str, Any]) -> None:
        self.s, self.last, self.run = float(state["s"]), float(state["last"]), int(state["run"])


def _bisect_threshold(
    alarm_rate: Callable[[float], float], ert: float, lo: float, hi: float, steps: int
) -> float:
    """The lowest threshold (to bisection precision) whose simulated alarm rate is at most ``1/ert``."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        if alarm_rate(mid) > 1.0 / ert:
            lo = mid
        else:
            hi = mid
    return hi


def _cusum_alarms(z: np.ndarray, k: float, h: float) -> int:
    """Alarms (with restart) of a CUSUM run over each row of ``z`` (streams × steps)."""
    s = np.zeros(z.shape[0])
    alarms = 0
    for t in range(z.shape[1]):
        s = np.maximum(0.0, s + z[:, t] - k)
        hit = s > h
        alarms += int(hit.sum())
        s[hit] = 0.0
    return alarms


def calibrate_cusum(
    reference: np.ndarray,
    ert: float,
    k: float = 0.25,
    clip: float = 6.0,
    streams: int = 200,
    seed: int = 0,
    stream_sample: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """``(mean, std, threshold)``: standardise by ``reference``, and set the threshold so that
    bootstrap streams of ``stream_sample`` (default: ``reference``) alarm once per ``ert``."""
    reference = np.asarray(reference, dtype=np.float64)
    mean, std = float(reference.mean()), float(reference.std() or 1.0)
    sample = reference if stream_sample is None else np.asarray(stream_sample, dtype=np.float64)
    z_ref = np.clip((sample - mean) / std, -clip, clip)
    rng = np.random.default_rng(seed)
    steps = int(max(1_000, 100 * ert / streams))  # about 100 alarms expected at the target
    z = rng.choice(z_ref, size=(streams, steps))
    return mean, std, _bisect_threshold(lambda h: _cusum_alarms(z, k, h) / z.size, ert, 0.5, 200.0, 30)


# ------------------------------------------------------ sliding-window tests (labels, embedding)


@dataclass
class WindowTest:
    """A two-sample-style test of the last ``window`` messages against the training reference.

    Checked every ``every`` messages once the window is full; after an alarm the window starts
    empty, so one burst raises one alarm. Subclasses define ``_stat(window)``.
    """

    threshold: float
    window: int = 500
    every: int = 25
    seen: int = 0
    last: float = 0.0
    buffer: deque = field(default_factory=deque)
    name: str = "window_test"

    def _value(self, sig: Signal) -> Any:
        raise NotImplementedError

    def _stat(self, values: list[Any]) -> float:
        raise NotImplementedError

    def update(self, sig: Signal) -> bool:
        self.buffer.append(self._value(sig))
        if len(self.buffer) > self.window:
            self.buffer.popleft()
        self.seen += 1
        if len(self.buffer) < self.window or self.seen % self.every:
            return False
        self.last = self._stat(list(self.buffer))
        if self.last > self.threshold:
            self.buffer.clear()
            return True
        return False

    @property
    def statistic(self) -> float:
        return self.last

    @property
    def span(self) -> int:
        return self.window

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen, "last": self.last, "buffer": [_plain(v) for v in self.buffer]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.seen, self.last = int(state["seen"]), float(state["last"])
        self.buffer = deque(state["buffer"], maxlen=None)


def _plain(v: Any) -> Any:
    return v.tolist() if isinstance(v, np.ndarray) else v


@dataclass
class LabelShift(WindowTest):
    """G-test of the predicted-label counts in the window against the reference label mix."""

    prior: np.ndarray = field(default_factory=lambda: np.ones(1))
    name: str = "label_shift"

    def _value(self, sig: Signal) -> int:
        return sig.label

    def _stat(self, values: list[Any]) -> float:
        counts = np.bincount(np.asarray(values, dtype=np.int64), minlength=len(self.prior))
        return float(g_statistic(counts[None, :], self.prior)[0])


def g_statistic(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``2 Σ o log(o / e)`` per row of ``counts`` against ``prior`` (already smoothed, sums to 1)."""
    n = counts.sum(axis=1, keepdims=True)
    expected = n * prior[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log(counts / expected), 0.0)
    return 2.0 * terms.sum(axis=1)


@dataclass
class EmbeddingShift(WindowTest):
    """Hotelling-style test: is the window's mean projection far from the reference mean?

    ``n (m - mu)^T P (m - mu)`` with the reference precision ``P`` of the projection.
    """

    mean: np.ndarray = field(default_factory=lambda: np.zeros(1))
    precision: np.ndarray = field(default_factory=lambda: np.eye(1))
    window: int = 200
    every: int = 10
    name: str = "embedding_shift"

    def _value(self, sig: Signal) -> list[float]:
        return list(sig.projection)

    def _stat(self, values: list[Any]) -> float:
        d = np.asarray(values, dtype=np.float64).mean(axis=0) - self.mean
        return float(len(values) * d @ self.precision @ d)


def _window_alarm_rate(stats: np.ndarray, threshold: float, window: int, every: int) -> float:
    """Alarm rate of a window test from precomputed check statistics (streams × checks)."""
    gap = max(1, window // every)  # after an alarm the window refills before the next check
    alarms = 0
    for row in stats:
        t = 0
        hits = np.flatnonzero(row > threshold)
        for h in hits:
            if h >= t:
                alarms += 1
                t = int(h) + gap
    return alarms / (stats.shape[0] * stats.shape[1] * every)


def _threshold_for_rate(stats: np.ndarray, ert: float, window: int, every: int) -> float:
    return _bisect_threshold(
        lambda th: _window_alarm_rate(stats, th, window, every),
        ert,
        float(stats.min()),
        float(stats.max()) * 4 + 1.0,
        40,
    )


_SIM_STREAMS = 40


def _window_threshold(ert: float, window: int, every: int, seed: int, window_stats: Any) -> float:
    """Threshold of a window test: ``window_stats(rng, steps, ends)`` gives the statistic at each
    check (window ending at ``ends``) of one simulated stationary stream."""
    rng = np.random.default_rng(seed)
    steps = int(max(2_000, 30 * ert / _SIM_STREAMS))
    ends = np.arange(window, steps + 1, every)
    stats = np.stack([window_stats(rng, steps, ends) for _ in range(_SIM_STREAMS)])
    return _threshold_for_rate(stats, ert, window, every)


def calibrate_label_shift(
    labels: np.ndarray,
    n_labels: int,
    ert: float,
    window: int = 500,
    every: int = 25,
    seed: int = 0,
    stream_sample: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """``(prior, threshold)``: the label mix of ``labels`` (predicted labels of held-out
    in-distribution texts), and a threshold from bootstrap streams of ``stream_sample``."""
    labels = np.asarray(labels, dtype=np.int64)
    prior = (np.bincount(labels, minlength=n_labels) + 0.5) / (len(labels) + 0.5 * n_labels)
    sample = labels if stream_sample is None else np.asarray(stream_sample, dtype=np.int64)

    def window_stats(rng: np.random.Generator, steps: int, ends: np.ndarray) -> np.ndarray:
        cum = np.zeros((steps + 1, n_labels), dtype=np.int32)
        np.add.at(cum[1:], (np.arange(steps), rng.choice(sample, size=steps)), 1)
        cum = cum.cumsum(axis=0)
        return g_statistic(cum[ends] - cum[ends - window], prior)

    return prior, _window_threshold(ert, window, every, seed, window_stats)


def calibrate_embedding_shift(
    projections: np.ndarray,
    ert: float,
    window: int = 200,
    every: int = 10,
    seed: int = 0,
    stream_sample: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, precision, threshold)``: moments of ``projections`` (held-out in-distribution
    texts), and a threshold from bootstrap streams of ``stream_sample``."""
    P = np.asarray(projections, dtype=np.float64)
    mean = P.mean(axis=0)
    precision = np.linalg.inv(np.cov(P, rowvar=False) + 1e-6 * np.eye(P.shape[1]))
    sample = P if stream_sample is None else np.asarray(stream_sample, dtype=np.float64)

    def window_stats(rng: np.random.Generator, steps: int, ends: np.ndarray) -> np.ndarray:
        draws = sample[rng.integers(0, len(sample), size=steps)]
        cum = np.vstack([np.zeros(sample.shape[1]), draws.cumsum(axis=0)])
        d = (cum[ends] - cum[ends - window]) / window - mean
        return window * np.einsum("ij,jk,ik->i", d, precision, d)

    return mean, precision, _window_threshold(ert, window, every, seed, window_stats)


# ---------------------------------------------------- confidence: River's Page-Hinkley test


_PH_FIELDS = ("_sum_increase", "_sum_decrease", "_min_increase", "_max_decrease")


@dataclass
class ConfidenceDrop:
    """River's Page-Hinkley test on ``1 - confidence``: the model growing less sure of itself.

    Page-Hinkley learns the stream's own mean, so it reports a change in the stream, not a
    distance to the reference; it complements the reference-based tests above.
    """

    threshold: float
    delta: float = 0.005
    min_instances: int = 100
    name: str = "confidence_drop"
    ph: Any = None

    def __post_init__(self) -> None:
        from river.drift import PageHinkley

        if self.ph is None:
            self.ph = PageHinkley(
                min_instances=self.min_instances, delta=self.delta, threshold=self.threshold, mode="up"
            )

    def update(self, sig: Signal) -> bool:
        self.ph.update(1.0 - sig.confidence)
        return bool(self.ph.drift_detected)

    @property
    def statistic(self) -> float:
        return float(self.ph._sum_increase - self.ph._min_increase)

    @property
    def span(self) -> int:
        return int(self.ph._x_mean.n)

    def state(self) -> dict[str, Any]:
        # River keeps its state in attributes; these are all of Page-Hinkley's (river 0.26).
        mean = self.ph._x_mean
        return {
            **{f: float(getattr(self.ph, f)) for f in _PH_FIELDS},
            "n": float(mean.n),
            "mean": float(mean.get()),
            "drift": bool(self.ph.drift_detected),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for f in _PH_FIELDS:
            setattr(self.ph, f, float(state[f]))
        self.ph._x_mean.n = state["n"]
        self.ph._x_mean._mean = state["mean"]
        self.ph._drift_detected = bool(state["drift"])


def calibrate_confidence_drop(
    confidence: np.ndarray, ert: float, delta: float = 0.005, min_instances: int = 100, seed: int = 0
) -> float:
    """Page-Hinkley threshold so that bootstrap streams of ``confidence`` alarm once per ``ert``."""
    rng = np.random.default_rng(seed)
    x = 1.0 - rng.choice(np.asarray(confidence, dtype=np.float64), size=int(max(20_000, 8 * ert)))

    def alarm_rate(threshold: float) -> float:
        det = ConfidenceDrop(threshold=threshold, delta=delta, min_instances=min_instances)
        alarms = 0
        for v in x:
            det.ph.update(v)
            alarms += det.ph.drift_detected
        return alarms / len(x)

    return _bisect_threshold(alarm_rate, ert, 0.1, 500.0, 12)


# ----------------------------------------------------------------- the calibrated detector set


@dataclass
class DriftCalibration:
    """Everything the drift agent needs, fitted at training time and stored in the artifact."""

    ert: float
    projection_mean: np.ndarray  # PCA of training embeddings → ``projection``
    projection_components: np.ndarray  # (k, dim)
    ood: dict[str, float]  # mean, std, threshold, k
    confidence: dict[str, float]  # threshold, delta, min_instances
    labels: dict[str, Any]  # prior (list), threshold, window, every
    embedding: dict[str, Any]  # mean (list), precision (list of lists), threshold, window, every

    def project(self, X: np.ndarray) -> np.ndarray:
        return rowwise_matmul(np.asarray(X) - self.projection_mean, self.projection_components)

    def detectors(self) -> list[Any]:
        """Fresh detectors with the calibrated thresholds, in a fixed order."""
        return [
            OodCusum(self.ood["mean"], self.ood["std"], self.ood["threshold"], k=self.ood["k"]),
            ConfidenceDrop(
                self.confidence["threshold"], self.confidence["delta"], int(self.confidence["min_instances"])
            ),
            LabelShift(
                threshold=self.labels["threshold"],
                window=int(self.labels["window"]),
                every=int(self.labels["every"]),
                prior=np.asarray(self.labels["prior"]),
            ),
            EmbeddingShift(
                threshold=self.embedding["threshold"],
                window=int(self.embedding["window"]),
                every=int(self.embedding["every"]),
                mean=np.asarray(self.embedding["mean"]),
                precision=np.asarray(self.embedding["precision"]),
            ),
        ]

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
) -> DriftCalibration:
    """Calibrate every detector on held-out in-distribution signals (``*_val``).

    The combined alert stream must respect ``ert``, so each of the ``N_DETECTORS`` detectors gets
    ``N_DETECTORS * ert``: the false-alarm rates add up to at most ``1 / ert``.
    """
    per = ert * N_DETECTORS * HEADROOM
    mu = X_train.mean(axis=0)
    _, _, vt = np.linalg.svd(X_train - mu, full_matrices=False)
    components = vt[:dims].astype(np.float32)
    proj = (X_val - mu) @ components.T
    # Cross-fitting: the reference comes from one half of the held-out texts and the simulated
    # streams from the other, so each threshold also covers the difference between two samples
    # of the same distribution, as between the validation texts and tomorrow's traffic.
    half = np.random.default_rng(seed).permutation(len(X_val))
    a, b = half[: len(half) // 2], half[len(half) // 2 :]
    k = 0.25
    m, s, h = calibrate_cusum(ood_scores[a], per, k=k, seed=seed, stream_sample=ood_scores[b])
    ph = calibrate_confidence_drop(confidence, per, seed=seed)
    prior, g = calibrate_label_shift(labels[a], n_labels, per, seed=seed, stream_sample=labels[b])
    emean, eprec, e = calibrate_embedding_shift(proj[a], per, seed=seed, stream_sample=proj[b])
    return DriftCalibration(
        ert=ert,
        projection_mean=mu.astype(np.float32),
        projection_components=components,
        ood={"mean": m, "std": s, "threshold": h, "k": k},
        confidence={"threshold": ph, "delta": 0.005, "min_instances": 100},
        labels={"prior": prior.tolist(), "threshold": g, "window": 500, "every": 25},
        embedding={
            "mean": emean.tolist(),
            "precision": eprec.tolist(),
            "threshold": e,
            "window": 200,
            "every": 10,
        },
    )
