"""Dashboards and alert rules against a real Prometheus that scraped a real worker.

Grafana is not installable here, so the proof goes through what Grafana would ask: every query
of every panel, annotation and alert rule is run through Prometheus' HTTP API over a stream with
a drift phase and a model promotion, and must return data; the Grafana alert rules, turned into
Prometheus rules, must fire the drift alert during the drift phase. The compose file, Prometheus
config and Grafana provisioning are checked to refer to each other correctly.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.registry import Registry
from streams.kafka.broker import free_port, stop_process
from streams.worker.metrics import BatchStats, WorkerMetrics
from tests.conftest import ROOT, debian_server, small_clinc_rows, start_worker, stop_worker
from tests.kafka_helpers import collect, send_json, send_raw
from training.fit import TrainConfig, train

DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERT_RULES = DEPLOY / "grafana" / "provisioning" / "alerting" / "streamscore-alerts.yml"
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval becomes with the test's 1 s scrapes


# --- what the dashboards and rules ask ----------------------------------------------------------


def panel_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and annotation of every dashboard."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel["targets"]:
                out.append((f"{board['title']} / {panel['title']} / {t['refId']}", t["expr"]))
        for ann in board["annotations"]["list"]:
            if "expr" in ann:
                out.append((f"{board['title']} / annotation {ann['name']}", ann["expr"]))
    return [(where, expr.replace("$__rate_interval", RATE_INTERVAL)) for where, expr in out]


def grafana_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]]


def rule_queries(rule: dict) -> dict[str, str]:
    return {d["refId"]: d["model"]["expr"] for d in rule["data"] if d["datasourceUid"] != "__expr__"}


def rule_condition(rule: dict) -> str:
    """The Grafana rule's condition as one PromQL expression (threshold or math over A, B...)."""
    queries = rule_queries(rule)
    cond = next(d["model"] for d in rule["data"] if d["refId"] == rule["condition"])
    if cond["type"] == "threshold":
        evaluator = cond["conditions"][0]["evaluator"]
        op = {"gt": ">", "lt": "<"}[evaluator["type"]]
        return f"({queries[cond['expression']]}) {op} {evaluator['params'][0]}"
    assert cond["type"] == "math", cond
    expr = cond["expression"].replace("&&", " and ").replace("||", " or ")
    return re.sub(r"\$([A-Z])", lambda m: f"({queries[m.group(1)]})", expr)


def prometheus_rules() -> dict:
    return {
        "groups": [
            {
                "name": "streamscore",
                "rules": [
                    {
                        "alert": r["uid"],
                        "expr": rule_condition(r),
                        "for": r.get("for", "0s"),
                        "labels": r["labels"],
                    }
                    for r in grafana_rules()
                ],
            }
        ]
    }


# --- structure: everything refers to something that exists ------------------------------------


