"""Drift episodes explain themselves: the alert and the episode record say which labels moved and
which themes the foreign texts form, in bounded memory, across a restart, without customer
texts when told so."""

import asyncio
import json
import random
import time

import numpy as np
import pytest

from streamscore.models.batch import BatchLimits, RawMessage, process_batch
from streamscore.models.drift import snapshot
from streamscore.models.drift.evidence import SAMPLE, pack, priority
from streamscore.models.drift.explain import MAX_BYTES
from streamscore.models.drift.monitor import LEAD, DriftMonitor
from streamscore.models.drift.snapshot import SNAPSHOT_MAX_BYTES
from streamscore.models.registry import Registry
from streamscore.models.scoring import Scorer
from streamscore.schemas.contract import validate
from streamscore.schemas.messages import Origin
from streamscore.streams.worker.drift_agent import (
    DriftAgent,
    DriftTopics,
    ExplainSettings,
    episode_record_of,
    explainer_of,
)
from tests.conftest import CLINC, small_clinc_rows

ROWS = [json.loads(line) for line in open(CLINC, encoding="utf-8")]
NEW = ("lost_luggage", "calendar")  # intents the small model was not trained on


def _texts(label: str, n: int) -> list[str]:
    return [r["text"] for r in ROWS if r["label"] == label][:n]


@pytest.fixture(scope="module")
def serving(trained_registry, embedder):
    reg = Registry(trained_registry)
    artifact = reg.load(reg.current())
    assert not set(NEW) & set(artifact.head.labels)
    return artifact, Scorer.load(artifact, embedder)


def _signals(scorer: Scorer, texts: list[str], prefix: str) -> list[dict]:
    """The drift signals the worker's batch code makes of ``texts``, in order."""

    async def score(batch):
        return scorer.score(batch), scorer.version

    raw = [
        RawMessage(None, json.dumps({"id": f"{prefix}{i}", "text": t}).encode(), Origin("texts", 0, i), None)
        for i, t in enumerate(texts)
    ]
    out = asyncio.run(process_batch(raw, score, BatchLimits()))
    return [s.to_json() for b in out.signals for s in b.signals]


def _monitor(artifact, **explain) -> DriftMonitor:
    return DriftMonitor(
        artifact.drift,
        artifact.version,
        quiet=100,
        cooldown=50,
        explainer=explainer_of(artifact, ExplainSettings(**explain)),
        ood_threshold=artifact.ood_threshold,
    )


@pytest.fixture(scope="module")
def stream(serving):
    """400 in-distribution texts, then 160 texts of two intents the model never saw, mixed."""
    _, scorer = serving
    rng = random.Random(3)
    normal = [r["text"] for r in small_clinc_rows() if r["split"] == "test" and r["label"] != "oos"]
    new = _texts(NEW[0], 80) + _texts(NEW[1], 80)
    rng.shuffle(new)
    return _signals(scorer, [rng.choice(normal) for _ in range(400)], "n") + _signals(scorer, new, "x")


def _run(monitor: DriftMonitor, signals: list[dict], start: int = 0) -> list:
    alerts = []
    for i, s in enumerate(signals, start):
        alerts += monitor.observe(s, offset=i)
    return alerts


def test_a_drift_alert_and_its_episode_record_say_what_is_new(serving, stream):
    artifact, _ = serving
    foreign = [s for s in stream if "embedding" in s]
    assert foreign and all(s["id"].startswith("x") for s in foreign[-50:])  # only foreign ones carry text
    monitor = _monitor(artifact)
    alerts = _run(monitor, stream)
    drift = [a for a in alerts if a.status == "drift" and a.detector == "ood_cusum"]
    assert drift, [a.detector for a in alerts]
    first = drift[0].explanation
    validate("drift.alerts", drift[0].to_json())
    assert first["foreign"] >= 1 and first["most_foreign"][0]["text"]
    # At the alarm, the explanation covers the messages the alarm was built on, not just the last.
    assert first["messages"] == drift[0].window.n > 1, (first["messages"], drift[0].window)
    # The open episode's record, later: the new intents are its themes.
    record = monitor.episode_record("ood_cusum")
    validate("drift.episodes", record)
    e = record["explanation"]
    assert e["foreign"] > 100 and e["foreign_share"] > 0.5
    assert len(e["themes"]) >= 2, e["themes_summary"]
    by_intent = {label: set(_texts(label, 80)) for label in NEW}
    found = {}
    for theme in e["themes"][:2]:
        owners = {label for label, texts in by_intent.items() for x in theme["examples"] if x in texts}
        assert len(owners) == 1, theme  # each theme is one intent
        found[owners.pop()] = theme["keywords"]
    assert set(found) == set(NEW), found
    assert "luggage" in found["lost_luggage"], found
    assert len(json.dumps(e).encode()) <= MAX_BYTES


