"""Drift detectors: calibrated on a stationary sample, they respect the ERT on new stationary
streams (within the statistical margin) and fire on shifted ones."""

import dataclasses

import numpy as np
import pytest

from streamscore.models.drift import (
    ConfidenceDrop,
    EmbeddingCentre,
    EmbeddingShift,
    EmbeddingSpread,
    LabelMix,
    LabelShift,
    OodCusum,
    Signal,
    calibrate_confidence_drop,
    calibrate_cusum,
    calibrate_embedding_shift,
    calibrate_embedding_spread,
    calibrate_label_mix,
    calibrate_label_shift,
)

ERT = 2_000


def _poisson_ok(alarms: int, n: int, ert: float) -> bool:
    """Within a generous band around the expected count (calibration error + Poisson noise)."""
    expected = n / ert
    return 0.3 * expected - 3 <= alarms <= 2.0 * expected + 3 * np.sqrt(expected) + 2


def _sig(ood=0.0, conf=0.9, label=0, proj=(0.0,)):
    return Signal(ood, conf, label, proj)


def test_cusum_respects_ert_and_fires_on_shift():
    rng = np.random.default_rng(0)
    ref = rng.gumbel(size=4000)  # skewed like real OOD scores
    mean, std, h = calibrate_cusum(ref, ERT, seed=1)
    det = OodCusum(mean, std, h)
    n = 100_000
    alarms = sum(det.update_value(x) for x in rng.choice(ref, n))
    assert _poisson_ok(alarms, n, ERT), alarms
    det = OodCusum(mean, std, h)
    shifted = rng.gumbel(loc=3.0, size=200)
    first = next(i for i, x in enumerate(shifted) if det.update_value(x))
    assert first < 30


def test_cusum_set_on_a_few_hundred_scores_respects_ert_on_fresh_traffic():
    """A small validation set misses the traffic's mean by about a standard error; the threshold
    must cover that, not just the sample it was set on (one-way cross-fitting alarmed 18 times
    too often on one of these eight reference samples and 3 times too often overall)."""
    rng = np.random.default_rng(10)
    n, alarms = 20_000, []
    for seed in range(8):
        ref = rng.gumbel(size=240)  # a validation set of 240 texts
        det = OodCusum(*calibrate_cusum(ref, ERT, seed=seed))
        alarms.append(sum(det.update_value(x) for x in rng.gumbel(size=n)))
    expected = n / ERT
    assert sum(alarms) <= 2 * len(alarms) * expected and max(alarms) <= 4 * expected, alarms


def test_label_shift_respects_ert_and_fires_on_new_mix():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 20, 3000)
    prior, th = calibrate_label_shift(labels, 20, ERT, window=200, every=10, seed=3)
    det = LabelShift(threshold=th, window=200, every=10, prior=prior)
    n = 60_000
    alarms = sum(det.update(_sig(label=int(x))) for x in rng.choice(labels, n))
    assert _poisson_ok(alarms, n, ERT), alarms
    det = LabelShift(threshold=th, window=200, every=10, prior=prior)
    skewed = rng.choice([0, 1, 2], size=1000)
    first = next(i for i, x in enumerate(skewed) if det.update(_sig(label=int(x))))
    assert first < 300


