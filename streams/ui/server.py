"""``streamscore ui``: the drift episodes, dead letters, rate, lag and serving model on one web page.

Server-rendered HTML (Jinja2, every value escaped) that refreshes itself, plus the same as JSON at
``/api/fleet`` and one episode at ``/episodes/<id>`` (Grafana's drift dashboard links there).
The page's Content-Security-Policy allows no script at all, so a text from the stream can never
run in a reader's browser even if escaping were ever missed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from streamscore.streams.settings import Settings
from streamscore.streams.ui.fleet import MAX_EPISODES, FleetView
from streamscore.streams.ui.reader import FleetReader

log = logging.getLogger("streamscore.ui")

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("streamscore.streams.ui", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["pct"] = lambda x: f"{float(x or 0):.1%}"
    return env


def make_app(view: FleetView, settings: Settings, bootstrap: str, refresh_s: float) -> web.Application:
    """The page's web application over ``view`` (kept current by a :class:`FleetReader`)."""
    env = templates()

    def common() -> dict[str, Any]:
        return {
            "bootstrap": bootstrap,
            "now": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "refresh_s": max(1, round(refresh_s)),
            "problem": view.problem,
            "episodes_topic": settings.episodes_topic,
        }

    def html(name: str, status: int = 200, **values: Any) -> web.Response:
        body = env.get_template(name).render(**common(), **values)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    async def fleet(request: web.Request) -> web.Response:
        lag = sorted(view.lag.items())
        return html(
            "fleet.html",
            serving=view.serving(),
            rate=view.scored_rate(),
            lag=view.total_lag(),
            lag_by_partition=lag,
            group_id=settings.group_id,
            open=view.open_episodes(),
            recent=view.recent_episodes(),
            dead_letters=sorted(view.dead_letters.items(), key=lambda kv: -kv[1].count),
            dead_total=sum(d.count for d in view.dead_letters.values()),
            unreadable=view.unreadable,
            missing=view.missing,
            input_topic=settings.input_topic,
            scored_topic=settings.scored_topic,
            dlq_topic=settings.dlq_topic,
        )

    async def episode(request: web.Request) -> web.Response:
        episode_id = request.match_info["episode_id"]
        found = view.episodes.get(episode_id)
        return html(
            "episode.html",
            status=200 if found else 404,
            episode=found,
            episode_id=episode_id,
            kept=MAX_EPISODES,
        )

    async def api(request: web.Request) -> web.Response:
        return web.json_response(view.as_json())

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if view.problem is None else "degraded"})

    @web.middleware
    async def safe_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(HEADERS)
        return response

    app = web.Application(middlewares=[safe_headers])
    app.add_routes(
        [
            web.get("/", fleet),
            web.get("/episodes/{episode_id}", episode),
            web.get("/api/fleet", api),
            web.get("/healthz", health),
        ]
    )
    return app


async def serve(settings: Settings, bootstrap: str, host: str, port: int, refresh_s: float) -> None:
    """Serve the page until SIGINT or SIGTERM; prints its address once it listens."""
    view = FleetView()
    reader = FleetReader(settings, bootstrap, view)
    runner = web.AppRunner(make_app(view, settings, bootstrap, refresh_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise RuntimeError(
            f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port"
        ) from None
    address = runner.addresses[0]
    print(f"streamscore ui on http://{address[0]}:{address[1]}/ (reading {bootstrap})", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    reading = asyncio.create_task(reader.run())
    try:
        await done.wait()
    finally:
        reader.stop()
        await reading
        await runner.cleanup()