def test_the_episode_record_comes_from_its_alert_and_closes_resolved(serving, stream):
    artifact, scorer = serving
    monitor = _monitor(artifact)
    val = [r["text"] for r in small_clinc_rows() if r["split"] == "val" and r["label"] != "oos"]
    normal_again = _signals(scorer, val[:300], "m")
    alerts = _run(monitor, stream + normal_again)
    closing = [a for a in alerts if a.detector == "ood_cusum" and a.status == "resolved"]
    assert closing, [(a.detector, a.status) for a in alerts]
    record = episode_record_of(closing[-1])
    validate("drift.episodes", record)
    assert record["status"] == "resolved" and record["explanation"]["themes"]
    # The whole episode, however long: not the alert window (capped by the monitor's recent list).
    assert record["messages"] == record["explanation"]["messages"] >= closing[-1].window.n
    assert "ood_cusum" not in monitor.evidence  # an ended episode's evidence is let go


def test_explanations_without_texts_carry_keywords_and_counts_only(serving, stream):
    artifact, _ = serving
    monitor = _monitor(artifact, texts=False)
    _run(monitor, stream)
    e = monitor.episode_record("ood_cusum")["explanation"]
    assert e["texts_included"] is False and e["themes"] and e["themes"][0]["keywords"]
    dumped = json.dumps(e)
    assert all(s["text"][:40] not in dumped for s in stream if "text" in s)
    assert all(not t["examples"] for t in e["themes"]) and all("text" not in x for x in e["most_foreign"])


def test_a_restarted_monitor_continues_the_evidence_exactly(serving, stream):
    artifact, _ = serving
    whole = _monitor(artifact)
    whole_alerts = _run(whole, stream)
    cut = len(stream) - 60  # inside the episode
    first = _monitor(artifact)
    before = _run(first, stream[:cut])
    assert "ood_cusum" in first.open_episodes
    resumed = _monitor(artifact)
    resumed.load_state(json.loads(first.snapshot()))  # the state survives JSON, as on drift.state
    after = _run(resumed, stream[cut:], start=cut)
    assert [a.to_json() | {"detected_at": 0} for a in before + after] == [
        a.to_json() | {"detected_at": 0} for a in whole_alerts
    ]
    ours, theirs = resumed.episode_record("ood_cusum"), whole.episode_record("ood_cusum")
    assert ours["explanation"] == theirs["explanation"]


def test_evidence_stays_bounded_in_an_episode_of_50000_foreign_texts(serving):
    artifact, _ = serving
    monitor = _monitor(artifact)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, artifact.dim))
    labels = len(artifact.head.labels)
    for i in range(50_000):
        v = centres[i % 3] + 0.3 * rng.normal(size=artifact.dim)
        signal = {
            "id": f"f{i}",
            "ood_score": 50.0,
            "confidence": 0.2,
            "label": i % labels,
            "projection": [0.0] * artifact.drift.projection_components.shape[0],
            "text": f"foreign text number {i} about topic {i % 3}",
            "embedding": pack(v),
        }
        monitor.observe(signal, offset=i)
    assert monitor.open_episodes
    for ev in monitor.evidence.values():
        assert ev.foreign > 40_000 and len(ev.sample) <= SAMPLE and len(ev.most_foreign) <= 5
    assert len(monitor.lead) <= LEAD
    assert len(monitor.snapshot()) < 512 * 1024  # drift.state records stay well under Kafka's 1 MB
    record = monitor.episode_record(monitor.open_episodes[0])
    assert len(json.dumps(record["explanation"]).encode()) <= MAX_BYTES
    assert len(record["explanation"]["themes"]) == 3, record["explanation"]["themes_summary"]


