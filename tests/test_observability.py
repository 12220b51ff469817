"""Dashboards and alert rules against a real Prometheus that scraped a real worker.

Grafana is not installable here, so the proof goes through what Grafana would ask: every query
of every panel, annotation and alert rule is run through Prometheus' HTTP API over a stream with
a drift phase and a model promotion, and must return data. The Prometheus alert rules
(deploy/prometheus/alerts.yml, checked and unit-tested with promtool) must hold exactly when the
Grafana rules' conditions do, and the drift alert must reach a webhook through a real Alertmanager,
firing and then resolved. The compose file, Prometheus and Alertmanager config and Grafana
provisioning are checked to refer to each other correctly.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamscore.models.registry import Registry
from streamscore.streams.kafka.broker import free_port, stop_process
from streamscore.streams.settings import Settings
from streamscore.streams.worker.metrics import BatchStats, WorkerMetrics
from streamscore.training.fit import TrainConfig, train
from tests.conftest import ROOT, WorkerHandle, debian_server, small_clinc_rows, start_worker, stop_worker
from tests.kafka_helpers import collect, send_json, send_raw

DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERT_RULES = DEPLOY / "grafana" / "provisioning" / "alerting" / "streamscore-alerts.yml"
PROMETHEUS_RULES = DEPLOY / "prometheus" / "alerts.yml"
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
    # What Grafana puts in for its variables: the test's scrape job and rate window.
    return [
        (where, expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job", "streamscore"))
        for where, expr in out
    ]


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


def alert_rules() -> list[dict]:
    """The Prometheus alerting rules, each naming the Grafana rule it mirrors (``grafana_uid``)."""
    return [r for g in yaml.safe_load(PROMETHEUS_RULES.read_text())["groups"] for r in g["rules"]]


def test_prometheus_rules_pass_promtool_and_mirror_the_grafana_rules():
    promtool = debian_server("promtool", "prometheus", "Prometheus' rule checker")
    checked = subprocess.run(
        [promtool, "check", "rules", str(PROMETHEUS_RULES)], capture_output=True, text=True
    )
    assert checked.returncode == 0 and f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout, (
        checked.stdout + checked.stderr
    )
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=PROMETHEUS_RULES.parent,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    by_uid = {r["labels"]["grafana_uid"]: r for r in alert_rules()}
    assert set(by_uid) == {r["uid"] for r in grafana_rules()}
    for g in grafana_rules():
        mine = by_uid[g["uid"]]
        assert (mine["for"], mine["labels"]["severity"]) == (g["for"], g["labels"]["severity"]), g["uid"]
        assert mine["annotations"]["summary"] == g["annotations"]["summary"], g["uid"]
    am = subprocess.run(
        [debian_server("amtool", "prometheus-alertmanager", "Alertmanager's checker"), "check-config",
         str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert am.returncode == 0, am.stdout + am.stderr


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
    mounted = dict(m.split(":")[:2] for m in services["prometheus"]["volumes"] if m.startswith("."))
    assert mounted["./deploy/prometheus/alerts.yml"] in prom["rule_files"]
    am_target = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    assert am_target.split(":")[0] in services and services["alertmanager"]["ports"] == [
        f"127.0.0.1:{am_target.split(':')[1]}:9093"  # published on the host's loopback only
    ]
    # Grafana: the provisioned datasource uid is the one every rule uses (dashboards choose theirs).
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
        # Template variables, not a hard-coded data source and job: a user's Prometheus names them.
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert (
            variables["datasource"]["type"] == "datasource"
            and variables["datasource"]["query"] == "prometheus"
        )
        assert variables["job"]["current"]["value"] == job["job_name"]
        for p in board["panels"]:
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], (path.name, p["title"])
            assert {"x", "y", "w", "h"} <= set(p["gridPos"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", (path.name, p["title"])
                for metric, selector in re.findall(
                    r"\b((?:streamscore|process)_\w+|up)(\{[^}]*\})?(?=[\s\[\)])", t["expr"]
                ):
                    assert 'job=~"$job"' in selector, (path.name, p["title"], metric)
        assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in board["panels"]), path.name
    # The drift dashboard links to streamscore ui: the dashboard, and each open episode to its page.
    drift = json.loads((DEPLOY / "grafana/dashboards/drift-ood.json").read_text())
    ui = next(v for v in drift["templating"]["list"] if v["name"] == "ui")
    assert ui["query"] == f"http://{Settings().ui_host}:{Settings().ui_port}"
    assert [link["url"] for link in drift["links"]] == ["${ui}"]
    table = next(p for p in drift["panels"] if p["title"] == "Open drift episodes")
    links = [v for o in table["fieldConfig"]["overrides"] for prop in o["properties"] for v in prop["value"]]
    assert [link["url"] for link in links] == ["${ui}/episodes/${__value.raw}"]
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
    queries += [r["expr"] for r in alert_rules()]
    used = set()
    for q in queries:
        used |= {name for name in re.findall(r"\b(streamscore_\w+|process_\w+|up)\b(?=[{\[\s)]|$)", q)}
    missing = sorted(u for u in used if u not in exported)
    assert not missing, f"queries use metrics no worker exports: {missing}"


def test_the_peak_ratio_shows_an_alarm_that_the_statistic_gauge_misses():
    from types import SimpleNamespace

    from streamscore.schemas.drift import AlertWindow, DriftAlert

    m = WorkerMetrics.create()
    cusum = SimpleNamespace(name="ood_cusum", statistic=3.0, threshold=20.0)
    window = AlertWindow(0, 9, None, None, 10)
    alarm = DriftAlert(
        "a", "ood_cusum", "ood_score", "drift", 24.0, 20.0, window, "v1", "r", 1e4, 1, "t", "m"
    )
    m.observe_drift([cusum], {}, [], 10)
    assert m.value("streamscore_drift_peak_ratio", {"detector": "ood_cusum"}) == 0.15
    cusum.statistic = 0.0  # CUSUM restarts from zero at its alarm: the statistic gauge never shows 24
    m.observe_drift([cusum], {"ood_cusum": "a"}, [alarm], 10)
    assert m.value("streamscore_drift_statistic", {"detector": "ood_cusum"}) == 0.0
    assert m.value("streamscore_drift_peak_ratio", {"detector": "ood_cusum"}) == 1.2
    cusum.statistic = 10.0
    m.observe_drift([cusum], {"ood_cusum": "a"}, [], 10)  # still open: the episode's peak stays
    assert m.value("streamscore_drift_peak_ratio", {"detector": "ood_cusum"}) == 1.2
    m.observe_drift([cusum], {}, [], 10)  # closed: back to the current value
    assert m.value("streamscore_drift_peak_ratio", {"detector": "ood_cusum"}) == 0.5


def test_an_open_episode_is_a_series_of_its_own_that_ends_when_it_resolves():
    from types import SimpleNamespace

    m = WorkerMetrics.create()
    cusum = SimpleNamespace(name="ood_cusum", statistic=3.0, threshold=20.0)
    shift = SimpleNamespace(name="label_shift", statistic=1.0, threshold=20.0)
    episode = "streamscore_drift_episode_open"
    m.observe_drift([cusum, shift], {"ood_cusum": "e1", "label_shift": "e2"}, [], 10)
    assert m.value(episode, {"detector": "ood_cusum", "episode": "e1"}) == 1.0
    m.observe_drift([cusum, shift], {"ood_cusum": "e3", "label_shift": "e2"}, [], 10)
    assert m.value(episode, {"detector": "ood_cusum", "episode": "e1"}) is None  # e1 resolved
    assert m.value(episode, {"detector": "ood_cusum", "episode": "e3"}) == 1.0
    m.observe_drift([cusum, shift], {}, [], 10)
    assert not [s for f in m.registry.collect() if f.name == episode for s in f.samples]


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


def _serve(work: Path, name: str, args: list[str], port: int) -> subprocess.Popen:
    """Start a Debian-packaged server and wait until its ``/-/ready`` answers."""
    log = open(work / f"{name}.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
            return proc
        except OSError:
            assert proc.poll() is None, (work / f"{name}.log").read_text()
            time.sleep(0.3)
    raise AssertionError(f"{name} did not become ready in 60 s")


class Prometheus:
    """A real Prometheus scraping ``target`` every second, with the repository's alert rules,
    sending its alerts to ``alertmanager``."""

    def __init__(self, work: Path, target: str, alertmanager: str) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_RULES)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [{"job_name": "streamscore", "static_configs": [{"targets": [target]}]}],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = _serve(
            work,
            "prometheus",
            [
                debian_server("prometheus", "prometheus", "the Prometheus server"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--rules.alert.resend-delay=1s",
            ],
            self.port,
        )

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        body = json.loads(urllib.request.urlopen(url, timeout=30).read())
        assert body["status"] == "success", body
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=30)


class Alertmanager:
    """A real Alertmanager routing every alert to a webhook this test serves; ``notices`` holds
    what the webhook received, in order."""

    def __init__(self, work: Path) -> None:
        self.notices: list[dict] = []
        notices = self.notices

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                notices.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=self.hook.serve_forever, daemon=True).start()
        config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
        config["route"].update(group_wait="1s", group_interval="1s")  # the shipped file, sped up
        config["route"]["routes"] = []
        hook_url = f"http://127.0.0.1:{self.hook.server_address[1]}/streamscore"
        config["receivers"][0]["webhook_configs"][0]["url"] = hook_url
        (work / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.proc = _serve(
            work,
            "alertmanager",
            [
                debian_server("prometheus-alertmanager", "prometheus-alertmanager", "Alertmanager"),
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            self.port,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def received(self, alertname: str, status: str) -> list[dict]:
        return [
            a
            for n in self.notices
            for a in n["alerts"]
            if a["labels"]["alertname"] == alertname and a["status"] == status
        ]

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=30)
        self.hook.shutdown()


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _episode_story(am: Alertmanager, prom: Prometheus, w: WorkerHandle, since: float) -> str:
    """What happened to drift episodes, from each side: the worker's alerts, the drift state
    Prometheus scraped (when it changed), and the webhook's notices, in order."""
    lines = ["worker:"] + [
        f"  {x}" for x in w.log().splitlines() if "drift alert:" in x or "now serving" in x
    ]
    lines.append("prometheus streamscore_drift_state (changes):")
    for s in prom.query_range("max by (detector) (streamscore_drift_state)", since, time.time()):
        last = None
        for t, v in s["values"]:
            if v != last:
                lines.append(f"  {s['metric'].get('detector')} = {v} at {float(t) - since:.0f} s")
                last = v
    lines.append("webhook:")
    for n in am.notices:
        for a in n["alerts"]:
            lines.append(f"  {a['labels'].get('alertname')} {a['labels'].get('detector', '')} {a['status']}")
    return "\n".join(lines)


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
    am = Alertmanager(tmp_path)
    prom = Prometheus(tmp_path, f"127.0.0.1:{metrics_port}", am.address)
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
        firing = 'ALERTS{alertname="StreamscoreDriftEpisode", alertstate="firing", detector="ood_cusum"}'
        _wait_for(lambda: bool(prom.api("query", query=firing)["result"]), 60, "the drift alert rule to fire")
        # ... and reached the webhook before the swap ends the episode (Alertmanager drops an alert
        # resolved within its group_wait: it never notified it firing).
        _wait_for(
            lambda: any(
                a["labels"]["detector"] == "ood_cusum"
                for a in am.received("StreamscoreDriftEpisode", "firing")
            ),
            60,
            "the webhook to get the drift alert firing",
        )
        drift_end = time.time()
        # The "Model version changes" annotation samples every 15 s, on the clock (a subquery):
        # v1 must be seen at one of those samples before the swap. A fast run (CI on Kafka 4.4
        # swapped 13 s after the first scrape) otherwise shows v2 at every sample and no change.
        loaded = "max(streamscore_model_loaded_timestamp_seconds)"
        first_seen = min(
            float(t) for s in prom.query_range(loaded, started, time.time()) for t, _ in s["values"]
        )
        time.sleep(max(0.0, (first_seen // 15 + 1) * 15 + 2 - time.time()))
        # Phase 3: a new model is promoted, and the stream is back to normal.
        Registry(registry).set_current(second)
        promoted = time.time()
        time.sleep(2)
        send_json(kafka, w.topics["input"], [{"id": f"m{i}", "text": rng.choice(normal)} for i in range(400)])
        assert len(collect(kafka, w.topics["scored"], 1400, settle_s=0)) == 1400
        time.sleep(RATE_INTERVAL_S + 5)  # let the last scrapes and rate windows see the end
        # ... and the swap must be seen at one sample after it: wait for Prometheus to scrape the
        # swap, then for the next 15 s sample.
        _wait_for(
            lambda: any(float(r["value"][1]) >= promoted for r in prom.api("query", query=loaded)["result"]),
            60,
            "Prometheus to scrape the promoted model's load time",
        )
        time.sleep(max(0.0, promoted + 35 - time.time(), 20.0))
        end = time.time()

        # The drift rule fired during the drift phase, for the detector that watches OOD scores.
        fired = prom.query_range(firing, started, end)
        assert fired, "the drift alert never fired"
        first_firing = min(float(t) for s in fired for t, _ in s["values"])
        assert drift_start <= first_firing <= drift_end + 1, (drift_start, first_firing, drift_end)
        # The OOD-rate rule's condition held during the drift phase (its `for` is longer than the test).
        ood_rule = next(r for r in alert_rules() if r["alert"] == "StreamscoreOodRateHigh")
        assert prom.query_range(ood_rule["expr"], drift_start, end), "OOD rate never above reference"
        # Each Prometheus rule holds at exactly the moments its Grafana twin's condition does.
        twins = {r["labels"]["grafana_uid"]: r["expr"] for r in alert_rules()}
        for g in grafana_rules():
            if g["uid"] == "streamscore-worker-down":
                continue  # Grafana alerts on no data by its noDataState; Prometheus needs absent()
            ours = {t for s in prom.query_range(twins[g["uid"]], started, end) for t, _ in s["values"]}
            theirs = {t for s in prom.query_range(rule_condition(g), started, end) for t, _ in s["values"]}
            assert ours == theirs, (g["uid"], len(ours), len(theirs))

        # A drift alert reached the webhook through Alertmanager, firing, then resolved (each
        # detector's episode is a group of its own; which episode ends first varies by broker).
        def episode(status: str) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for a in am.received("StreamscoreDriftEpisode", status):
                out.setdefault(a["labels"]["detector"], []).append(a["annotations"]["summary"])
            return out

        def closed() -> set[str]:
            return set(episode("firing")) & set(episode("resolved"))

        deadline = time.monotonic() + 180
        while not closed() and time.monotonic() < deadline:
            time.sleep(1)
        story = _episode_story(am, prom, w, started)  # always built, so it is known to work
        assert closed(), f"the webhook got no drift alert firing and then resolved in 180 s:\n{story}"
        assert "ood_cusum" in episode("firing"), story
        for detector in closed():
            assert "drift episode" in episode("firing")[detector][0]
            order = [
                a["status"] for n in am.notices for a in n["alerts"]
                if a["labels"]["alertname"] == "StreamscoreDriftEpisode" and a["labels"]["detector"] == detector
            ]  # fmt: skip
            assert order.index("firing") < order.index("resolved"), (detector, order)

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
        # Whenever a detector was in an episode, its peak panel stood at 1 or above (scrape-proof).
        peaks = {
            s["labels"]["detector"]: s
            for s in report[
                "streamscore · Drift & OOD / Drift detectors: statistic / threshold (episode peak) / A"
            ]["series"]
        }
        states = report["streamscore · Drift & OOD / Drift state per detector / A"]["series"]
        for s in states:
            peak = dict(map(tuple, peaks[s["labels"]["detector"]]["values"]))
            in_episode = [t for t, v in s["values"] if v == 1.0 and t in peak]
            assert all(peak[t] >= 1.0 for t in in_episode), (
                s["labels"],
                [(t, peak[t]) for t in in_episode][:5],
            )
        assert peaks["ood_cusum"]["max"] >= 1.0
        # Each drift episode is an annotation band of its own, named by the id its alerts carry
        # (and streamscore ui's /episodes/<id>); a resolved episode's band ends.
        bands = report["streamscore · Drift & OOD / annotation Drift episodes"]["series"]
        alerts = collect(kafka, w.topics["alerts"], 0, timeout_s=10, settle_s=1)
        opened = {a["alert_id"]: a["detector"] for a in alerts if a["status"] == "drift"}
        resolved = {a["alert_id"] for a in alerts if a["status"] == "resolved"}
        assert {(b["labels"]["episode"], b["labels"]["detector"]) for b in bands} <= set(opened.items()), (
            bands,
            opened,
        )
        assert "ood_cusum" in {b["labels"]["detector"] for b in bands}, bands
        for band in bands:
            if band["labels"]["episode"] in resolved:
                assert band["values"][-1][0] < end - 5, (band["labels"], band["values"][-1], end)
        counts = prom.api("query", query="streamscore_messages_in_total")["result"]
        assert float(counts[0]["value"][1]) == 1420
        report_path = Path(os.environ.get("STREAMSCORE_PANEL_REPORT", tmp_path / "panels.json"))
        report_path.write_text(json.dumps(report, indent=1))
        print(f"\npanel report: {report_path}\n{story}")
    finally:
        prom.stop()
        am.stop()
        stop_worker(w)


RATE_INTERVAL_S = int(RATE_INTERVAL.rstrip("s"))


def _healthy(url: str) -> bool:
    try:
        return json.loads(urllib.request.urlopen(url, timeout=2).read())["status"] == "ok"
    except OSError:
        return False


def test_every_metric_the_worker_exports_is_in_the_documented_table():
    m = WorkerMetrics.create()
    m.observe_batch(BatchStats(1, ["a"], [False], [0.0], {"invalid_json": 1}), 0.01)
    exported = {f.name for f in m.registry.collect() if f.name.startswith("streamscore_")}
    table = (ROOT / "docs" / "observability.md").read_text()
    documented = {
        re.sub(r"_(total|info)$", "", name) for name in re.findall(r"^\| `(streamscore_\w+)`", table, re.M)
    }
    assert exported - documented == set(), "metrics missing from docs/observability.md"
    assert documented - exported == set(), "docs/observability.md lists metrics no worker exports"
