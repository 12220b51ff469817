"""Predicted labels: an exponentially weighted chi-square of the recent label mix against the training mix."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamscore.models.drift.label_shift import label_prior
from streamscore.models.drift.signal import Signal
from streamscore.models.drift.window import SIM_STREAMS, window_threshold

# Weight of the newest message: the mix remembers about 2/λ ≈ 130 messages. Chosen among
# 0.007-0.04 on drift-eval's CLINC150 streams in a prototype (docs/drift.md): shorter memories pay
# in threshold more than they gain in speed, longer ones dilute a new mix in old messages.
LAMBDA = 0.015


@dataclass
class LabelMix:
    """Is the recent label mix far from the reference mix? Every message updates it.

    When to choose it: to see the mix of predicted labels move (a campaign, a season, a new
    product line); the default label test, faster than a window because it needs no refill.
    Method: an exponentially weighted moving average chart (Roberts 1959, Technometrics 1) of the
    label proportions, with Pearson's chi-square statistic against the reference prior.

    ``z ← (1 − λ)·z + λ·(onehot(label) − prior)`` and the statistic is ``(2 − λ)/λ · Σ z²/prior``:
    Pearson's chi-square of an exponentially weighted label mix (an EWMA chart of a multinomial).
    Alarm above the threshold, then ``z`` restarts at 0. A windowed test must wait until new
    messages outweigh the window's old ones; here the newest weigh most.

    >>> det = LabelMix(threshold=40.0, prior=np.array([0.5, 0.3, 0.2]), lam=0.1)
    >>> any(det.update(Signal(0.0, 0.9, i % 3, ())) for i in range(300))
    False
    >>> [det.update(Signal(0.0, 0.9, 2, ())) for _ in range(12)].index(True)
    9
    """

    threshold: float
    prior: np.ndarray = field(default_factory=lambda: np.ones(1))
    lam: float = LAMBDA
    z: np.ndarray | None = None
    last: float = 0.0
    run: int = 0  # messages since the last restart
    span: int = 0  # the messages the statistic mostly rests on: the last ~2/λ since the restart
    name: str = "label_shift"

    def __post_init__(self) -> None:
        self.prior = np.asarray(self.prior, dtype=np.float64)
        self._pull = self.lam * self.prior  # what every message takes from each label's share
        self._weight = (2.0 - self.lam) / self.lam / self.prior

    def update(self, sig: Signal) -> bool:
        if self.z is None:
            self.z = np.zeros(len(self.prior))
        z = self.z
        z *= 1.0 - self.lam
        z -= self._pull
        z[sig.label] += self.lam
        self.last = float(np.dot(z * z, self._weight))
        self.run += 1
        self.span = min(self.run, math.ceil(2.0 / self.lam))
        if self.last > self.threshold:
            self.z, self.run = None, 0
            return True
        return False

    @property
    def statistic(self) -> float:
        return self.last

    def state(self) -> dict[str, Any]:
        return {"z": None if self.z is None else self.z.tolist(), "last": self.last, "run": self.run}

    def load_state(self, state: dict[str, Any]) -> None:
        self.z = None if state["z"] is None else np.asarray(state["z"], dtype=np.float64)
        self.last, self.run = float(state["last"]), int(state["run"])


def mix_path(labels: np.ndarray, priors: np.ndarray, lam: float) -> np.ndarray:
    """The statistic after every message of each row of ``labels`` (streams × steps), each row
    against its own prior, without restarts."""
    streams, steps = labels.shape
    z = np.zeros_like(priors, dtype=np.float64)
    rows = np.arange(streams)
    out = np.empty((streams, steps))
    scale = (2.0 - lam) / lam
    pull = lam * priors  # the same every step, as LabelMix keeps it
    for t in range(steps):
        z *= 1.0 - lam
        z -= pull
        z[rows, labels[:, t]] += lam
        out[:, t] = scale * np.einsum("sc,sc->s", z, z / priors)
    return out


def calibrate_label_mix(
    labels: np.ndarray, n_labels: int, ert: float, lam: float = LAMBDA, seed: int = 0
) -> tuple[np.ndarray, float]:
    """``(prior, threshold)``: the label mix of ``labels`` (predicted labels of held-out
    in-distribution texts) and a threshold from bootstrap streams of them, each against the mix of
    its own bootstrap resample (the error of a prior counted on a few hundred texts is covered).

    Alarms are counted on the statistic's path with a pause of 2/λ messages after each, the time
    a restarted ``z`` takes to regain its memory, as the window tests pause while they refill.
    """
    labels = np.asarray(labels, dtype=np.int64)
    prior = label_prior(labels, n_labels)
    memory = math.ceil(2.0 / lam)
    paths: list[np.ndarray] = []

    def stats(rng: np.random.Generator, steps: int, ends: np.ndarray) -> np.ndarray:
        if not paths:  # window_threshold asks for SIM_STREAMS streams: all at once, one vectorised pass
            priors = np.stack(
                [label_prior(rng.choice(labels, size=len(labels)), n_labels) for _ in range(SIM_STREAMS)]
            )
            paths.extend(mix_path(rng.choice(labels, size=(SIM_STREAMS, steps)), priors, lam))
        return paths.pop()[ends - 1]

    return prior, window_threshold(ert, memory, 1, seed, stats)
