"""``import streamscore``: the public API and its three examples (docs/examples) run for real."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import streamscore
from streamscore.models.artifact import ArtifactError
from streamscore.streams.kafka.broker import stop_process
from tests.kafka_helpers import collect, send_raw

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


@pytest.fixture(scope="module")
def model(trained_registry):
    return streamscore.load_model(registry=trained_registry)


def test_scores_texts_and_messages_into_the_workers_records(model, trained_registry):
    out = model.score(
        ["my card was declined", {"id": "t2", "text": "book a flight", "meta": {"k": 1}}, b"{no"]
    )
    assert [r["id"] for r in out.records] == ["texts-0-0", "t2"]
    assert [d["reason"] for d in out.dead_letters] == ["invalid_json"]
    for r in out.records:
        streamscore.validate("texts.scored", r)
        assert r["label"] in model.labels and r["model_version"] == model.version
    assert out.records[1]["meta"] == {"k": 1} and out.records[1]["origin"] == {
        "topic": "texts",
        "partition": 0,
        "offset": 1,
    }
    rows = streamscore.list_models(trained_registry)
    assert [r["version"] for r in rows if r["current"]] == [model.version]


def test_a_consumer_record_keeps_its_origin_key_and_time(model):
    class Record:  # the attributes aiokafka's ConsumerRecord and Faust's Message share
        topic, partition, offset, key, timestamp = "tickets", 3, 41, b"k1", time.time() * 1000 - 50
        value = json.dumps({"text": "where is my parcel"}).encode()

    class Empty(Record):
        value = b""

    out = model.score([Record(), Empty()])
    (rec,) = out.records
    assert rec["id"] == "tickets-3-41" and rec["origin"] == {"topic": "tickets", "partition": 3, "offset": 41}
    assert rec["latency_ms"] >= 50
    assert [(d["reason"], d["key"]) for d in out.dead_letters] == [("empty_message", "k1")]


def test_a_missing_model_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="streamscore train"):
        streamscore.load_model(registry=tmp_path)


def _example_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_notebook_example(trained_registry):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "notebook.py"), str(trained_registry)],
        capture_output=True, text=True, timeout=300, env=_example_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    scored = [x for x in lines if "label" in x]
    assert [x["id"] for x in scored] == ["texts-0-0", "t2"]
    assert [x["dead_letter"] for x in lines if "dead_letter" in x] == ["empty_text"]
    assert "(current)" in proc.stdout


def _texts(tag: str, n: int) -> list[tuple[bytes, bytes]]:
    good = [
        (
            f"{tag}-{i}".encode(),
            json.dumps({"id": f"{tag}-{i}", "text": f"my card {i} was declined"}).encode(),
        )
        for i in range(n)
    ]
    return good + [(f"{tag}-bad".encode(), b"not json")]


@pytest.mark.integration
def test_aiokafka_loop_example(kafka, trained_registry):
    tag = uuid.uuid4().hex[:8]
    topics = {"input": f"texts-{tag}", "scored": f"texts.scored-{tag}", "dlq": f"texts.dlq-{tag}"}
    send_raw(kafka, topics["input"], _texts(tag, 20))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "aiokafka_loop.py"), "--bootstrap-servers", kafka,
         "--registry", str(trained_registry), "--input", topics["input"], "--scored", topics["scored"],
         "--dlq", topics["dlq"], "--group-id", f"loop-{tag}", "--max-messages", "21"],
        capture_output=True, text=True, timeout=300, env=_example_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = collect(kafka, topics["scored"], 20, timeout_s=30)  # each checked against its schema
    assert sorted(r["id"] for r in scored) == sorted(f"{tag}-{i}" for i in range(20))
    (dead,) = collect(kafka, topics["dlq"], 1, timeout_s=30)
    assert dead["reason"] == "invalid_json" and dead["key"] == f"{tag}-bad"


@pytest.mark.integration
def test_faust_agent_example(kafka, trained_registry, tmp_path):
    tag = uuid.uuid4().hex[:8]
    env = {
        **_example_env(),
        "APP_ID": f"example-{tag}",
        "KAFKA": f"kafka://{kafka}",
        "STREAMSCORE_REGISTRY": str(trained_registry),
        "INPUT_TOPIC": f"texts-{tag}",
        "SCORED_TOPIC": f"texts.scored-{tag}",
        "DLQ_TOPIC": f"texts.dlq-{tag}",
    }
    send_raw(kafka, env["INPUT_TOPIC"], _texts(tag, 20))
    log = (tmp_path / "faust.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "faust_agent.py"), "--datadir", str(tmp_path / "data"),
         "worker", "-l", "info", "--without-web"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        scored = collect(kafka, env["SCORED_TOPIC"], 20, timeout_s=180)
        dead = collect(kafka, env["DLQ_TOPIC"], 1, timeout_s=30)
    finally:
        stop_process(proc, timeout_s=30)
    text = (tmp_path / "faust.log").read_text(errors="replace")
    assert sorted(r["id"] for r in scored) == sorted(f"{tag}-{i}" for i in range(20)), text[-3000:]
    assert [(d["reason"], d["key"]) for d in dead] == [("invalid_json", f"{tag}-bad")]
