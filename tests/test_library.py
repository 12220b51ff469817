"""``import streamscore``: the public API and its three examples (docs/examples) run for real."""

import asyncio
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
    assert [r.id for r in out.records] == ["texts-0-0", "t2"]
    assert [d.reason for d in out.dead_letters] == ["invalid_json"]
    assert out.dead_letters[0].value == b"{no"
    for r in out.records:
        streamscore.validate("texts.scored", r.to_json())
        assert r.label in model.labels and r.model_version == model.version
        assert r.top_k[0].label == r.label and r.is_ood == (r.ood_score > r.ood_threshold)
    assert out.records[1].meta == {"k": 1} and out.records[1].origin == streamscore.Origin("texts", 0, 1)
    for d in out.dead_letters:
        streamscore.validate("texts.dlq", d.to_json())
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
    assert rec.id == "tickets-3-41" and rec.origin == streamscore.Origin("tickets", 3, 41)
    assert rec.latency_ms >= 50
    assert [(d.reason, d.key) for d in out.dead_letters] == [("empty_message", "k1")]
    assert isinstance(model.score_one(Record()), streamscore.ScoredText)  # one record alone


def test_typed_records_serialise_to_exactly_what_the_worker_writes(model):
    from streamscore.models.batch import RawMessage, process_batch

    values = [b'{"id": "a", "text": "book a flight", "ts": 1795430000000, "meta": {"n": [1, 2.5]}}', b"[1]"]
    out = model.score(values)

    async def score(texts):
        return model.scorer.score(texts), model.version

    raw = [RawMessage(None, v, streamscore.Origin("texts", 0, i)) for i, v in enumerate(values)]
    worker = asyncio.run(process_batch(raw, score, model.limits))
    (mine,), (theirs,) = [r.to_json() for r in out.records], [json.loads(v) for _, v in worker.scored]
    assert mine == {**theirs, "scored_at": mine["scored_at"], "latency_ms": mine["latency_ms"]}
    assert list(mine) == list(theirs)  # the same fields in the same order
    (dead,) = out.dead_letters
    assert dead.to_json() == {**json.loads(worker.dead[0][1]), "dead_lettered_at": dead.dead_lettered_at}


def test_one_text_is_one_message_not_its_characters(model):
    out = model.score("my card was declined")
    assert len(out.records) == 1 and not out.dead_letters and out.records[0].id == "texts-0-0"
    one = model.score_one({"id": "x", "text": "where is my parcel"})
    assert isinstance(one, streamscore.ScoredText) and one.id == "x"
    bad = model.score_one(b"{not json")  # a bad message comes back as its dead letter, no exception
    assert isinstance(bad, streamscore.DeadLetterRecord) and bad.reason == "invalid_json"
    assert model.score_one("   ").reason == "empty_text"


def test_score_works_inside_a_running_event_loop_as_in_a_notebook(model):
    async def cell() -> tuple[list[str], list[str]]:
        asyncio.get_running_loop()  # a notebook's loop is running while a cell runs
        out = model.score(["my card was declined", "book a flight"])
        awaited = await model.ascore(["my card was declined"])
        return [r.label for r in out.records], [r.label for r in awaited.records]

    labels, awaited = asyncio.run(cell())
    assert len(labels) == 2 and awaited == labels[:1]


def test_load_model_reads_the_settings_the_cli_reads(trained_registry, monkeypatch):
    monkeypatch.setenv("STREAMSCORE_REGISTRY", str(trained_registry))
    monkeypatch.setenv("STREAMSCORE_TOP_K", "2")
    monkeypatch.setenv("STREAMSCORE_MAX_TEXT_CHARS", "20")
    model = streamscore.load_model()
    assert model.version == streamscore.load_model("v1").version == "v0001"  # v1 names v0001
    out = model.score(["book a flight", "x" * 21])
    assert len(out.records[0].top_k) == 2
    assert [d.reason for d in out.dead_letters] == ["text_too_long"]
    assert [r["version"] for r in streamscore.list_models()] == ["v0001"]


def test_a_missing_model_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="streamscore train"):
        streamscore.load_model(registry=tmp_path)


def _example_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_notebook_example_inside_a_running_event_loop(trained_registry):
    """As a notebook runs a cell: the example's code while an event loop is running."""
    cell = (
        "import asyncio, runpy, sys\n"
        "async def kernel():\n"
        f"    sys.argv = ['notebook.py', {str(trained_registry)!r}]\n"
        f"    runpy.run_path({str(EXAMPLES / 'notebook.py')!r}, run_name='__main__')\n"
        "asyncio.run(kernel())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", cell],
        capture_output=True,
        text=True,
        timeout=300,
        env=_example_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    scored = [x for x in lines if "label" in x]
    assert [x["id"] for x in scored] == ["texts-0-0", "t2"]
    assert [x["dead_letter"] for x in lines if "dead_letter" in x] == ["empty_text"]
    assert len([x["one"] for x in lines if "one" in x]) == 1
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
