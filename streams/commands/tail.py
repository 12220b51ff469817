"""``streamscore tail``: print the records of a topic as they arrive."""

from __future__ import annotations

import argparse
import json

from streamscore.streams.commands.base import Command, common, on_broker, settings_of
from streamscore.streams.kafka.security import client_options


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True)
    sp.add_argument("--topic", default=None, help="default texts.scored")
    sp.add_argument("-n", type=int, default=None, help="stop after N records")
    sp.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not the newest"
    )
    sp.add_argument("--timeout", type=float, default=None, help="stop after this many idle seconds")
    sp.add_argument("--pretty", action="store_true", help="one readable line per scored record")


def run(args: argparse.Namespace) -> int:
    from streamscore.streams.kafka.client import format_scored, read_topic

    settings = settings_of(args)

    async def follow(bootstrap: str) -> None:
        async for rec in read_topic(
            bootstrap,
            args.topic or settings.scored_topic,
            from_beginning=args.from_beginning,
            idle_timeout_s=args.timeout,
            limit=args.n,
            options=client_options(settings),
        ):
            print(
                format_scored(rec) if args.pretty else json.dumps(rec["value"], ensure_ascii=False),
                flush=True,
            )

    try:
        on_broker(settings, follow)
    except KeyboardInterrupt:
        pass
    return 0


COMMAND = Command(
    name="tail",
    help="print records of a topic as they arrive",
    options=options,
    run=run,
    examples=("streamscore tail --pretty --from-beginning -n 20 --bootstrap-servers localhost:9092",),
)
