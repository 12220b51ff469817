"""``streamscore ui``: a web page of the fleet, read from the topics."""

from __future__ import annotations

import argparse

from streamscore.streams.commands.base import Command, common, on_broker, settings_of


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True)
    sp.add_argument("--host", dest="ui_host", default=None, help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", dest="ui_port", type=int, default=None, help="default 8090; 0: any free port")
    sp.add_argument("--refresh", dest="ui_refresh_s", type=float, default=None, help="seconds (default 5)")
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument("--scored-topic", dest="scored_topic", default=None)
    sp.add_argument("--dlq-topic", dest="dlq_topic", default=None)
    sp.add_argument("--episodes-topic", dest="episodes_topic", default=None)
    sp.add_argument("--group-id", dest="group_id", default=None, help="the workers' group (for the lag)")


def run(args: argparse.Namespace) -> int:
    from streamscore.streams.kafka.broker import require_broker
    from streamscore.streams.ui.server import serve

    settings = settings_of(args)
    require_broker(settings.bootstrap_servers, settings.embedded_broker)
    on_broker(
        settings,
        lambda bootstrap: serve(
            settings, bootstrap, settings.ui_host, settings.ui_port, settings.ui_refresh_s
        ),
    )
    return 0


COMMAND = Command(
    name="ui",
    help="a web page of the fleet: drift episodes and their explanations, dead letters, rate, lag, model",
    description="Reads the topics, not a worker, so it shows every worker of the group. Binds to "
    "127.0.0.1 unless told otherwise; the page refreshes itself. JSON at /api/fleet.",
    options=options,
    run=run,
    examples=(
        "streamscore ui --bootstrap-servers localhost:9092",
        "streamscore ui --host 0.0.0.0 --port 8090 --refresh 10 --group-id streamscore",
    ),
)