def test_label_mix_respects_ert_on_a_small_reference_and_fires_on_new_mix_sooner_than_the_window():
    rng = np.random.default_rng(12)
    true = rng.dirichlet(np.full(30, 2.0))  # an uneven mix of 30 labels
    labels = rng.choice(30, size=600, p=true)  # a validation set of 600 texts
    prior, th = calibrate_label_mix(labels, 30, ERT, seed=13)
    det = LabelMix(th, prior)
    n = 60_000
    alarms = sum(det.update(_sig(label=int(x))) for x in rng.choice(30, size=n, p=true))
    assert _poisson_ok(alarms, n, ERT), alarms
    # Three labels take half the traffic: the EWMA sees it sooner than the G-test of 500.
    skew = np.where(np.arange(30) < 3, 0.5 / 3, true / true[3:].sum() * 0.5)
    window = LabelShift(threshold=calibrate_label_shift(labels, 30, ERT, seed=13)[1], prior=prior)
    det = LabelMix(th, prior)
    before = rng.choice(30, size=500, p=true)
    after = rng.choice(30, size=1000, p=skew)
    delays = {}
    for name, d in (("mix", det), ("window", window)):
        for x in before:
            d.update(_sig(label=int(x)))
        delays[name] = next((i for i, x in enumerate(after) if d.update(_sig(label=int(x)))), 1000)
    assert delays["mix"] < delays["window"] and delays["mix"] < 150, delays


def test_embedding_centre_respects_ert_and_fires_on_moved_mean():
    rng = np.random.default_rng(4)
    P = rng.normal(size=(3000, 4))
    mean, prec, th = calibrate_embedding_shift(P, ERT, window=100, every=5, seed=5)
    det = EmbeddingCentre(threshold=th, window=100, every=5, mean=mean, precision=prec)
    n = 60_000
    alarms = sum(det.update(_sig(proj=tuple(p))) for p in P[rng.integers(0, 3000, n)])
    assert _poisson_ok(alarms, n, ERT), alarms
    det = EmbeddingCentre(threshold=th, window=100, every=5, mean=mean, precision=prec)
    moved = rng.normal(loc=0.8, size=(500, 4))
    first = next(i for i, p in enumerate(moved) if det.update(_sig(proj=tuple(p))))
    assert first < 150


def _spread_detector(P: np.ndarray, ert: float) -> EmbeddingSpread:
    from streamscore.models.drift.embedding_spread import embedding_moments

    mean, precision = embedding_moments(P)
    cal = calibrate_embedding_spread(P, ert, seed=15)
    return EmbeddingSpread(mean, precision, cal["dist_mean"], cal["dist_std"], cal["threshold"], cal["k"])


def test_embedding_spread_respects_ert_and_fires_on_texts_near_the_centre_or_far_from_it():
    rng = np.random.default_rng(14)
    P = rng.normal(size=(800, 8)) * np.linspace(2.0, 0.5, 8)  # a few hundred validation texts
    det = _spread_detector(P, ERT)
    n = 60_000
    fresh = rng.normal(size=(n, 8)) * np.linspace(2.0, 0.5, 8)
    alarms = sum(det.update(_sig(proj=tuple(p))) for p in fresh)
    assert _poisson_ok(alarms, n, ERT), alarms
    # Foreign texts: their meaning lies outside the principal directions, so they sit near the
    # centre of the projection (as CLINC150's out-of-scope texts do); or far out along them.
    for scale in (0.5, 1.6):
        det = _spread_detector(P, ERT)
        moved = rng.normal(size=(300, 8)) * np.linspace(2.0, 0.5, 8) * scale
        first = next(i for i, p in enumerate(moved) if det.update(_sig(proj=tuple(p))))
        assert first < 30, (scale, first)


def test_the_embedding_detector_alarms_on_either_part_and_reports_the_larger_ratio():
    centre = EmbeddingCentre(threshold=50.0, window=20, every=5, mean=np.zeros(2), precision=np.eye(2))
    spread = EmbeddingSpread(np.zeros(2), np.eye(2), dist_mean=1.25, dist_std=0.65, threshold=5.0)
    det = EmbeddingShift(centre, spread)
    assert det.threshold == 1.0
    alarms = [det.update(_sig(proj=(0.0, 0.0))) for _ in range(10)]  # every text at the very centre
    assert True in alarms and not any(centre.update(_sig(proj=(0.0, 0.0))) for _ in range(20))
    assert det.statistic == max(centre.statistic / 50.0, spread.statistic / 5.0)


