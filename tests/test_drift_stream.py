"""Drift on a live stream: one alert per detector episode, resolved after the stream shifts back,
and a worker restarted mid-episode neither forgets the episode nor repeats its alert."""

import random
import re
import time
from collections import defaultdict

import pytest

from streamscore.models.registry import Registry
from streamscore.schemas.contract import validate
from streamscore.training.fit import TrainConfig, train
from tests.conftest import small_clinc_rows, start_worker, stop_worker
from tests.kafka_helpers import collect, send_json

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


def _cusum(alerts):
    return [a for a in alerts if a["detector"] == "ood_cusum"]


def _signals(kafka, topic):
    """Every drift signal in topic order: (offset of its drift.signals record, input id)."""
    records = collect(kafka, topic, 0, timeout_s=10, settle_s=2, records=True)
    return [
        (r["offset"], s["id"])
        for r in sorted(records, key=lambda r: r["offset"])
        for s in r["value"]["signals"]
    ]


def _episode_seen_after(kafka, alerts_topic, sent_ms):
    """The ``ood_cusum`` drift alert whose window reaches a text sent after ``sent_ms`` (the
    foreign phase's), or, when a false alarm late in the normal phase opened an episode that
    the foreign alarms then joined (rare: see the docstring below), that open episode's."""
    opened = collect(
        kafka,
        alerts_topic,
        1,
        timeout_s=90,
        settle_s=1,
        match=lambda a: a["detector"] == "ood_cusum" and a["window"]["last_time_ms"] >= sent_ms,
    )
    if not opened:
        so_far = _cusum(collect(kafka, alerts_topic, 0, timeout_s=10, settle_s=1))
        closed = {a["alert_id"] for a in so_far if a["status"] == "resolved"}
        opened = [a for a in so_far if a["status"] == "drift" and a["alert_id"] not in closed]
    assert [a["status"] for a in opened] == ["drift"], opened
    return opened[0]


def test_drift_episode_alerts_once_resolves_and_survives_restart(kafka, drift_registry, tmp_path):
    """The foreign phase (``b``, then ``c`` after a restart) is one ``ood_cusum`` episode: one
    ``drift`` alert, one ``resolved`` after the stream is back to normal (``d``).

    The detectors are calibrated to one false alarm per ``ert`` (10,000) messages in all, so the
    ~2,500 normal messages may, rarely (a few percent of runs for ``ood_cusum``), raise an
    episode of their own; such an episode must start outside the foreign phase and follow the
    same drift/resolved rules, and is not the one under test. If one opens late in ``a`` and is
    still open when ``b`` arrives, ``b`` extends it and that episode is the one under test."""
    rng = random.Random(11)
    rows = small_clinc_rows()
    normal = [r["text"] for r in rows if r["split"] in ("test", "val") and r["label"] != "oos"]
    foreign = [r["text"] for r in rows if r["split"] == "test" and r["label"] == "oos"]
    flags = {"drift_quiet": "300", "drift_cooldown": "100"}
    w = start_worker(kafka, drift_registry, tmp_path, **flags)
    try:
        send_json(kafka, w.topics["input"], _messages("a", normal, 1200, rng))
        assert len(collect(kafka, w.topics["scored"], 1200, settle_s=0)) == 1200
        b_sent_ms = time.time() * 1000  # every ``a`` text was sent (and scored) before this
        send_json(kafka, w.topics["input"], _messages("b", foreign, 400, rng))
        # The foreign texts open an episode; restart once it is open, while ``b`` is still
        # being scored. An alert whose window reaches a text sent after ``b_sent_ms`` saw ``b``.
        alert = _episode_seen_after(kafka, w.topics["alerts"], b_sent_ms)
        assert alert["model_version"] == Registry(drift_registry).current()
        assert alert["statistic"] > alert["threshold"] and alert["window"]["n"] >= 1
        assert alert["window"]["first_offset"] <= alert["window"]["last_offset"]
        assert {"alert_id", "signal", "reference", "detected_at", "message", "ert"} <= set(alert)
        # Restart in the middle of the episode (the drift phase is still being scored).
        time.sleep(2)
        stop_worker(w)
        w = start_worker(kafka, drift_registry, tmp_path, tag=w.tag, **flags)
        send_json(kafka, w.topics["input"], _messages("c", foreign, 200, rng))
        # The normal texts go only once every foreign one is scored: the input has 3 partitions,
        # so ``d`` sent at once would be scored in part before the last of ``c``, and the episode
        # could rightly end before that text (seen once in a full run, 2026-12-02).
        c_scored = collect(kafka, w.topics["scored"], 200, settle_s=0, match=lambda r: r["id"][0] == "c")
        assert len({r["id"] for r in c_scored}) == 200
        send_json(kafka, w.topics["input"], _messages("d", normal, 1500, rng))
        episode = collect(
            kafka,
            w.topics["alerts"],
            2,
            timeout_s=150,
            settle_s=3,
            match=lambda a: a["alert_id"] == alert["alert_id"],
        )
        assert [a["status"] for a in episode] == ["drift", "resolved"], episode
        # The alerts explain the episode (its evidence survived the restart too), and
        # drift.episodes holds the final explanation under the episode's id.
        for a in episode:
            validate("drift.alerts", a)
        final = episode[1]["explanation"]
        assert final["foreign"] >= 300, final  # of the 600 foreign texts of ``b`` and ``c``
        assert final["most_foreign"] and {x["text"] for x in final["most_foreign"]} <= set(foreign)
        records = collect(
            kafka,
            w.topics["episodes"],
            0,
            timeout_s=10,
            settle_s=2,
            match=lambda r: r["episode_id"] == alert["alert_id"],
        )
        for r in records:
            validate("drift.episodes", r)
        assert records[-1]["status"] == "resolved" and records[-1]["explanation"] == final, records[-1]
        # Other detectors may have been mid-episode too; ood_cusum must be among those resumed.
        resumed = re.search(r"resume from snapshot: .* open episodes \[(.*)\]", w.log())
        assert resumed and "'ood_cusum'" in resumed.group(1), w.log()

        # The episode ended after the last foreign text was scored, not in a lull within it...
        signals = _signals(kafka, w.topics["signals"])
        # A signal for every scored text, however many share a record (at least once: the
        # restart may repeat what was in flight).
        assert {i for _, i in signals} == {
            f"{p}{i}" for p, n in (("a", 1200), ("b", 400), ("c", 200), ("d", 1500)) for i in range(n)
        }
        foreign_offsets = [offset for offset, i in signals if i[0] in "bc"]
        assert episode[1]["window"]["last_offset"] > max(foreign_offsets), (episode[1], max(foreign_offsets))
        # ...and no other ood_cusum episode started inside the foreign phase (a restart that forgot
        # the episode would open a second one there, at the first alarm on ``c``).
        every = collect(kafka, w.topics["alerts"], 0, timeout_s=10, settle_s=2)
        others = [a for a in _cusum(every) if a["alert_id"] != alert["alert_id"] and a["status"] == "drift"]
        phase = (min(foreign_offsets), episode[1]["window"]["last_offset"])
        assert not [a for a in others if phase[0] <= a["window"]["last_offset"] <= phase[1]], others
        assert len(others) <= 1, others  # false alarms at the calibrated rate: rarely one, never a run

        # Every detector: drift and resolved alternate, one drift per episode, each closed but
        # for a false alarm too recent to have had its ``drift_quiet`` (300) messages.
        by_detector = defaultdict(list)
        for a in every:
            by_detector[a["detector"]].append(a)
        for name, seq in by_detector.items():
            statuses = [a["status"] for a in seq]
            assert statuses == (["drift", "resolved"] * len(seq))[: len(seq)], (name, statuses)
            if len(seq) % 2:
                later = sum(1 for offset, _ in signals if offset > seq[-1]["window"]["last_offset"])
                assert later < 300, (name, later, seq[-1])
            drift_ids = [a["alert_id"] for a in seq if a["status"] == "drift"]
            assert len(drift_ids) == len(set(drift_ids)), (name, drift_ids)
    finally:
        stop_worker(w)


