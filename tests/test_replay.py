"""Replay and rescore on a real broker: counts and line numbers, timestamps kept, a time window
rescored exactly, Ctrl-C then --resume sending every row once, and the same file scoring the
same twice."""

import asyncio
import gzip
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest

from streamscore.streams.kafka.topics import ensure_topics
from tests.conftest import ROOT, cli, last_json, small_clinc_rows
from tests.kafka_helpers import collect

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _texts(n: int, seed: int = 0) -> list[str]:
    rows = [r["text"] for r in small_clinc_rows() if r["split"] == "test" and r["label"] != "oos"]
    return [rows[(i * 7 + seed) % len(rows)] for i in range(n)]


def _write_jsonl(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _topic() -> str:
    return f"replay-{uuid.uuid4().hex[:8]}"


def test_mixed_file_sends_good_rows_and_reports_bad_lines(kafka, tmp_path):
    texts = _texts(5)
    lines = [
        json.dumps({"id": "g1", "text": texts[0], "label": "x"}),  # 1
        "{this is not json",  # 2
        json.dumps({"id": "g3", "text": texts[1], "source": "web"}),  # 3
        "[1, 2, 3]",  # 4
        json.dumps({"id": "b5"}),  # 5: no text
        "",  # 6: blank lines are not rows
        json.dumps({"id": "b7", "text": "   "}),  # 7
        json.dumps({"id": "b8", "text": 42}),  # 8
        json.dumps({"text": texts[2], "meta": {"shop": 7}}),  # 9: no id
        json.dumps({"id": "b10", "text": texts[3], "ts": "yesterday"}),  # 10
        json.dumps({"id": "g11", "text": texts[4], "ts": T0}),  # 11
    ]
    path = tmp_path / "mixed.jsonl"
    _write_jsonl(path, lines)
    topic = _topic()
    proc = cli("replay", str(path), "--topic", topic, "--bootstrap-servers", kafka, "--json")
    assert len(proc.stdout.strip().splitlines()) == 1 and f"replay → {topic}: done" in proc.stderr
    summary = last_json(proc)
    assert summary["complete"] and summary["sent"] == 4
    assert summary["malformed"] == {
        "invalid_json": 1,
        "not_an_object": 1,
        "missing_text": 1,
        "empty_text": 1,
        "wrong_type": 2,
    }
    assert [(m["line"], m["reason"]) for m in summary["malformed_lines"]] == [
        (2, "invalid_json"),
        (4, "not_an_object"),
        (5, "missing_text"),
        (7, "empty_text"),
        (8, "wrong_type"),
        (10, "wrong_type"),
    ]
    got = {v["id"]: v for v in collect(kafka, topic, 4)}
    assert set(got) == {"g1", "g3", "mixed-9", "g11"}, "ids kept, the missing one made from the line"
    assert got["g1"]["meta"] == {"label": "x"}, "unmapped columns travel in meta"
    assert got["g3"]["source"] == "web" and got["mixed-9"]["meta"] == {"shop": 7}
    assert got["g11"]["ts"] == T0

    # Asked to, the malformed rows are sent too (to be dead-lettered by the worker).
    again = last_json(
        cli(
            "replay",
            str(path),
            "--topic",
            _topic(),
            "--bootstrap-servers",
            kafka,
            "--send-malformed",
            "--json",
        )
    )
    assert again["sent"] == 4 + 6 and again["malformed_sent"] == 6


def test_csv_gz_and_parquet_with_field_mapping(kafka, tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = _texts(6, seed=3)
    csv_path = tmp_path / "reviews.csv.gz"
    with gzip.open(csv_path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review_id", "Review Text", "created", "stars"])
        for i, t in enumerate(texts[:3]):
            w.writerow([f"r{i}", t, str(T0 + i), str(i + 3)])
        w.writerow(["r-empty", "", str(T0), "1"])  # line 5: empty text
    topic = _topic()
    mapping = ["--field", "id=review_id", "--field", "text=Review Text", "--field", "ts=created"]
    s = last_json(
        cli("replay", str(csv_path), "--topic", topic, "--bootstrap-servers", kafka, *mapping, "--json")
    )
    assert s["sent"] == 3 and [(m["line"], m["reason"]) for m in s["malformed_lines"]] == [(5, "empty_text")]
    got = {v["id"]: v for v in collect(kafka, topic, 3)}
    assert got["r1"]["text"] == texts[1] and got["r1"]["ts"] == T0 + 1 and got["r1"]["meta"] == {"stars": "4"}

    pq_path = tmp_path / "tickets.parquet"
    table = pa.table({"body": texts[3:], "n": [1, 2, 3]})
    pq.write_table(table, pq_path)
    topic = _topic()
    s = last_json(
        cli(
            "replay",
            str(pq_path),
            "--topic",
            topic,
            "--bootstrap-servers",
            kafka,
            "--field",
            "text=body",
            "--json",
        )
    )
    assert s["sent"] == 3 and not s["malformed"]
    got = {v["id"]: v for v in collect(kafka, topic, 3)}
    assert set(got) == {"tickets-1", "tickets-2", "tickets-3"} and got["tickets-2"]["meta"] == {"n": 2}


def _keeping_topic(kafka: str, topic: str | None = None) -> str:
    """A topic that keeps old records. Apache Kafka deletes records whose timestamps are older
    than the topic's retention (7 days by default) at its next retention check, so history
    replayed with its own timestamps needs one (docs/reliability.md, Brokers)."""
    topic = topic or _topic()
    asyncio.run(ensure_topics(kafka, {topic: 1}, configs={topic: {"retention.ms": "-1"}}))
    return topic


def test_keep_timestamps_round_trip(kafka, tmp_path):
    texts = _texts(4, seed=5)
    stamps = [T0, T0 + 60_000, "2026-01-01T00:05:00Z", "2026-01-01T01:00:00.250+01:00"]
    expected = [T0, T0 + 60_000, T0 + 300_000, T0 + 250]
    path = tmp_path / "timed.jsonl"
    _write_jsonl(
        path,
        [
            json.dumps({"id": f"t{i}", "text": t, "ts": s})
            for i, (t, s) in enumerate(zip(texts, stamps, strict=True))
        ],
    )
    path.write_text(path.read_text() + json.dumps({"id": "no-ts", "text": texts[0]}) + "\n")
    topic = _keeping_topic(kafka)
    s = last_json(
        cli(
            "replay", str(path), "--topic", topic, "--bootstrap-servers", kafka, "--keep-timestamps", "--json"
        )
    )
    assert s["sent"] == 4 and s["malformed"] == {"missing_ts": 1}, "a row without a time cannot keep it"
    got = {r["value"]["id"]: r["timestamp"] for r in collect(kafka, topic, 4, records=True)}
    assert got == {f"t{i}": ms for i, ms in enumerate(expected)}

    plain = _topic()
    before = int(time.time() * 1000)
    cli("replay", str(path), "--topic", plain, "--bootstrap-servers", kafka, "--limit", "2")
    later = collect(kafka, plain, 2, records=True)
    assert len(later) == 2 and all(r["timestamp"] >= before - 1_000 for r in later), "without it: send time"


def test_rescore_of_a_time_window_is_exactly_that_window(kafka, broker_kind, trained_registry, tmp_path):
    """Rows at three times; rescoring the middle hour gives exactly its rows, with the model asked."""
    texts = _texts(90, seed=11)
    hour = 3_600_000
    rows = [
        {"id": f"w{i}", "text": t, "ts": T0 + (i // 30) * hour + (i % 30) * 1_000, "meta": {"hour": i // 30}}
        for i, t in enumerate(texts)
    ]
    # One middle-hour row written late (after rows of the last hour): only --lateness reads it.
    late = {"id": "late-mid", "text": texts[0], "ts": T0 + hour + 59 * 60_000, "meta": {"hour": 1}}
    path = tmp_path / "hours.jsonl"
    _write_jsonl(path, [json.dumps(r) for r in rows + [late]])
    topic = _keeping_topic(kafka, f"texts-rescore-{uuid.uuid4().hex[:6]}")
    cli("replay", str(path), "--topic", topic, "--bootstrap-servers", kafka, "--keep-timestamps")
    version = (trained_registry / "models" / "CURRENT").read_text().strip()

    def rescore(*extra):
        return last_json(
            cli(
                "rescore", "--registry", str(trained_registry), "--bootstrap-servers", kafka,
                "--input-topic", topic, "--from", str(T0 + hour), "--to", str(T0 + 2 * hour),
                "--model", version, "--json", *extra,
            )
        )  # fmt: skip

    res = rescore()
    # Apache Kafka finds the window's start in its time index; Tansu answers the earliest offset
    # whatever the time, which rescore detects and then reads timestamps from the start.
    expected_how = "timestamp index" if broker_kind == "apache-kafka" else "scan from beginning"
    assert {p["how"] for p in res["partitions"]} == {expected_how}, res["partitions"]
    out_topic = f"{topic}.rescored.{version}"
    assert res["output_topic"] == out_topic and res["model_version"] == version
    middle = {r["id"] for r in rows if r["meta"]["hour"] == 1}
    assert res["rescored"] == len(middle)
    got = collect(kafka, out_topic, len(middle), settle_s=3, records=True)
    assert Counter(r["value"]["id"] for r in got) == Counter(middle), "exactly the window, each once"
    assert {r["value"]["model_version"] for r in got} == {version}
    assert all(r["value"]["origin"]["topic"] == topic for r in got)
    by_id = {r["id"]: r["ts"] for r in rows}
    assert all(r["timestamp"] == by_id[r["value"]["id"]] for r in got), "rescored records keep event time"

    wider = rescore("--lateness", "3600", "--output-topic", f"{topic}.late")
    assert wider["rescored"] == len(middle) + 1, json.dumps(wider)
    assert "late-mid" in {v["id"] for v in collect(kafka, f"{topic}.late", len(middle) + 1)}


def _replay_process(kafka, path, topic, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "streamscore.streams.cli", "replay", str(path), "--topic", topic, "--bootstrap-servers", kafka,
         "--registry", str(path.parent), "--json", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_ctrl_c_then_resume_sends_every_row_exactly_once(kafka, tmp_path):
    n = 600
    path = tmp_path / "long.jsonl"
    _write_jsonl(path, [json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(_texts(n, seed=2))])
    topic = _topic()
    proc = _replay_process(kafka, path, topic, "--rate", "200")
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    first = json.loads(out.strip().splitlines()[-1])
    assert first["interrupted"] and not first["complete"]
    assert 0 < first["sent"] < n and first["next_line"] == first["sent"] + 1
    assert "--resume" in err or first["checkpoint"]

    second = last_json(
        cli("replay", str(path), "--topic", topic, "--bootstrap-servers", kafka, "--registry", str(tmp_path),
            "--resume", "--json")
    )  # fmt: skip
    assert second["complete"] and second["sent"] == n - first["sent"] and second["sent_total"] == n
    ids = Counter(v["id"] for v in collect(kafka, topic, n, settle_s=3))
    assert set(ids) == {f"r{i}" for i in range(n)} and max(ids.values()) == 1

    proc = cli("replay", str(path), "--topic", topic, "--bootstrap-servers", kafka, "--registry", str(tmp_path),
               "--resume", check=False)  # fmt: skip
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


def test_same_file_twice_same_scores_and_rescore_agrees_with_live(worker, trained_registry, tmp_path):
    texts = [r["text"] for r in small_clinc_rows() if r["split"] == "test"][:150]
    path = tmp_path / "twice.jsonl"
    _write_jsonl(path, [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts)])
    for _ in range(2):
        cli("replay", str(path), "--topic", worker.topics["input"], "--bootstrap-servers", worker.bootstrap)
    out = collect(
        worker.bootstrap,
        worker.topics["scored"],
        2 * len(texts),
        timeout_s=180,
        match=lambda r: r["id"].startswith("d"),
    )
    assert len(out) == 2 * len(texts)
    by_id: dict[str, list] = {}
    for r in out:
        by_id.setdefault(r["id"], []).append(r)
    fields = ("label", "confidence", "top_k", "ood_score", "is_ood", "model_version")
    for rid, (a, b) in by_id.items():
        assert (
            a["origin"]["offset"] != b["origin"]["offset"]
            or a["origin"]["partition"] != b["origin"]["partition"]
        )
        assert {f: a[f] for f in fields} == {f: b[f] for f in fields}, rid

    res = last_json(
        cli("rescore", "--registry", str(trained_registry), "--bootstrap-servers", worker.bootstrap,
            "--input-topic", worker.topics["input"], "--scored-topic", worker.topics["scored"],
            "--from-offset", "0", "--compare", "--json")
    )  # fmt: skip
    c = res["comparison"]
    assert c["compared"] >= 2 * len(texts) and c["missing_live"] == res["rescored"] - c["compared"]
    assert c["label_agreement"] == 1.0 and c["is_ood_agreement"] == 1.0 and c["changed_total"] == 0
    assert c["ood_score_mean_abs_diff"] == 0.0, "the same model scores the same bytes the same"
