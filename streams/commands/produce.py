"""``streamscore produce``: send texts (JSONL or plain lines) to the input topic."""

from __future__ import annotations

import argparse
import sys

from streamscore.streams.commands.base import Command, common, on_broker, settings_of
from streamscore.streams.kafka.security import client_options


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True)
    sp.add_argument("file", help="JSONL file, or - for stdin")
    sp.add_argument("--topic", default=None)


def run(args: argparse.Namespace) -> int:
    from streamscore.streams.kafka.client import produce, text_messages

    settings = settings_of(args)
    topic = args.topic or settings.input_topic
    with sys.stdin if args.file == "-" else open(args.file, encoding="utf-8") as f:
        n = on_broker(
            settings, lambda bootstrap: produce(bootstrap, topic, text_messages(f), client_options(settings))
        )
    print(f"sent {n} messages to {topic}", file=sys.stderr)
    return 0


COMMAND = Command(
    name="produce",
    help="send texts (JSONL or plain lines) to the input topic",
    options=options,
    run=run,
    examples=(
        'echo \'{"text": "my card was declined"}\' | streamscore produce - --bootstrap-servers localhost:9092',
    ),
)
