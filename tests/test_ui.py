"""``streamscore ui``: the page shows a live worker's drift episode with its themes, dead letters
by reason, rate, lag and model, read from the topics; texts from the stream are shown, never run.

The browser test drives Debian's headless ``chromium`` through ``chromium-driver`` (Selenium);
``make test`` installs both. With ``STREAMSCORE_UI_SCREENSHOT=docs/ui.png`` it saves the page.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamscore.models.registry import Registry
from streamscore.streams.kafka.broker import stop_process
from streamscore.streams.settings import Settings
from streamscore.streams.ui.fleet import EXAMPLES_PER_REASON, MAX_EPISODES, MAX_REASONS, FleetView
from streamscore.streams.ui.server import make_app
from tests.conftest import CLINC, ROOT, debian_server, small_clinc_rows, start_worker, stop_worker
from tests.kafka_helpers import collect, send_json, send_raw

SCRIPT = "<script>document.title='pwned'</script>"
NEW = ("lost_luggage", "calendar")  # intents the small test model was not trained on


def _episode(i: int, status: str = "resolved", text: str = "the airline lost my bag") -> bytes:
    theme = {"size": 40, "share": 0.5, "keywords": ["luggage", "lost"], "examples": [text],
             "nearest_label": "book_flight", "label_similarity": 0.41}  # fmt: skip
    explanation = {"messages": 300, "foreign": 120, "foreign_share": 0.4, "themes": [theme],
                   "themes_summary": "1 theme(s)", "themes_from": 120, "texts_included": True,
                   "labels_moved": [], "confidence_fell": [],
                   "most_foreign": [{"ood_score": 3.2, "label": "book_flight", "text": text}]}  # fmt: skip
    return json.dumps(
        {
            "episode_id": f"ood_cusum-v1-{i}-0",
            "detector": "ood_cusum",
            "model_version": "v1",
            "status": status,
            "messages": 300,
            "alarms": 4,
            "updated_at": f"2026-12-05T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "explanation": explanation,
        }  # fmt: skip
    ).encode()


async def _get(view: FleetView, path: str) -> tuple[int, dict, str]:
    app = make_app(view, Settings(), "broker:9092", refresh_s=5)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path)
        return response.status, dict(response.headers), await response.text()


def test_texts_from_the_stream_are_escaped_on_the_page_and_scripts_are_refused():
    view = FleetView()
    view.add_episode(_episode(1, "open", text=SCRIPT + " where is my luggage"))
    view.add_dead_letter(json.dumps({"reason": "wrong_type", "detail": "text must be a string",
                                     "value_preview": '{"text": 5, "x": "' + SCRIPT + '"}'}).encode())  # fmt: skip
    status, headers, body = asyncio.run(_get(view, "/"))
    assert status == 200
    assert "<script" not in body.lower(), body  # not one tag: the page runs no script at all
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt; where is my luggage" in body
    assert "script-src" not in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    # One episode's own page, and an id that is not there.
    status, _, body = asyncio.run(_get(view, "/episodes/ood_cusum-v1-1-0"))
    assert status == 200 and "luggage" in body and "<script" not in body.lower()
    status, _, body = asyncio.run(_get(view, "/episodes/" + "%3Cscript%3E"))
    assert status == 404 and "&lt;script&gt;" in body and "<script" not in body.lower()


def test_the_page_keeps_bounded_state_however_much_it_reads():
    view = FleetView()
    for i in range(5 * MAX_EPISODES):
        view.add_episode(_episode(i, "open" if i % 100 == 0 else "resolved"))
    assert len(view.episodes) == MAX_EPISODES
    assert len(view.open_episodes()) == 10  # every open one is kept...
    kept = sorted(view.episodes)
    newest = sorted(
        (f"ood_cusum-v1-{i}-0" for i in range(5 * MAX_EPISODES) if i % 100),
        key=lambda e: int(e.split("-")[2]),
    )
    assert set(newest[-(MAX_EPISODES - 10) :]) <= set(kept)  # ...then the latest resolved
    for i in range(10 * MAX_REASONS):
        for _ in range(5):
            view.add_dead_letter(json.dumps({"reason": f"r{i}", "value_preview": "x" * 10_000}).encode())
    assert len(view.dead_letters) == MAX_REASONS + 1  # the rest are counted under "other"
    assert view.dead_letters["other"].count == 5 * (10 * MAX_REASONS - MAX_REASONS)
    assert all(len(d.latest) == EXAMPLES_PER_REASON for d in view.dead_letters.values())
    assert all(len(x["preview"]) <= 300 for d in view.dead_letters.values() for x in d.latest)
    view.add_episode(b"\xff not json")
    view.add_episode(b'{"no": "id"}')
    assert view.unreadable == 2
    status, _, body = asyncio.run(_get(view, "/api/fleet"))
    state = json.loads(body)
    assert status == 200 and len(state["open_episodes"]) == 10 and state["unreadable"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = debian_server("chromium", "chromium", "Chromium (the page's browser test)")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,1600",
    ):
        options.add_argument(arg)
    driver = debian_server("chromedriver", "chromium-driver", "ChromeDriver (drives Chromium in tests)")
    return webdriver.Chrome(service=Service(driver), options=options)


def _texts(label: str) -> list[str]:
    return [r["text"] for r in map(json.loads, open(CLINC, encoding="utf-8")) if r["label"] == label]


@pytest.mark.integration
def test_the_page_shows_a_live_drift_episode_with_its_themes_in_a_real_browser(
    kafka, trained_registry, tmp_path
):
    rng = random.Random(5)
    normal = [r["text"] for r in small_clinc_rows() if r["split"] in ("test", "val") and r["label"] != "oos"]
    new = _texts(NEW[0]) + _texts(NEW[1])
    rng.shuffle(new)
    w = start_worker(kafka, trained_registry, tmp_path)
    port = _free_port()
    ui_log = tmp_path / "ui.log"
    with open(ui_log, "w") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "streamscore.streams.cli", "ui", "--bootstrap-servers", kafka, "--port", str(port),
             "--refresh", "2", "--input-topic", w.topics["input"], "--scored-topic", w.topics["scored"],
             "--dlq-topic", w.topics["dlq"], "--episodes-topic", w.topics["episodes"],
             "--group-id", f"streamscore-test-{w.tag}"],  # fmt: skip
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    browser = None
    try:
        send_json(kafka, w.topics["input"], [{"id": f"n{i}", "text": rng.choice(normal)} for i in range(500)])
        send_raw(
            kafka,
            w.topics["input"],
            [(b"bad", json.dumps({"id": "bad", "text": 5, "note": SCRIPT}).encode())],
        )
        assert len(collect(kafka, w.topics["scored"], 500, settle_s=0)) == 500
        send_json(kafka, w.topics["input"], [{"id": f"x{i}", "text": t} for i, t in enumerate(new)])
        # The worker's episode record with a theme of lost luggage, as the page will read it.
        records = collect(
            kafka, w.topics["episodes"], 1, timeout_s=150, settle_s=0,
            match=lambda r: any("luggage" in t["keywords"] for t in r["explanation"]["themes"]),
        )  # fmt: skip
        assert records, "no drift.episodes record with a lost-luggage theme:\n" + w.log()[-3000:]
        episode = records[0]["episode_id"]
        assert ui.poll() is None, ui_log.read_text()
        url = re.search(r"streamscore ui on (http://\S+)", ui_log.read_text())
        assert url and url.group(1) == f"http://127.0.0.1:{port}/", ui_log.read_text()

        browser = _browser()
        deadline = time.monotonic() + 60
        while True:  # the page reads the topics on its own: wait for it to have caught up
            browser.get(url.group(1))
            page = browser.find_element("tag name", "body").text
            if (
                episode in page
                and "wrong_type" in page
                and "luggage" in page
                and "—" not in page.split("open drift")[0]
            ):
                break
            assert time.monotonic() < deadline, page + "\n" + ui_log.read_text()
            time.sleep(2)
        assert "serving model" in page and Registry(trained_registry).current() in page
        # The bad message's script is shown as text, and did not run.
        assert SCRIPT in page and browser.title == "streamscore", browser.title
        if os.environ.get("STREAMSCORE_UI_SCREENSHOT"):
            browser.save_screenshot(os.environ["STREAMSCORE_UI_SCREENSHOT"])
        # The episode's own page (Grafana links there): its theme with keywords and example texts.
        browser.get(f"{url.group(1)}episodes/{episode}")
        detail = browser.find_element("tag name", "body").text
        themes = browser.find_elements("class name", "theme")
        luggage = [t.text for t in themes if "luggage" in t.text]
        assert luggage, detail
        assert any(x in luggage[0] for x in _texts(NEW[0])), luggage[0]  # its examples are the new texts
    finally:
        if browser is not None:
            browser.quit()
        stop_process(ui, timeout_s=10)
        stop_worker(w)
    assert ui.returncode == 0, ui_log.read_text()