def _emoji_stream(artifact, n: int) -> list[dict]:
    """Foreign signals as big as a signal gets: ids of 200 characters and texts of 200 emoji (4
    bytes each in UTF-8, 12 escaped as JSON), mostly of one label, in three clusters."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, artifact.dim))
    labels = len(artifact.head.labels)
    return [
        {
            "id": f"{i:06d}" + "😀" * 194,
            "ood_score": 50.0,
            "confidence": 0.2,
            "label": 0 if i % 5 else i % labels,
            "projection": [0.0] * artifact.drift.projection_components.shape[0],
            "text": "".join(chr(0x1F600 + (i * 7 + j) % 80) for j in range(200)),
            "embedding": pack(centres[i % 3] + 0.3 * rng.normal(size=artifact.dim)),
        }
        for i in range(n)
    ]


def test_a_snapshot_of_open_episodes_of_emoji_texts_fits_512_kib_and_resumes(serving):
    """Three open episodes of the largest signals: written as they were (escaped JSON), the
    snapshot was 2.7 MB, over Kafka's default 1 MB, and its send failed again and again."""
    artifact, _ = serving
    signals = _emoji_stream(artifact, 6_000)
    monitor = _monitor(artifact)
    _run(monitor, signals)
    assert len(monitor.open_episodes) >= 3, monitor.open_episodes
    assert len(json.dumps(monitor.state()).encode()) > 1024 * 1024  # what was written before
    data = monitor.snapshot()
    assert len(data) <= SNAPSHOT_MAX_BYTES
    resumed = _monitor(artifact)
    resumed.load_state(json.loads(data))
    assert resumed.open_episodes == monitor.open_episodes
    assert resumed.state()["detectors"] == monitor.state()["detectors"]
    for name, ev in monitor.evidence.items():
        kept = resumed.evidence[name]
        assert (kept.messages, kept.foreign, kept.label_counts) == (ev.messages, ev.foreign, ev.label_counts)
        assert kept.most_foreign == ev.most_foreign  # never cut
        # Cut to the messages whose ids hash lowest: still a uniform sample of the episode.
        lowest = sorted(ev.sample, key=lambda x: priority(x.id))[: len(kept.sample)]
        assert 20 <= len(kept.sample) < SAMPLE and kept.sample == lowest
    more = _emoji_stream(artifact, 6_200)[6_000:]  # the evidence goes on filling after the restart
    _run(resumed, more, start=6_000)
    assert all(len(ev.sample) > 0 for ev in resumed.evidence.values())
    assert resumed.episode_record(resumed.open_episodes[0])["explanation"]["themes"]


def test_two_model_versions_whose_signals_interleave_keep_their_own_episodes(serving, stream):
    """Workers reloading a new model each at its own time interleave two versions' signals in
    one stream. Flipping one monitor at every record closed the other version's episodes and
    restarted its detectors; each version now keeps its own monitor, and the one whose signals
    stop is retired (its open episodes resolved) once another's flow on."""
    artifact, _ = serving

    async def artifact_of(version: str):
        return artifact  # the same model under two versions: both must see the drift

    agent = DriftAgent(
        DriftTopics("alerts", "state"), artifact_of, quiet=100, cooldown=50, retire_after_s=0.3
    )
    agent.stale = False  # no drift.state to read here

    def records(signals: list[dict], start: int, version_of) -> list[tuple[int, bytes]]:
        return [
            (start + i, json.dumps({"model_version": version_of(i), "signals": [s]}).encode())
            for i, s in enumerate(signals)
        ]

    mixed = records(stream, 0, lambda i: ("v0001", "v0002")[(i // 3) % 2])
    alerts = asyncio.run(agent.handle(mixed)).alerts
    opened = [(a.model_version, a.detector) for a in alerts if a.status == "drift"]
    assert ("v0001", "ood_cusum") in opened and ("v0002", "ood_cusum") in opened, opened
    assert [a for a in alerts if a.status == "resolved"] == [], "no episode closed by the interleaving"
    assert set(agent.monitors) == {"v0001", "v0002"}
    state = snapshot.decode_many(agent.snapshot())
    assert set(state) == {"v0001", "v0002"} and all(
        s["episodes"]["ood_cusum"]["open"] for s in state.values()
    )

    time.sleep(0.4)  # v0001's workers have all moved to v0002
    later = asyncio.run(agent.handle(records(stream[:5], len(stream), lambda i: "v0002"))).alerts
    closed = [a for a in later if a.status == "resolved"]
    assert closed and {a.model_version for a in closed} == {"v0001"}, [
        (a.model_version, a.status) for a in later
    ]
    assert "model changed to v0002" in closed[0].message
    assert set(agent.monitors) == {"v0002"}