def test_the_worker_that_takes_over_drift_signals_resumes_the_open_episode(kafka, drift_registry, tmp_path):
    """Two workers start before any drift; the one holding ``drift.signals`` is killed (kill -9)
    mid-episode. The other takes the partition over and must resume the open episode from
    ``drift.state``, not from what it read at its own start (nothing): no second alert for the
    same foreign phase, and the episode it took over is the one resolved."""
    rng = random.Random(12)
    rows = small_clinc_rows()
    normal = [r["text"] for r in rows if r["split"] in ("test", "val") and r["label"] != "oos"]
    foreign = [r["text"] for r in rows if r["split"] == "test" and r["label"] == "oos"]
    flags = {"drift_quiet": "300", "drift_cooldown": "100"}
    first = start_worker(kafka, drift_registry, tmp_path, **flags)
    second = start_worker(kafka, drift_registry, tmp_path, tag=first.tag, **flags)
    workers = [first, second]
    topics = first.topics
    try:
        send_json(kafka, topics["input"], _messages("a", normal, 1200, rng))
        assert len(collect(kafka, topics["scored"], 1200, settle_s=0)) == 1200
        b_sent_ms = time.time() * 1000
        send_json(kafka, topics["input"], _messages("b", foreign, 400, rng))
        alert = _episode_seen_after(kafka, topics["alerts"], b_sent_ms)
        holders = [w for w in workers if alert["alert_id"] in w.log()]
        assert len(holders) == 1, [w.log()[-1500:] for w in workers]
        holder = holders[0]
        heir = next(w for w in workers if w is not holder)
        holder.process.kill()  # kill -9, mid-episode
        holder.process.wait(timeout=30)
        send_json(kafka, topics["input"], _messages("c", foreign, 200, rng))
        c_scored = collect(
            kafka, topics["scored"], 200, timeout_s=120, settle_s=0, match=lambda r: r["id"][0] == "c"
        )
        assert len({r["id"] for r in c_scored}) == 200
        send_json(kafka, topics["input"], _messages("d", normal, 1500, rng))
        episode = collect(
            kafka,
            topics["alerts"],
            2,
            timeout_s=150,
            settle_s=3,
            match=lambda a: a["alert_id"] == alert["alert_id"],
        )
        assert [a["status"] for a in episode] == ["drift", "resolved"], (episode, heir.log()[-3000:])
        assert "drift detectors resume from snapshot" in heir.log(), heir.log()[-3000:]
        signals = _signals(kafka, topics["signals"])
        foreign_offsets = [offset for offset, i in signals if i[0] in "bc"]
        every = _cusum(collect(kafka, topics["alerts"], 0, timeout_s=10, settle_s=2))
        repeated = [
            a
            for a in every
            if a["alert_id"] != alert["alert_id"]
            and a["status"] == "drift"
            and min(foreign_offsets) <= a["window"]["last_offset"] <= episode[1]["window"]["last_offset"]
        ]
        assert repeated == [], repeated
    finally:
        for w in workers:
            stop_worker(w)