def test_river_page_hinkley_is_calibrated_and_fires_on_falling_confidence():
    rng = np.random.default_rng(6)
    conf = rng.beta(8, 2, 3000)
    th = calibrate_confidence_drop(conf, ERT, seed=7)
    det = ConfidenceDrop(th)
    n = 60_000
    alarms = sum(det.update(_sig(conf=float(c))) for c in rng.choice(conf, n))
    assert _poisson_ok(alarms, n, ERT), alarms
    det = ConfidenceDrop(th)
    for c in rng.choice(conf, 500):
        det.update(_sig(conf=float(c)))
    low = rng.beta(2, 2, 1000)
    assert any(det.update(_sig(conf=float(c))) for c in low)


@pytest.mark.parametrize("threshold", [0.5, 2.0, 5.0, 20.0])
def test_calibration_counts_the_alarms_river_s_page_hinkley_gives(threshold):
    """Calibration's fast loop is River's detector, alarm for alarm (the one the worker runs)."""
    from streamscore.models.drift.confidence_drop import page_hinkley_alarms

    rng = np.random.default_rng(int(threshold * 10))
    # Calm, then a fall in confidence, then calm again: alarms, resets and quiet stretches.
    conf = np.concatenate([rng.beta(8, 2, 3000), rng.beta(5, 5, 500), rng.beta(8, 2, 3000)]).tolist()
    det = ConfidenceDrop(threshold, min_instances=30)
    river = sum(det.update(_sig(conf=c)) for c in conf)
    assert page_hinkley_alarms([1.0 - c for c in conf], threshold, min_instances=30) == river
    assert river > 0 or threshold == 20.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: OodCusum(0.0, 1.0, 5.0),
        lambda: ConfidenceDrop(3.0),
        lambda: LabelShift(threshold=50.0, window=50, every=5, prior=np.full(5, 0.2)),
        lambda: EmbeddingCentre(threshold=20.0, window=30, every=5, mean=np.zeros(2), precision=np.eye(2)),
        lambda: LabelMix(threshold=40.0, prior=np.full(5, 0.2), lam=0.05),
        lambda: EmbeddingShift(
            EmbeddingCentre(threshold=20.0, window=30, every=5, mean=np.zeros(2), precision=np.eye(2)),
            EmbeddingSpread(np.zeros(2), np.eye(2), dist_mean=1.25, dist_std=0.65, threshold=8.0),
        ),
    ],
)
def test_state_round_trip_continues_identically(make):
    import json

    rng = np.random.default_rng(8)
    sigs = [
        _sig(float(rng.normal()), float(rng.random()), int(rng.integers(0, 5)), tuple(rng.normal(size=2)))
        for _ in range(400)
    ]
    a, b = make(), make()
    for s in sigs[:200]:
        a.update(s)
    b.load_state(json.loads(json.dumps(a.state())))  # the state survives JSON, as in a snapshot
    out_a = [a.update(s) for s in sigs[200:]]
    out_b = [b.update(s) for s in sigs[200:]]
    assert out_a == out_b and a.statistic == pytest.approx(b.statistic)


