"""``streamscore broker``: the embedded broker, or a single-node Apache Kafka, in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamscore.streams.commands.base import Command


def options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--port", type=int, default=9092)
    sp.add_argument(
        "--kafka-home",
        dest="kafka_home",
        default=None,
        help="run a single-node Apache Kafka from this folder (with libs/; Java 17+) instead",
    )
    sp.add_argument("--verbose", action="store_true", help="show the broker's own log")


def run(args: argparse.Namespace) -> int:
    from streamscore.streams.kafka.apache import USERS, ApacheKafka
    from streamscore.streams.kafka.broker import EmbeddedBroker

    broker: EmbeddedBroker | ApacheKafka = (
        ApacheKafka(Path(args.kafka_home), port=args.port)
        if args.kafka_home
        else EmbeddedBroker(port=args.port)
    )
    try:  # Ctrl-C at any point, even while it starts, stops the broker and exits cleanly
        if isinstance(broker, ApacheKafka):
            broker.start()
            users = ", ".join(f"{u}/{p}" for u, p in USERS.items())
            print(
                f"Apache Kafka from {args.kafka_home} (single node, data in {broker.run_dir}, removed "
                f"at exit) on {broker.bootstrap_servers}; SASL_PLAINTEXT (PLAIN, SCRAM) on "
                f"{broker.sasl_bootstrap_servers}, users {users}",
                flush=True,
            )
        else:
            broker.start(quiet=not args.verbose)
            print(f"embedded Kafka broker (Tansu, memory only) on {broker.bootstrap_servers}", flush=True)
        print(f"  export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}\nCtrl-C stops it.", flush=True)
        assert broker.process is not None
        return broker.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


COMMAND = Command(
    name="broker",
    help="run the embedded Kafka-compatible broker in the foreground",
    options=options,
    run=run,
    examples=("streamscore broker", "streamscore broker --kafka-home ~/kafka_2.13-4.4.0 --port 39092"),
)
