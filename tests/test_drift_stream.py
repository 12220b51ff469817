"""Drift on a live stream: one alert per detector episode, resolved after the stream shifts back,
and a worker restarted mid-episode neither forgets the episode nor repeats its alert."""

import random
import re
import time
from collections import defaultdict

import pytest

from tests.conftest import small_clinc_rows, start_worker, stop_worker
from tests.kafka_helpers import collect, send_json
from training.fit import TrainConfig, train
from training.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def drift_registry(tmp_path_factory, small_data, embedder):
    root = tmp_path_factory.mktemp("drift-registry")
    train(
        small_data,
        Registry(root),
        TrainConfig(finetune_epochs=0, drift_ert=10_000),
        quiet=True,
        embedder=embedder,
    )
    return root


def _messages(prefix, texts, n, rng):
    return [{"id": f"{prefix}{i}", "text": rng.choice(texts)} for i in range(n)]


def test_drift_episode_alerts_once_resolves_and_survives_restart(kafka, drift_registry, tmp_path):
    rng = random.Random(11)
    rows = small_clinc_rows()
    normal = [r["text"] for r in rows if r["split"] in ("test", "val") and r["label"] != "oos"]
    foreign = [r["text"] for r in rows if r["split"] == "test" and r["label"] == "oos"]
    flags = {"drift_quiet": "300", "drift_cooldown": "100"}
    w = start_worker(kafka, drift_registry, tmp_path, **flags)
    try:
        send_json(kafka, w.topics["input"], _messages("a", normal, 1200, rng))
        assert len(collect(kafka, w.topics["scored"], 1200, settle_s=0)) == 1200
        send_json(kafka, w.topics["input"], _messages("b", foreign, 400, rng))
        first = collect(
            kafka,
            w.topics["alerts"],
            1,
            timeout_s=90,
            settle_s=1,
            match=lambda a: a["detector"] == "ood_cusum",
        )
        assert [a["status"] for a in first] == ["drift"], first
        alert = first[0]
        assert alert["model_version"] == Registry(drift_registry).current()
        assert alert["statistic"] > alert["threshold"] and alert["window"]["n"] >= 1
        assert alert["window"]["first_offset"] <= alert["window"]["last_offset"]
        assert {"alert_id", "signal", "reference", "detected_at", "message", "ert"} <= set(alert)
        # Restart in the middle of the episode (the drift phase is still being scored).
        time.sleep(2)
        stop_worker(w)
        w = start_worker(kafka, drift_registry, tmp_path, tag=w.tag, **flags)
        send_json(kafka, w.topics["input"], _messages("c", foreign, 200, rng))
        send_json(kafka, w.topics["input"], _messages("d", normal, 1500, rng))
        alerts = collect(
            kafka,
            w.topics["alerts"],
            2,
            timeout_s=150,
            settle_s=3,
            match=lambda a: a["detector"] == "ood_cusum",
        )
        assert [a["status"] for a in alerts] == ["drift", "resolved"], alerts
        assert alerts[0]["alert_id"] == alerts[1]["alert_id"] == alert["alert_id"]
        # Other detectors may have been mid-episode too; ood_cusum must be among those resumed.
        resumed = re.search(r"resume from snapshot: .* open episodes \[(.*)\]", w.log())
        assert resumed and "'ood_cusum'" in resumed.group(1), w.log()

        # Every detector: drift and resolved alternate, one drift per episode, each closed.
        every = collect(kafka, w.topics["alerts"], 0, timeout_s=10, settle_s=2)
        by_detector = defaultdict(list)
        for a in every:
            by_detector[a["detector"]].append(a)
        for name, seq in by_detector.items():
            statuses = [a["status"] for a in seq]
            assert statuses == ["drift", "resolved"] * (len(seq) // 2), (name, statuses)
            drift_ids = [a["alert_id"] for a in seq if a["status"] == "drift"]
            assert len(drift_ids) == len(set(drift_ids)), (name, drift_ids)
    finally:
        stop_worker(w)