def test_compose_prometheus_and_grafana_files_refer_to_each_other():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    assert {"kafka", "kafka-init", "trainer", "worker", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert set(deps) <= set(services), (name, deps)
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        if "build" in svc:
            assert (ROOT / "Dockerfile").exists()
        assert "image" in svc or "build" in svc, name
        if name not in ("kafka-init", "trainer"):
            assert svc.get("restart") == "unless-stopped", name
    # The worker scales: no fixed container name, no host port; Prometheus finds replicas by DNS.
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["STREAMSCORE_METRICS_HOST"] == "0.0.0.0"
    assert "healthcheck" in worker and "healthcheck" in services["kafka"]
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"], "Kafka must run in KRaft mode"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "streamscore")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and sd["port"] == int(worker["environment"]["STREAMSCORE_METRICS_PORT"])
    assert any("prometheus.yml" in m for m in services["prometheus"]["volumes"])
    # Grafana: the provisioned datasource uid is the one every dashboard and rule uses.
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    mounts = dict(m.split(":")[:2] for m in services["grafana"]["volumes"])
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/streamscore.yml").read_text())
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert len(DASHBOARDS) >= 2
    board_uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        board_uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path
        for p in board["panels"]:
            assert p["datasource"]["uid"] == uid and p["targets"], (path.name, p["title"])
            assert {"x", "y", "w", "h"} <= set(p["gridPos"])
    for rule in grafana_rules():
        for d in rule["data"]:
            assert d["datasourceUid"] in (uid, "__expr__"), rule["uid"]
        assert rule["annotations"]["__dashboardUid__"] in board_uids
    # The Dockerfile: CPU torch, a non-root user, the final stage built FROM a slim image.
    docker = (ROOT / "Dockerfile").read_text()
    final = docker.split("\nFROM ")[-1]
    assert "download.pytorch.org/whl/cpu" in docker and "torch==2.13.0" in docker
    assert re.search(r"^USER (?!root)\w+", final, re.M) and "COPY --from=build" in final
    assert not re.search(r"apt-get|gcc|build-essential", final)
    for src in re.findall(r"^COPY (?!--)(\S+)", docker, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def test_every_query_names_metrics_the_worker_exports():
    m = WorkerMetrics.create()
    m.observe_batch(BatchStats(1, ["a"], [False], [0.0], {"invalid_json": 1}), 0.01)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
    exported = {"up"}  # Prometheus' own, per scraped target
    for family in m.registry.collect():  # families with labels but no samples yet count too
        exported |= {family.name + s for s in suffixes.get(family.type, [""])}
    queries = [q for _, q in panel_queries()] + [q for r in grafana_rules() for q in rule_queries(r).values()]
    used = set()
    for q in queries:
        used |= {name for name in re.findall(r"\b(streamscore_\w+|process_\w+|up)\b(?=[{\[\s)]|$)", q)}
    missing = sorted(u for u in used if u not in exported)
    assert not missing, f"queries use metrics no worker exports: {missing}"


# --- behaviour: a real worker, a real Prometheus -------------------------------------------------


@pytest.fixture(scope="module")
def two_model_registry(tmp_path_factory, small_data, embedder):
    """v1 serving (drift calibrated for 10k messages between false alarms), v2 trained, not promoted."""
    root = tmp_path_factory.mktemp("obs-registry")
    reg = Registry(root)
    cfg = TrainConfig(finetune_epochs=0, drift_ert=10_000)
    first = train(small_data, reg, cfg, quiet=True, embedder=embedder)
    second = train(small_data, reg, cfg, quiet=True, embedder=embedder, promote=False, force=True)
    assert reg.current() == first.version != second.version
    return root, second.version


class Prometheus:
    def __init__(self, work: Path, target: str) -> None:
        self.port = free_port()
        (work / "rules.yml").write_text(yaml.safe_dump(prometheus_rules()))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(work / "rules.yml")],
            "scrape_configs": [{"job_name": "streamscore", "static_configs": [{"targets": [target]}]}],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(work / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [
                debian_server("prometheus", "prometheus", "the Prometheus server"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)
                return
            except OSError:
                assert self.proc.poll() is None, (work / "prometheus.log").read_text()
                time.sleep(0.3)
        raise AssertionError("Prometheus did not become ready in 60 s")

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        body = json.loads(urllib.request.urlopen(url, timeout=30).read())
        assert body["status"] == "success", body
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=30)
        self.log.close()


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _summary(series: list[dict]) -> list[dict]:
    """Per series: its labels, last and max value (what a panel would show), and the points."""
    out = []
    for s in series[:20]:
        values = [float(v) for _, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
        out.append(
            {
                "labels": s["metric"],
                "last": round(values[-1], 4) if values else None,
                "max": round(max(values), 4) if values else None,
                "values": [[float(t), float(v)] for t, v in s["values"]],
            }
        )
    return out


@pytest.mark.integration
def test_dashboards_and_alert_rules_show_real_data_and_the_drift_alert_fires(
    kafka, two_model_registry, tmp_path
):
    registry, second = two_model_registry
    rng = random.Random(5)
    rows = small_clinc_rows()
    normal = [r["text"] for r in rows if r["split"] in ("test", "val") and r["label"] != "oos"]
    foreign = [r["text"] for r in rows if r["split"] == "test" and r["label"] == "oos"]
    metrics_port = free_port()
    w = start_worker(
        kafka,
        registry,
        tmp_path,
        metrics_port=str(metrics_port),
        reload_interval="0.5",
        drift_quiet="300",
        drift_cooldown="100",
    )
    prom = Prometheus(tmp_path, f"127.0.0.1:{metrics_port}")
    started = time.time()
    try:
        health = f"http://127.0.0.1:{metrics_port}/healthz"
        _wait_for(lambda: _healthy(health), 120, "the worker's /healthz to say ok")

        # Phase 1: training-distribution texts, plus malformed messages for the DLQ panels.
        send_json(kafka, w.topics["input"], [{"id": f"n{i}", "text": rng.choice(normal)} for i in range(600)])
        send_raw(kafka, w.topics["input"], [(f"bad{i}".encode(), b"{not json") for i in range(20)])
        assert len(collect(kafka, w.topics["scored"], 600, settle_s=0)) == 600
        time.sleep(5)
        # Phase 2: the drift phase, out-of-scope texts.
        drift_start = time.time()
        send_json(
            kafka, w.topics["input"], [{"id": f"d{i}", "text": rng.choice(foreign)} for i in range(400)]
        )
        assert len(collect(kafka, w.topics["scored"], 1000, settle_s=0)) == 1000
        firing = 'ALERTS{alertname="streamscore-drift-episode", alertstate="firing", detector="ood_cusum"}'
        _wait_for(lambda: bool(prom.api("query", query=firing)["result"]), 60, "the drift alert rule to fire")
        drift_end = time.time()
        # Phase 3: a new model is promoted, and the stream is back to normal.
        Registry(registry).set_current(second)
        promoted = time.time()
        time.sleep(2)
        send_json(kafka, w.topics["input"], [{"id": f"m{i}", "text": rng.choice(normal)} for i in range(400)])
        assert len(collect(kafka, w.topics["scored"], 1400, settle_s=0)) == 1400
        time.sleep(RATE_INTERVAL_S + 5)  # let the last scrapes and rate windows see the end
        # The "Model version changes" annotation samples every 15 s (a subquery): the swap must
        # lie between two of its samples, which Apache Kafka's quick last phase did not always give.
        time.sleep(max(0.0, promoted + 35 - time.time()))
        end = time.time()

        # The drift rule fired during the drift phase, for the detector that watches OOD scores.
        fired = prom.query_range(firing, started, end)
        assert fired, "the drift alert never fired"
        first_firing = min(float(t) for s in fired for t, _ in s["values"])
        assert drift_start <= first_firing <= drift_end + 1, (drift_start, first_firing, drift_end)
        # The OOD-rate rule's condition held during the drift phase (its `for` is longer than the test).
        ood_rule = next(r for r in grafana_rules() if r["uid"] == "streamscore-ood-rate")
        assert prom.query_range(rule_condition(ood_rule), drift_start, end), "OOD rate never above reference"

        report: dict[str, Any] = {}
        empty = []
        for where, expr in panel_queries() + [
            (f"alert {r['uid']} / {ref}", q) for r in grafana_rules() for ref, q in rule_queries(r).items()
        ]:
            result = prom.query_range(expr, started, end)
            report[where] = {"expr": expr, "series": _summary(result)}
            if not result:
                empty.append(where)
        assert not empty, f"queries that returned no data: {empty}"

        # Panels show what happened, not just something.
        def last(where: str, i: int = 0) -> float:
            return report[where]["series"][i]["last"]

        model_panel = report["streamscore · Drift & OOD / Model version in service / A"]["series"]
        assert {s["labels"]["version"] for s in model_panel} == {"v0001", second}, model_panel
        dlq = report["streamscore · Stream health / Dead-letter rate by reason / A"]["series"]
        assert [s["labels"]["reason"] for s in dlq if s["max"]] == ["invalid_json"], dlq
        assert report["streamscore · Stream health / Dead-letter rate by reason / B"]["series"][0]["max"] > 0
        ood = report["streamscore · Drift & OOD / OOD rate vs. its reference / B"]["series"][0]
        reference = last("streamscore · Drift & OOD / OOD rate vs. its reference / C")
        assert ood["max"] > 2 * reference, (ood, reference)
        state = {
            s["labels"]["detector"]: s["max"]
            for s in report["streamscore · Drift & OOD / Drift state per detector / A"]["series"]
        }
        assert state["ood_cusum"] == 1.0, state
        counts = prom.api("query", query="streamscore_messages_in_total")["result"]
        assert float(counts[0]["value"][1]) == 1420
        report_path = Path(os.environ.get("STREAMSCORE_PANEL_REPORT", tmp_path / "panels.json"))
        report_path.write_text(json.dumps(report, indent=1))
        print(f"\npanel report: {report_path}")
    finally:
        prom.stop()
        stop_worker(w)


RATE_INTERVAL_S = int(RATE_INTERVAL.rstrip("s"))


def _healthy(url: str) -> bool:
    try:
        return json.loads(urllib.request.urlopen(url, timeout=2).read())["status"] == "ok"
    except OSError:
        return False