def test_calibration_ships_in_artifact_and_drift_eval_reports_every_scenario(
    trained_registry, small_data, tmp_path
):
    import json
    import shutil
    import subprocess
    import sys

    from streamscore.models.registry import Registry
    from tests.conftest import ROOT

    art = Registry(trained_registry).load()
    assert art.drift is not None and art.drift.ert == 1_000
    names = [d.name for d in art.drift.detectors()]
    assert names == ["ood_cusum", "confidence_drop", "label_shift", "embedding_shift"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamscore.streams.cli",
            "drift-eval",
            "--registry",
            str(trained_registry),
            "--in",
            str(small_data),
            "--shift",
            str(small_data),
            "--shift",
            str(shutil.copy(small_data, tmp_path / "other.jsonl")),
            "--seeds",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.strip().splitlines()  # --json: one JSON document on stdout...
    out = json.loads(line)
    assert "[drift-eval] stationary (small): 3 streams" in proc.stderr  # ...and progress on stderr
    assert "[drift-eval] abrupt (other): 3 streams" in proc.stderr
    assert out["ert"] == 1_000 and set(out["scenarios"]) == {
        "stationary",
        "abrupt",
        "mixture_20",
        "label_shift",
    }
    for scenario in out["scenarios"].values():
        assert set(scenario) == {"combined", "baseline", *names}
        for m in scenario.values():
            assert set(m) == {"false_alarms_per_10k", "median_delay", "p90_delay", "missed_rate", "runs"}
            assert m["runs"] == 3
    abrupt = out["scenarios"]["abrupt"]["combined"]
    assert abrupt["missed_rate"] == 0 and abrupt["median_delay"] < 100
    # A table per shifted data set; the streams without shifted texts are run once, for both.
    assert set(out["by_shift"]) == {small_data.stem, "other"}
    assert out["by_shift"]["other"]["stationary"] == out["scenarios"]["stationary"]
    # What the detectors cost: each one's update time per message, and all of them together.
    cost = out["cost_ms_per_message"]
    assert set(cost) == {"all", *names} and all(v > 0 for v in cost.values())
    assert cost["all"] == pytest.approx(sum(v for k, v in cost.items() if k != "all"), abs=1e-4)
    assert out["scenarios"]["stationary"]["combined"]["median_delay"] is None
    # Calibrated for one false alarm per 1,000 messages: far from the 10 per 10k that would break it.
    assert out["scenarios"]["stationary"]["combined"]["false_alarms_per_10k"] < 25


def test_a_resumed_monitor_skips_the_signals_its_snapshot_covers(trained_registry):
    """Signals come in records of a micro-batch each; a monitor restored from a snapshot taken
    inside a run of records ignores every signal at or before its (offset, index) and then
    continues exactly as the monitor that never stopped."""
    import json

    from streamscore.models.drift.monitor import DriftMonitor
    from streamscore.models.registry import Registry
    from streamscore.schemas.drift import signals_in

    cal = Registry(trained_registry).load().drift
    k, n_labels = cal.projection_components.shape[0], len(cal.labels["prior"])
    rng = np.random.default_rng(3)

    def signal(i):  # OOD scores far above the reference from the 150th on: alarms, an episode
        shift = 8.0 if i >= 150 else 0.0
        return {
            "ood_score": cal.ood["mean"] + cal.ood["std"] * (float(rng.normal()) + shift),
            "confidence": float(rng.uniform(0.5, 1.0)),
            "label": int(rng.integers(0, n_labels)),
            "projection": [float(x) for x in rng.normal(size=k)],
            "timestamp_ms": i,
        }

    # Records at offsets 0..9 of 30 signals each, as the score agent sends them.
    records = [{"model_version": "v1", "signals": [signal(30 * o + j) for j in range(30)]} for o in range(10)]
    whole = DriftMonitor(cal, "v1", quiet=50, cooldown=10)
    alerts = [
        a for o, r in enumerate(records) for j, s in enumerate(signals_in(r)) for a in whole.observe(s, o, j)
    ]
    assert [a.status for a in alerts if a.detector == "ood_cusum"][:1] == ["drift"]
    assert whole.seen == 300 and (whole.last_offset, whole.last_index) == (9, 29)

    first = DriftMonitor(cal, "v1", quiet=50, cooldown=10)
    for o, r in enumerate(records[:5]):
        for j, s in enumerate(r["signals"]):
            first.observe(s, o, j)
    resumed = DriftMonitor(cal, "v1", quiet=50, cooldown=10)
    resumed.load_state(json.loads(first.snapshot()))
    again = []
    for o, r in enumerate(records):  # the agent rereads from before the snapshot: no double count
        for j, s in enumerate(r["signals"]):
            again += resumed.observe(s, o, j)
    assert resumed.seen == whole.seen
    later = [a for a in alerts if a.window.last_offset >= 5]
    assert later, alerts  # the episode opens after the snapshot: something to compare
    strip = lambda a: dataclasses.replace(a, detected_at="")  # noqa: E731
    assert [strip(a) for a in again] == [strip(a) for a in later]
    assert all(a.alert_id.startswith(f"{a.detector}-v1-") for a in alerts)
    # A record in the one-signal format of earlier versions is one signal.
    assert signals_in({"model_version": "v1", "ood_score": 0.1}) == [
        {"model_version": "v1", "ood_score": 0.1}
    ]


def test_river_page_hinkley_state_round_trips_and_goes_on_alike():
    """The adapter over River's private Page-Hinkley fields: if a River upgrade renames one,
    ``check`` names it, and a restored detector must alarm exactly where an unbroken one does."""
    from river.drift import PageHinkley

    from streamscore.models.drift import river_state

    river_state.check(PageHinkley())
    rng = np.random.default_rng(5)
    stream = np.concatenate([rng.uniform(0.0, 0.2, 3_000), rng.uniform(0.3, 0.6, 500)])
    whole = ConfidenceDrop(threshold=5.0)
    alarms_whole = [whole.update(_sig(conf=1 - x)) for x in stream]
    first = ConfidenceDrop(threshold=5.0)
    alarms_first = [first.update(_sig(conf=1 - x)) for x in stream[:2_000]]
    resumed = ConfidenceDrop(threshold=5.0)
    resumed.load_state(first.state())
    alarms_resumed = [resumed.update(_sig(conf=1 - x)) for x in stream[2_000:]]
    assert any(alarms_whole[2_000:])
    assert alarms_first + alarms_resumed == alarms_whole
    assert resumed.statistic == pytest.approx(whole.statistic)
    assert resumed.span == whole.span


def test_river_state_check_names_a_missing_attribute():
    from river.drift import PageHinkley

    from streamscore.models.drift import river_state

    ph = PageHinkley()
    del ph._sum_increase  # noqa: SLF001 - simulates a River upgrade that renamed it
    with pytest.raises(RuntimeError, match="_sum_increase"):
        river_state.check(ph)


def test_a_model_calibrated_before_the_label_mix_and_spread_tests_keeps_its_detectors():
    """A calibration without ``test`` or ``spread`` (artifacts trained before 2026-12-05) builds
    the G-test of 500 labels and the window-mean test alone, with their own thresholds."""
    from streamscore.models.drift import DriftCalibration

    meta = {
        "ert": 10_000.0,
        "ood": {"mean": 0.0, "std": 1.0, "threshold": 20.0, "k": 0.25},
        "confidence": {"threshold": 30.0, "delta": 0.005, "min_instances": 100},
        "labels": {"prior": [0.5, 0.5], "threshold": 40.0, "window": 500, "every": 25},
        "embedding": {"mean": [0.0], "precision": [[1.0]], "threshold": 25.0, "window": 200, "every": 10},
    }
    arrays = {"projection_mean": np.zeros(4), "projection_components": np.eye(1, 4)}
    old = DriftCalibration.from_parts(meta, arrays).detectors()
    assert isinstance(old[2], LabelShift) and old[2].threshold == 40.0
    assert isinstance(old[3], EmbeddingShift) and old[3].spread is None and old[3].threshold == 25.0
    new = dict(meta, labels={"test": "mix", "prior": [0.5, 0.5], "threshold": 30.0, "lam": 0.015})
    new["embedding"] = dict(
        meta["embedding"], spread={"dist_mean": 0.8, "dist_std": 0.6, "threshold": 9.0, "k": 0.5}
    )
    detectors = DriftCalibration.from_parts(new, arrays).detectors()
    assert isinstance(detectors[2], LabelMix) and detectors[3].spread is not None
    assert detectors[3].threshold == 1.0
