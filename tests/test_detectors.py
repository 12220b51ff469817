"""Every detector the drift package exports keeps one contract, checked the same way on each (River's
``test_estimators.py`` is the model): its state is plain JSON, a detector restored from it goes on
exactly as the one it came from, it sees a shift of what it watches, calibrated it keeps its
false-alarm budget on in-distribution signals, and its docstring says when to choose it and which
method it implements. A new detector is in the list by being exported: it cannot skip a check."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

import numpy as np
import pytest

from streamscore.models import drift
from streamscore.models.drift import DriftCalibration, EmbeddingShift, Signal, calibrate_drift

ERT = 200.0  # for the combined stream; each detector gets N_DETECTORS x HEADROOM of it
N_LABELS, DIM, DIMS = 6, 24, 8
CONTRACT = ("update", "state", "load_state", "statistic", "span")  # and a threshold, often a field


def exported_detectors() -> list[type]:
    """Every class the package exports that offers the Detector contract."""
    found = [getattr(drift, name) for name in drift.__all__]
    return sorted(
        (
            c
            for c in found
            if inspect.isclass(c) and c is not drift.Detector and all(hasattr(c, a) for a in CONTRACT)
        ),
        key=lambda c: c.__name__,
    )


def reference(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """In-distribution texts as the model sees them: embeddings, OOD scores, confidences, labels."""
    prior = np.array([0.3, 0.25, 0.15, 0.12, 0.1, 0.08])
    labels = rng.choice(N_LABELS, size=n, p=prior)
    centres = rng.normal(0, 1, (N_LABELS, DIM))
    X = centres[labels] + rng.normal(0, 0.6, (n, DIM))
    return X, rng.normal(0, 1, n), rng.beta(9, 1, n), labels


@pytest.fixture(scope="module")
def calibrations() -> dict[str, DriftCalibration]:
    rng = np.random.default_rng(0)
    X_train, *_ = reference(rng, 3_000)
    X_val, ood, conf, labels = reference(rng, 1_500)
    return {
        test: calibrate_drift(
            X_train, X_val, ood, conf, labels, N_LABELS, ert=ERT, dims=DIMS, label_test=test
        )
        for test in ("mix", "window")
    }


def factories(calibrations: dict[str, DriftCalibration]) -> dict[type, Callable[[], drift.Detector]]:
    """A calibrated, fresh detector of each kind: the set a model ships and the embedding parts."""
    out: dict[type, Callable[[], drift.Detector]] = {}
    for cal in calibrations.values():
        for i, det in enumerate(cal.detectors()):
            out.setdefault(type(det), lambda cal=cal, i=i: cal.detectors()[i])
            if isinstance(det, EmbeddingShift):
                out.setdefault(type(det.centre), lambda cal=cal, i=i: cal.detectors()[i].centre)
                out.setdefault(type(det.spread), lambda cal=cal, i=i: cal.detectors()[i].spread)
    return out


def signals(cal: DriftCalibration, n: int, shifted: bool, seed: int) -> list[Signal]:
    """Signals of texts like the reference, or shifted in everything a detector may watch: higher
    OOD scores, lower confidence, one label, projections off the centre."""
    rng = np.random.default_rng(seed)
    prior = np.asarray(cal.labels["prior"])
    mean, precision = np.asarray(cal.embedding["mean"]), np.asarray(cal.embedding["precision"])
    labels = np.full(n, 5) if shifted else rng.choice(N_LABELS, size=n, p=prior)
    projections = rng.multivariate_normal(mean + (3.0 if shifted else 0.0), np.linalg.inv(precision), size=n)
    ood = rng.normal(cal.ood["mean"] + (3 * cal.ood["std"] if shifted else 0.0), cal.ood["std"], size=n)
    confidence = np.clip(rng.beta(9, 1, size=n) - (0.4 if shifted else 0.0), 0.0, 1.0)
    return [
        Signal(float(o), float(c), int(label), tuple(float(v) for v in x))
        for o, c, label, x in zip(ood, confidence, labels, projections, strict=True)
    ]


def test_every_exported_detector_is_checked(calibrations):
    assert set(factories(calibrations)) == set(exported_detectors())


@pytest.mark.parametrize("kind", exported_detectors(), ids=lambda c: c.__name__)
def test_state_round_trips_through_json_and_a_restored_detector_goes_on_the_same(kind, calibrations):
    make = factories(calibrations)[kind]
    cal = calibrations["mix"]
    stream = signals(cal, 400, False, seed=1) + signals(cal, 300, True, seed=2)
    original = make()
    for sig in stream[:450]:
        original.update(sig)
    state = original.state()
    restored = make()
    restored.load_state(json.loads(json.dumps(state)))  # plain numbers only
    assert json.loads(json.dumps(restored.state())) == json.loads(json.dumps(state))
    for sig in stream[450:]:
        assert restored.update(sig) == original.update(sig)
        assert restored.statistic == pytest.approx(original.statistic, rel=1e-12, abs=1e-12)
    assert restored.span == original.span


@pytest.mark.parametrize("kind", exported_detectors(), ids=lambda c: c.__name__)
def test_a_shift_of_what_it_watches_raises_an_alarm(kind, calibrations):
    det = factories(calibrations)[kind]()
    cal = calibrations["mix"]
    for sig in signals(cal, 200, False, seed=3):  # a history of ordinary texts first
        det.update(sig)
    assert any(det.update(sig) for sig in signals(cal, 1_000, True, seed=4)), kind.__name__


@pytest.mark.parametrize("kind", exported_detectors(), ids=lambda c: c.__name__)
def test_calibrated_it_keeps_its_false_alarm_budget(kind, calibrations):
    """On in-distribution signals, alarm episodes (alarms 100 messages apart or more) come no more
    often than the detector's share of the ERT allows, with room for chance (3x)."""
    make = factories(calibrations)[kind]
    cal = calibrations["mix"]
    per_detector = ERT * drift.N_DETECTORS * drift.HEADROOM
    if kind.__name__ in ("EmbeddingCentre", "EmbeddingSpread"):
        per_detector *= 2  # the embedding detector's two parts share its rate
    n = int(20 * per_detector)
    det, episodes, last = make(), 0, None
    for t, sig in enumerate(signals(cal, n, False, seed=5)):
        if det.update(sig):
            episodes += last is None or t - last > 100
            last = t
    assert episodes <= 3 * n / per_detector, (kind.__name__, episodes, n / per_detector)


@pytest.mark.parametrize("kind", exported_detectors(), ids=lambda c: c.__name__)
def test_the_docstring_says_when_to_choose_it_and_the_method_it_implements(kind):
    doc = inspect.getdoc(kind) or ""
    assert "When to choose it:" in doc and "Method:" in doc, kind.__name__
