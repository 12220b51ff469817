"""``streamscore worker``: run the scoring worker (Faust), in one process or several."""

from __future__ import annotations

import argparse

from streamscore.models.backends import BACKENDS
from streamscore.streams.commands.base import Command, common, settings_of


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True)
    sp.add_argument("--model", default=None)
    sp.add_argument("--device", default=None)
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    sp.add_argument("--batch-wait", dest="batch_wait_s", type=float, default=None, help="seconds")
    sp.add_argument(
        "--processing-guarantee",
        dest="processing_guarantee",
        choices=["at_least_once", "exactly_once"],
        default=None,
        help="exactly_once needs a broker with transactions (docs/reliability.md)",
    )
    sp.add_argument(
        "--encoder-threads",
        "--scoring-threads",  # its name before 2026-12
        dest="encoder_threads",
        type=int,
        default=None,
        help="forward passes the encoder runs at once, a thread each (batches in flight: one "
        "more, at most 5); 0: one per core; GPU: 1",
    )
    sp.add_argument("--max-text-chars", dest="max_text_chars", type=int, default=None)
    for topic in ("input", "scored", "dlq", "signals", "alerts", "drift_state", "episodes"):
        sp.add_argument(f"--{topic.replace('_', '-')}-topic", dest=f"{topic}_topic", default=None)
    sp.add_argument(
        "--no-explain-texts",
        dest="explain_texts",
        action="store_const",
        const=False,
        default=None,
        help="explanations on alerts and drift.episodes carry keywords and counts, no customer text",
    )
    sp.add_argument(
        "--explain-text-chars",
        dest="explain_text_chars",
        type=int,
        default=None,
        help="texts in explanations are cut to this many characters (default 200)",
    )
    sp.add_argument(
        "--drift-quiet",
        dest="drift_quiet",
        type=int,
        default=None,
        help="messages without alarm that end an episode",
    )
    sp.add_argument(
        "--drift-cooldown",
        dest="drift_cooldown",
        type=int,
        default=None,
        help="messages before a new episode may start",
    )
    sp.add_argument("--partitions", type=int, default=None)
    sp.add_argument("--group-id", dest="group_id", default=None)
    sp.add_argument(
        "--reload-interval",
        dest="reload_interval_s",
        type=float,
        default=None,
        help="seconds between CURRENT checks",
    )
    sp.add_argument("--backend", default=None, choices=BACKENDS, help="embedder runtime (default torch)")
    sp.add_argument(
        "--embed-cache-size", dest="embed_cache_size", type=int, default=None, help="LRU embeddings; 0: off"
    )
    sp.add_argument(
        "--embed-cache-url",
        dest="embed_cache_url",
        default=None,
        help="redis://host:6379/0: an embedding cache shared by workers (needs streamscore[redis]); "
        "a URL with a password belongs in STREAMSCORE_EMBED_CACHE_URL, not here",
    )
    sp.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes in one consumer group, each on its own CPU cores (0: one per core; "
        "default 1). For machines where one worker's event loop is the limit (docs/performance.md)",
    )
    sp.add_argument("--metrics-host", dest="metrics_host", default=None, help="default 127.0.0.1")
    sp.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        default=None,
        help="default 9464, or the next free port above it; 0 turns /metrics off",
    )


def run(args: argparse.Namespace) -> int:
    from streamscore.streams.worker.processes import run_processes

    return run_processes(settings_of(args))


COMMAND = Command(
    name="worker",
    help="run the scoring worker (Faust)",
    options=options,
    run=run,
    examples=(
        "streamscore worker --bootstrap-servers localhost:9092",
        "STREAMSCORE_PROCESSING_GUARANTEE=exactly_once streamscore worker --bootstrap-servers kafka:9092",
    ),
)
