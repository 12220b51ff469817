"""``streamscore`` command line. Each command is a small function; figures go out as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn, get_args

from streamscore.models.artifact import ArtifactError
from streamscore.models.backends import BACKENDS
from streamscore.models.drift.calibration import EmbeddingTest, LabelTest
from streamscore.models.ood import KEEP_IN_DIST, STRATEGIES
from streamscore.schemas.messages import DLQ_REASONS
from streamscore.streams.commands.progress import say
from streamscore.streams.kafka.security import REFUSED_LOGINS, client_options, failure_message
from streamscore.streams.settings import LogLevel, Settings
from streamscore.training.fit import TrainConfig


def _emit(obj: dict[str, Any], as_json: bool) -> None:
    """``--json``: exactly one JSON object as the last line of stdout; else readable lines."""
    if as_json:
        print(json.dumps(obj, sort_keys=True), flush=True)
        return
    for key, value in obj.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{key:>18}: {value}")


def _settings(args: argparse.Namespace) -> Settings:
    names = Settings.__dataclass_fields__
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return Settings.from_env(**overrides)


def cmd_broker(args: argparse.Namespace) -> int:
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


def cmd_train(args: argparse.Namespace) -> int:
    from streamscore.models.registry import Registry
    from streamscore.training.fit import TrainConfig, train

    cfg = TrainConfig(
        ood_label=args.ood_label,
        embedder=args.embedder,
        ood_strategy=args.ood_strategy,
        withhold=tuple(x.strip() for x in (args.withhold or "").split(",") if x.strip()),
        head_c=args.head_c,
        finetune_epochs=args.finetune_epochs,
        keep_in_dist=args.keep,
        seed=args.seed,
        device=args.device or "auto",
        drift_label_test=args.drift_label_test,
        drift_embedding_test=args.drift_embedding_test,
    )
    result = train(
        args.data,
        Registry(args.registry),
        cfg,
        force=args.force,
        promote=not args.no_promote,
        columns=_columns(args),
    )
    _emit(result.as_json(), args.json) if args.json else _print_train(result.as_json())
    return 0


def _print_train(res: dict[str, Any]) -> None:
    val = res["val"]
    print(f"model {res['version']} saved to {res['path']}")
    shown = {k: val[k] for k in ("accuracy", "macro_f1", "ood_auroc", "ood_fpr95", "ood_recall") if k in val}
    print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    print(res["decision"])


def _columns(args: argparse.Namespace) -> Any:
    from streamscore.training.data import Columns

    return Columns.parse(args.field, text=args.text_field, label=args.label_field, split=args.split_field)


def _column_options(sp: argparse.ArgumentParser) -> None:
    """Where a labelled file keeps its text, label and split, for train and evaluate."""
    sp.add_argument("--text-field", default=None, metavar="COLUMN", help="column of the text (default: text)")
    sp.add_argument(
        "--label-field", default=None, metavar="COLUMN", help="column of the label (default: label)"
    )
    sp.add_argument(
        "--split-field",
        default=None,
        metavar="COLUMN",
        help="column of train/val/test (default: split; without one a stratified 80/10/10 split is made)",
    )
    sp.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="the same as the three above, as replay takes it: --field text=body; repeatable",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from streamscore.models.embedder import Embedder
    from streamscore.models.registry import Registry
    from streamscore.training.data import read_labelled
    from streamscore.training.evaluate import evaluate_rows

    artifact = Registry(args.registry).load(args.model)
    labelled = read_labelled(args.data, _columns(args))
    if labelled.split_made:
        print(labelled.split_made, file=sys.stderr)
    rows = [r for r in labelled.rows if args.split in (None, "any") or r.split == args.split]
    if not rows:
        have = sorted({r.split for r in labelled.rows})
        raise ValueError(
            f"{args.data} has no rows with split {args.split!r} (it has: {', '.join(have)}); pass --split any for all"
        )
    embedder = Embedder.load(artifact.embedder_name, args.device or "auto", backend=args.backend)
    t = time.perf_counter()
    withheld = frozenset(artifact.manifest.get("training_data", {}).get("withheld", []))
    metrics = evaluate_rows(
        artifact,
        embedder,
        rows,
        args.ood_label,
        progress=sys.stderr.isatty(),  # a bar on a terminal; the lines around it otherwise
        near_labels=withheld,
    )
    metrics["seconds"] = round(time.perf_counter() - t, 2)
    metrics["split"] = args.split
    metrics["split_made"] = labelled.split_made
    metrics["backend"] = args.backend
    _emit(metrics, args.json)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from streamscore.streams.commands.bench import BenchOptions, run_bench

    settings = _settings(args)
    opts = BenchOptions(
        messages=args.messages,
        repeats=args.repeats,
        naive_messages=args.naive_messages,
        latency_seconds=args.latency_seconds,
        latency_windows=args.latency_windows,
        backends=tuple(b for b in (args.backends or "").split(",") if b),
        scale_out=not args.no_scale_out,
        exactly_once=args.exactly_once,
        say=say("bench"),
    )
    result = run_bench(settings, opts)
    if args.json:
        _emit(result, True)
    else:
        print(json.dumps(result, indent=2))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streamscore.streams.worker.processes import run_processes

    return run_processes(_settings(args))


def cmd_produce(args: argparse.Namespace) -> int:
    from streamscore.streams.kafka.broker import bootstrap_or_embedded
    from streamscore.streams.kafka.client import produce, text_messages

    settings = _settings(args)
    f = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    with f, bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        n = asyncio.run(
            produce(bootstrap, args.topic or settings.input_topic, text_messages(f), client_options(settings))
        )
    print(f"sent {n} messages to {args.topic or settings.input_topic}", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streamscore.streams.commands.replay import (
        FieldMap,
        ReplayOptions,
        describe,
        install_interrupt,
        replay_file,
    )
    from streamscore.streams.kafka.broker import bootstrap_or_embedded

    settings = _settings(args)
    opts = ReplayOptions(
        topic=args.topic or settings.input_topic,
        fields=FieldMap.parse(args.field),
        id_prefix=args.id_prefix,
        keep_timestamps=args.keep_timestamps,
        rate=args.rate,
        speed=args.speed,
        skip=args.skip,
        limit=args.limit,
        send_malformed=args.send_malformed,
        extra_meta=not args.no_extra_meta,
        resume=args.resume,
    )
    opts.check()

    async def run(bootstrap: str) -> Any:
        stop = asyncio.Event()
        install_interrupt(stop, say=lambda m: print(f"\nreplay: {m}", file=sys.stderr, flush=True))
        return await replay_file(
            args.file,
            bootstrap,
            opts,
            state_dir=settings.registry,
            max_text_chars=settings.max_text_chars,
            max_message_bytes=settings.max_message_bytes,
            progress=True,  # on stderr: a bar on a terminal, plain lines otherwise
            stop=stop,
            client_options=client_options(settings),
        )

    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        summary = asyncio.run(run(bootstrap))
    if args.json:
        _emit(summary.as_json(), True)
    else:
        print(describe(summary, args.file, args.topic), flush=True)
    return 0 if summary.complete else 130 if summary.interrupted else 1


def _window(args: argparse.Namespace, lateness_s: float = 0.0) -> Any:
    """The time or offset range of ``--from/--to`` or ``--from-offset/--to-offset`` (rescore, themes)."""
    from streamscore.streams.kafka.ranges import Window, parse_offsets, parse_time

    now = int(time.time() * 1000)
    return Window(
        from_ms=parse_time(args.from_time, now) if args.from_time else None,
        to_ms=parse_time(args.to_time, now) if args.to_time else now if args.from_time else None,
        from_offsets=parse_offsets(args.from_offset) if args.from_offset else None,
        to_offsets=parse_offsets(args.to_offset) if args.to_offset else None,
        lateness_ms=int(lateness_s * 1000),
    )


def cmd_rescore(args: argparse.Namespace) -> int:
    from streamscore.streams.commands.rescore import describe, rescore
    from streamscore.streams.kafka.broker import bootstrap_or_embedded, require_broker
    from streamscore.streams.worker.run import load_scorer
    from streamscore.streams.worker.serving import ModelHolder

    settings = _settings(args)
    require_broker(settings.bootstrap_servers, settings.embedded_broker)  # before loading a model
    window = _window(args, lateness_s=args.lateness)
    window.check()
    scorer = load_scorer(settings)
    output = args.output_topic or f"{settings.input_topic}.rescored.{scorer.version}"
    if output in (settings.input_topic, settings.scored_topic):
        raise ValueError(
            f"--output-topic {output} would mix rescored records into a live topic; pick another"
        )
    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        result = asyncio.run(
            rescore(
                settings,
                bootstrap,
                window,
                ModelHolder(scorer),
                output,
                compare=args.compare,
                max_changed=args.max_changed,
                progress=True,  # on stderr: a bar on a terminal, plain lines otherwise
            )
        )
    if args.json:
        _emit(result.as_json(), True)
    else:
        print(describe(result), flush=True)
    return 0


def cmd_themes(args: argparse.Namespace) -> int:
    from streamscore.streams.commands.themes import describe, range_themes
    from streamscore.streams.kafka.broker import bootstrap_or_embedded, require_broker
    from streamscore.streams.worker.run import load_scorer

    settings = _settings(args)
    require_broker(settings.bootstrap_servers, settings.embedded_broker)  # before loading a model
    window = _window(args)
    window.check()
    if args.max_texts < 10:
        raise ValueError("--max-texts must be at least 10")
    scorer = load_scorer(settings)
    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        result = asyncio.run(
            range_themes(
                settings,
                bootstrap,
                window,
                scorer,
                max_texts=args.max_texts,
                text_chars=args.text_chars,
                with_texts=not args.no_texts,
                progress=True,
            )
        )
    if args.json:
        _emit(result.as_json(), True)
    else:
        print(describe(result), flush=True)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streamscore.streams.commands.topics import create_missing, describe, table
    from streamscore.streams.kafka.broker import bootstrap_or_embedded

    settings = _settings(args)
    options = client_options(settings)
    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        if args.create:
            asyncio.run(create_missing(bootstrap, settings, options))
        states = asyncio.run(describe(bootstrap, settings, options))
    if args.json:
        _emit({"bootstrap_servers": bootstrap, "topics": [s.as_json() for s in states]}, True)
    else:
        print(table(states))
    # Exit 1 when a topic is missing or not as the settings want, so a deploy script can check.
    return 1 if any(s.problems for s in states) else 0


def cmd_tail(args: argparse.Namespace) -> int:
    from streamscore.streams.kafka.broker import bootstrap_or_embedded
    from streamscore.streams.kafka.client import format_scored, read_topic

    settings = _settings(args)
    topic = args.topic or settings.scored_topic

    async def run(bootstrap: str) -> None:
        async for rec in read_topic(
            bootstrap,
            topic,
            from_beginning=args.from_beginning,
            idle_timeout_s=args.timeout,
            limit=args.n,
            options=client_options(settings),
        ):
            print(
                format_scored(rec) if args.pretty else json.dumps(rec["value"], ensure_ascii=False),
                flush=True,
            )

    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        try:
            asyncio.run(run(bootstrap))
        except KeyboardInterrupt:
            pass
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from streamscore.streams.commands.dlq import dead_letters, describe
    from streamscore.streams.kafka.broker import bootstrap_or_embedded

    settings = _settings(args)
    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        found = asyncio.run(dead_letters(bootstrap, settings, client_options(settings), args.resend or []))
    if args.json:
        _emit(found.as_json(), True)
    else:
        print(describe(found), flush=True)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from streamscore.streams.kafka.broker import bootstrap_or_embedded, require_broker
    from streamscore.streams.ui.server import serve

    settings = _settings(args)
    require_broker(settings.bootstrap_servers, settings.embedded_broker)
    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        asyncio.run(serve(settings, bootstrap, settings.ui_host, settings.ui_port, settings.ui_refresh_s))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from streamscore.models.registry import Registry

    reg = Registry(args.registry)
    before = reg.current()
    if args.action == "promote":
        if not args.version:
            raise ValueError("usage: streamscore models promote VERSION")
        version = reg.find(args.version)
        if version is None:
            there = ", ".join(reg.versions()) or "none"
            raise ValueError(f"no version {args.version!r} in {reg.models_dir} (there: {there})")
        reg.set_current(version)
        _emit_change(before, version, "promoted", args.json)
        return 0
    if args.action == "rollback":
        _emit_change(before, reg.rollback(), "rolled back", args.json)
        return 0
    rows = reg.describe()
    if args.json:
        _emit({"current": reg.current(), "versions": rows}, True)
        return 0
    if not rows:
        print(f"no models in {reg.models_dir}")
    for row in rows:
        mark = "*" if row["current"] else " "
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in row["val"].items())
        print(f"{mark} {row['version']}  {row['created_at']}  {row['ood_strategy']:<20} {metrics}")
    return 0


def _emit_change(before: str | None, current: str, what: str, as_json: bool) -> None:
    if as_json:
        _emit({"before": before, "current": current, "action": what}, True)
    else:
        print(f"{what}: CURRENT {before} → {current}")


def cmd_drift_eval(args: argparse.Namespace) -> int:
    from streamscore.models.embedder import Embedder
    from streamscore.models.registry import Registry
    from streamscore.training.drift_eval import drift_eval, load_signals, table

    artifact = Registry(args.registry).load(args.model)
    if artifact.drift is None:
        raise ArtifactError(
            f"model {artifact.version} has no drift calibration: retrain it with `streamscore train`"
        )
    embedder = Embedder.load(artifact.embedder_name, args.device or "auto")
    cache = Path(args.registry) / "cache"
    ins = load_signals(artifact, embedder, args.in_file, cache, args.in_split, args.ood_label, want_ood=False)
    shifts = {
        Path(path).stem: load_signals(
            artifact, embedder, path, cache, args.shift_split, args.ood_label, want_ood=True
        )
        for path in args.shift
    }
    result = drift_eval(artifact, ins, shifts, seeds=args.seeds, say=say("drift-eval"))
    if args.json:
        _emit(result, True)
    else:
        print(table(result), flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamscore.streams.commands.demo import run_demo

    return run_demo(
        _settings(args),
        n_in=args.n_in,
        n_drift=args.n_drift,
        drift_share=args.drift_share,
        rate=args.rate,
        n_after=args.n_after,
    )


def _count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamscore")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="streamscore", description="Streaming text scoring on Kafka.")
    p.add_argument("--version", action="version", version=f"streamscore {_version()}")
    levels = list(get_args(LogLevel))
    log_help = f"{', '.join(levels)} (default info)"
    p.add_argument("--log-level", dest="log_level", default=None, choices=levels, help=log_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    p.set_defaults(commands=sub.choices)

    def common(sp: argparse.ArgumentParser, kafka: bool = False, as_json: bool = False) -> None:
        sp.add_argument(
            "--registry", type=Path, default=None, help="model registry folder (default artifacts/)"
        )
        if kafka:
            sp.add_argument(
                "--bootstrap-servers",
                dest="bootstrap_servers",
                default=None,
                help="Kafka brokers host:port (env KAFKA_BOOTSTRAP_SERVERS); required unless --embedded",
            )
            sp.add_argument(
                "--embedded",
                dest="embedded_broker",
                action="store_const",
                const=True,
                default=None,
                help="no broker given: start a throwaway in-memory broker for this command",
            )
        if as_json:
            sp.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    sp = sub.add_parser(
        "topics",
        help="show the topics streamscore uses, as the settings want them and as they are; --create makes them",
        description="On a cluster set STREAMSCORE_REPLICATION_FACTOR=3 STREAMSCORE_MIN_INSYNC_REPLICAS=2 "
        "first. Exit code 1 when a topic is missing or differs from the settings.",
    )
    common(sp, kafka=True, as_json=True)
    sp.add_argument(
        "--create", action="store_true", help="create the missing topics first (existing ones are left alone)"
    )
    sp.add_argument("--partitions", type=int, default=None, help="partitions of the input and scored topics")
    sp.set_defaults(func=cmd_topics)

    sp = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    sp.add_argument("--port", type=int, default=9092)
    sp.add_argument(
        "--kafka-home",
        dest="kafka_home",
        default=None,
        help="run a single-node Apache Kafka from this folder (with libs/; Java 17+) instead",
    )
    sp.add_argument("--verbose", action="store_true", help="show the broker's own log")
    sp.set_defaults(func=cmd_broker)

    sp = sub.add_parser("train", help="fit a model on labelled texts and register it")
    common(sp, as_json=True)
    sp.add_argument("--data", required=True, help="labelled texts: JSONL, CSV, TSV or Parquet (.gz too)")
    _column_options(sp)
    sp.add_argument("--ood-label", default="oos", help="label of out-of-distribution rows (never trained on)")
    sp.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2")
    sp.add_argument(
        "--ood-strategy",
        default=TrainConfig.ood_strategy,
        choices=STRATEGIES,
        metavar="STRATEGY",
        help=f"how far from the training data a text lies: {', '.join(STRATEGIES)} (docs/models.md)",
    )
    sp.add_argument(
        "--drift-label-test",
        default=TrainConfig.drift_label_test,
        choices=get_args(LabelTest),
        help="mix: chi-square of the recent label mix, every message (default); window: G-test of 500",
    )
    sp.add_argument(
        "--drift-embedding-test",
        default=TrainConfig.drift_embedding_test,
        choices=get_args(EmbeddingTest),
        help="centre+spread (default): window mean and each text's distance; centre: window mean only",
    )
    sp.add_argument(
        "--withhold",
        default=None,
        metavar="LABEL,LABEL",
        help="keep these labels out of training; evaluate then scores them as near-OOD (new, similar intents)",
    )
    sp.add_argument(
        "--head-c",
        type=float,
        default=None,
        help="inverse L2 strength of the head (default: chosen on validation)",
    )
    sp.add_argument(
        "--finetune-epochs",
        type=float,
        default=TrainConfig.finetune_epochs,
        help="epochs of encoder fine-tuning before the head is fitted (0: frozen encoder, fastest)",
    )
    sp.add_argument(
        "--keep",
        type=float,
        default=KEEP_IN_DIST,
        help="share of in-distribution val texts the OOD gate passes",
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default=None)
    sp.add_argument("--force", action="store_true", help="promote even if it does not beat CURRENT")
    sp.add_argument("--no-promote", action="store_true", help="register without promoting")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="metrics of a model on labelled texts")
    common(sp, as_json=True)
    sp.add_argument("--model", default=None, help="version or artifact folder (default CURRENT)")
    sp.add_argument("--data", required=True, help="labelled texts: JSONL, CSV, TSV or Parquet (.gz too)")
    _column_options(sp)
    sp.add_argument("--split", default="test", help="rows of this split ('any' for all)")
    sp.add_argument("--backend", default="torch", choices=BACKENDS, help="embedder runtime")
    sp.add_argument("--ood-label", default="oos")
    sp.add_argument("--device", default=None)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("worker", help="run the scoring worker (Faust)")
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
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument("--scored-topic", dest="scored_topic", default=None)
    sp.add_argument("--dlq-topic", dest="dlq_topic", default=None)
    sp.add_argument("--signals-topic", dest="signals_topic", default=None)
    sp.add_argument("--alerts-topic", dest="alerts_topic", default=None)
    sp.add_argument("--drift-state-topic", dest="drift_state_topic", default=None)
    sp.add_argument("--episodes-topic", dest="episodes_topic", default=None)
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
    sp.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="embedder runtime (default torch)",
    )
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
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser(
        "bench",
        help="raw encoder vs. end-to-end worker vs. naive consumer, latency and memory (docs/performance.md)",
    )
    common(sp, kafka=True, as_json=True)
    sp.add_argument("--messages", type=_count, default=4_000, help="per end-to-end run")
    sp.add_argument(
        "--repeats",
        type=_count,
        default=3,
        help="turns of end-to-end runs, each next to raw-encoder passes (ratios: median over turns)",
    )
    sp.add_argument("--naive-messages", dest="naive_messages", type=_count, default=800)
    sp.add_argument(
        "--latency-seconds",
        dest="latency_seconds",
        type=float,
        default=20.0,
        help="per load level and window",
    )
    sp.add_argument(
        "--latency-windows",
        dest="latency_windows",
        type=_count,
        default=3,
        help="windows at 50%% load, each through a new worker; the percentiles pool them",
    )
    sp.add_argument(
        "--backends", default=None, help="comma-separated, e.g. torch,onnx,onnx-int8 (first: latency, memory)"
    )
    sp.add_argument(
        "--no-scale-out",
        dest="no_scale_out",
        action="store_true",
        help="skip one worker on one core vs. two workers on a core each",
    )
    sp.add_argument(
        "--exactly-once",
        dest="exactly_once",
        action="store_true",
        help="also run an exactly-once worker in every turn (a broker with transactions: Apache Kafka)",
    )
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    sp.add_argument("--device", default=None)
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("produce", help="send texts (JSONL or plain lines) to the input topic")
    common(sp, kafka=True)
    sp.add_argument("file", help="JSONL file, or - for stdin")
    sp.add_argument("--topic", default=None)
    sp.set_defaults(func=cmd_produce)

    sp = sub.add_parser(
        "replay",
        help="send the rows of a JSONL, CSV or Parquet file to the input topic (paced, resumable)",
        description="Rows become input messages (docs/replay.md). Malformed rows are reported with "
        "their line numbers and not sent. Ctrl-C stops cleanly; --resume continues from there.",
    )
    common(sp, kafka=True, as_json=True)
    sp.add_argument("file", help="JSONL, CSV, TSV or Parquet; .gz accepted for the text formats")
    sp.add_argument("--topic", default=None, help="default: the input topic (texts)")
    pace = sp.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=float, default=None, help="rows per second (default: as fast as possible)"
    )
    pace.add_argument(
        "--speed", type=float, default=None, help="the rows' own spacing in time, sped up by this factor"
    )
    sp.add_argument(
        "--keep-timestamps", action="store_true", help="Kafka timestamp = the row's time (its ts field)"
    )
    sp.add_argument("--skip", type=int, default=0, help="start after this many rows")
    sp.add_argument("--limit", type=int, default=None, help="send at most this many rows")
    sp.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="take a message field (id, text, ts, source, meta) from another column; repeatable",
    )
    sp.add_argument("--id-prefix", default=None, help="ids made for rows without one: PREFIX + line number")
    sp.add_argument(
        "--no-extra-meta", action="store_true", help="drop unmapped columns instead of putting them in meta"
    )
    sp.add_argument(
        "--send-malformed",
        action="store_true",
        help="send malformed rows too, so the worker dead-letters them",
    )
    sp.add_argument(
        "--resume", action="store_true", help="continue an interrupted replay of this file and topic"
    )
    sp.add_argument("--max-text-chars", dest="max_text_chars", type=int, default=None)
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser(
        "rescore",
        help="score a time or offset range of the input topic again, with a chosen model, into its own topic",
        description="Reads without a consumer group, so live workers are not disturbed. Times: ISO-8601, "
        "epoch ms, 'now' or -15m/-2h/-7d (write --from=-2h). The range ends where it stood at the start.",
    )
    common(sp, kafka=True, as_json=True)
    sp.add_argument("--from", dest="from_time", default=None, help="start time (inclusive)")
    sp.add_argument("--to", dest="to_time", default=None, help="end time (exclusive; default now)")
    sp.add_argument(
        "--lateness",
        type=float,
        default=0.0,
        help="seconds of record time to read past --to, for records written out of time order",
    )
    sp.add_argument("--from-offset", default=None, help="N, or P=N,P=N per partition (inclusive)")
    sp.add_argument("--to-offset", default=None, help="N, or P=N,P=N per partition (exclusive)")
    sp.add_argument("--model", default=None, help="version or artifact folder (default CURRENT)")
    sp.add_argument("--device", default=None)
    sp.add_argument("--output-topic", default=None, help="default <input topic>.rescored.<version>")
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument(
        "--scored-topic", dest="scored_topic", default=None, help="the live results --compare reads"
    )
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    sp.add_argument(
        "--compare", action="store_true", help="compare with what the live model wrote for the same records"
    )
    sp.add_argument(
        "--max-changed", type=int, default=1_000, help="changed records listed in full (all are counted)"
    )
    sp.set_defaults(func=cmd_rescore)

    sp = sub.add_parser(
        "themes",
        help="group the foreign texts of a time or offset range of the input topic into themes",
        description="Reads without a consumer group and scores the range with a chosen model; the texts it "
        "flags as OOD are clustered, each theme shown with its size, keywords and example texts. Times: "
        "ISO-8601, epoch ms, 'now' or -15m/-2h/-7d (write --from=-2h).",
    )
    common(sp, kafka=True, as_json=True)
    sp.add_argument("--from", dest="from_time", default=None, help="start time (inclusive)")
    sp.add_argument("--to", dest="to_time", default=None, help="end time (exclusive; default now)")
    sp.add_argument("--from-offset", default=None, help="N, or P=N,P=N per partition (inclusive)")
    sp.add_argument("--to-offset", default=None, help="N, or P=N,P=N per partition (exclusive)")
    sp.add_argument("--model", default=None)
    sp.add_argument("--device", default=None)
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    sp.add_argument(
        "--max-texts",
        type=int,
        default=5_000,
        help="foreign texts clustered at most (a uniform sample beyond)",
    )
    sp.add_argument(
        "--text-chars", type=int, default=200, help="example texts are cut to this many characters"
    )
    sp.add_argument(
        "--no-texts", action="store_true", help="keywords and counts only: no customer text in the output"
    )
    sp.set_defaults(func=cmd_themes)

    sp = sub.add_parser(
        "ui",
        help="a web page of the fleet: drift episodes and their explanations, dead letters, rate, lag, model",
        description="Reads the topics, not a worker, so it shows every worker of the group. Binds to "
        "127.0.0.1 unless told otherwise; the page refreshes itself. JSON at /api/fleet.",
    )
    common(sp, kafka=True)
    sp.add_argument("--host", dest="ui_host", default=None, help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", dest="ui_port", type=int, default=None, help="default 8090; 0: any free port")
    sp.add_argument("--refresh", dest="ui_refresh_s", type=float, default=None, help="seconds (default 5)")
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument("--scored-topic", dest="scored_topic", default=None)
    sp.add_argument("--dlq-topic", dest="dlq_topic", default=None)
    sp.add_argument("--episodes-topic", dest="episodes_topic", default=None)
    sp.add_argument("--group-id", dest="group_id", default=None, help="the workers' group (for the lag)")
    sp.set_defaults(func=cmd_ui)

    sp = sub.add_parser(
        "dlq",
        help="dead letters by reason; --resend REASON sends them back to be scored",
        description="Resent dead letters go to the input topic as they first came; a consumer group "
        "per reason (<group-id>.dlq-resend.<reason>) keeps how far, so each is resent once. Those "
        "that carry only part of their value are counted and left.",
    )
    common(sp, kafka=True, as_json=True)
    sp.add_argument(
        "--resend",
        action="append",
        choices=DLQ_REASONS,
        metavar="REASON",
        help="send the dead letters of REASON (scoring_failed, output_too_large, ...) not resent "
        "before back to the input topic; repeatable",
    )
    sp.add_argument("--dlq-topic", dest="dlq_topic", default=None)
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument("--group-id", dest="group_id", default=None)
    sp.set_defaults(func=cmd_dlq)

    sp = sub.add_parser("tail", help="print records of a topic as they arrive")
    common(sp, kafka=True)
    sp.add_argument("--topic", default=None, help="default texts.scored")
    sp.add_argument("-n", type=int, default=None, help="stop after N records")
    sp.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not the newest"
    )
    sp.add_argument("--timeout", type=float, default=None, help="stop after this many idle seconds")
    sp.add_argument("--pretty", action="store_true", help="one readable line per scored record")
    sp.set_defaults(func=cmd_tail)

    sp = sub.add_parser("models", help="list registered models; promote or roll back CURRENT")
    common(sp, as_json=True)
    sp.add_argument("action", nargs="?", choices=["list", "promote", "rollback"], default="list")
    sp.add_argument("version", nargs="?")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("drift-eval", help="false alarms and detection delays of the drift detectors")
    common(sp, as_json=True)
    sp.add_argument("--model", default=None)
    sp.add_argument("--in", dest="in_file", required=True, help="held-out in-distribution texts")
    sp.add_argument("--in-split", default="test", help="rows of --in with this split ('any' for all)")
    sp.add_argument(
        "--shift",
        required=True,
        action="append",
        help="shifted texts (its --ood-label rows if it has any, else all); repeat it for a table per data set",
    )
    sp.add_argument("--shift-split", default="any")
    sp.add_argument("--ood-label", default="oos")
    sp.add_argument("--seeds", type=int, default=10, help="repetitions of each scenario")
    sp.add_argument("--device", default=None)
    sp.set_defaults(func=cmd_drift_eval)

    sp = sub.add_parser("demo", help="broker + model + worker + a demo stream with a drift phase")
    common(sp, kafka=True)
    sp.add_argument("--n-in", type=int, default=600, help="in-distribution messages before the drift")
    sp.add_argument("--n-drift", type=int, default=400, help="messages in the drift phase")
    sp.add_argument("--drift-share", type=float, default=0.5, help="share of OOD texts in the drift phase")
    sp.add_argument("--n-after", type=int, default=1_200, help="in-distribution messages after the drift")
    sp.add_argument("--rate", type=float, default=150.0, help="messages per second")
    sp.set_defaults(func=cmd_demo)
    for name, sp in sub.choices.items():
        sp.add_argument(  # global flags work after the command too
            "--log-level", dest="log_level", default=argparse.SUPPRESS, choices=levels, help=log_help
        )
        sp.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        sp.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, and under ``--json`` also as the one JSON object on stdout."""

    def error(self, message: str) -> NoReturn:
        if "--json" in sys.argv[1:]:
            command = self.prog.removeprefix("streamscore").strip() or next(
                (a for a in sys.argv[1:] if a in EXAMPLES), None
            )
            print(json.dumps({"error": message, "command": command}))
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# A flag whose default is None takes the setting's (environment, then Settings' own default).
SETTING_DEFAULTS = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}


class CommandParser(Parser):
    """A command's parser: a flag without help of its own gets the shared one (FLAG_HELP), and
    every flag's help says its default."""

    flags: list[argparse.Action]

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and not action.help and action.dest != "help":
            action.help = FLAG_HELP[action.dest]
        if action.option_strings:
            self.__dict__.setdefault("flags", []).append(action)
            default = action.default
            if default is None:
                default = SETTING_DEFAULTS.get(action.dest)
            shown = default not in (None, False, True, argparse.SUPPRESS) and not isinstance(default, list)
            if shown and action.help and "default" not in action.help:
                action.help += f" (default: {str(default).replace('%', '%%')})"
        return action


# Help for flags several commands share, said once.
FLAG_HELP = {
    "port": "port to listen on",
    "embedder": "sentence-transformers model to embed with (a name the installed wheels provide, or a folder)",
    "seed": "seed of every random choice, so a run can be repeated",
    "device": "auto (CUDA when there is one), cpu or cuda",
    "ood_label": "label of the out-of-distribution rows (never trained on)",
    "model": "model version (v0003) or artifact folder; default: the registry's CURRENT",
    "batch_size": "messages per micro-batch",
    "max_text_chars": "longer texts are dead-lettered (text_too_long)",
    "input_topic": "topic of the texts to score",
    "scored_topic": "topic the scored records go to",
    "dlq_topic": "topic bad messages go to, with a reason",
    "signals_topic": "topic of the drift signals (one partition)",
    "alerts_topic": "topic of the drift alerts",
    "drift_state_topic": "compacted topic of the detectors' state, so a restart resumes",
    "episodes_topic": "compacted topic of each drift episode's explanation, keyed by episode id",
    "partitions": "partitions of the topics streamscore creates",
    "group_id": "Kafka consumer group of the workers",
    "naive_messages": "messages for the one-at-a-time baseline",
    "topic": "topic to write to (default: the input topic)",
    "shift_split": "rows of --shift with this split ('any' for all)",
}

EXAMPLES = {
    "topics": ["streamscore topics --bootstrap-servers localhost:9092 --create --partitions 6"],
    "broker": ["streamscore broker", "streamscore broker --kafka-home ~/kafka_2.13-4.4.0 --port 39092"],
    "train": [
        "streamscore train --data datasets/clinc150/clinc150_full.jsonl",
        "streamscore train --data tickets.csv --field text=body --field label=category --finetune-epochs 0",
    ],
    "evaluate": [
        "streamscore evaluate --data datasets/clinc150/clinc150_full.jsonl --json",
        "streamscore evaluate --data tickets.csv --text-field body --label-field category --split test",
    ],
    "worker": [
        "streamscore worker --bootstrap-servers localhost:9092",
        "STREAMSCORE_PROCESSING_GUARANTEE=exactly_once streamscore worker --bootstrap-servers kafka:9092",
    ],
    "bench": ["streamscore bench --bootstrap-servers localhost:9092 --json"],
    "produce": [
        'echo \'{"text": "my card was declined"}\' | streamscore produce - --bootstrap-servers localhost:9092',
    ],
    "replay": [
        'streamscore replay reviews.csv --field text="Review Text" --rate 200 --bootstrap-servers localhost:9092',
    ],
    "rescore": ["streamscore rescore --from=-2h --bootstrap-servers localhost:9092"],
    "themes": [
        "streamscore themes --from=-1h --bootstrap-servers localhost:9092",
        "streamscore themes --from 2026-12-05T03:00:00Z --to 2026-12-05T04:00:00Z --no-texts --json",
    ],
    "ui": [
        "streamscore ui --bootstrap-servers localhost:9092",
        "streamscore ui --host 0.0.0.0 --port 8090 --refresh 10 --group-id streamscore",
    ],
    "tail": ["streamscore tail --pretty --from-beginning -n 20 --bootstrap-servers localhost:9092"],
    "dlq": [
        "streamscore dlq --bootstrap-servers localhost:9092",
        "streamscore dlq --resend scoring_failed --bootstrap-servers localhost:9092 --json",
    ],
    "models": ["streamscore models", "streamscore models promote v0003", "streamscore models rollback"],
    "drift-eval": [
        "streamscore drift-eval --in datasets/clinc150/clinc150_full.jsonl "
        "--shift datasets/clinc150/clinc150_full.jsonl --json"
    ],
    "demo": ["streamscore demo", "streamscore demo --n-drift 800 --drift-share 0.8"],
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(_relative_times(argv))
    try:
        if getattr(args, "registry", False) is None:
            # Every command sees the same registry: --registry, else STREAMSCORE_REGISTRY, else the default.
            args.registry = Settings.from_env().registry
        _set_up_logging(args.log_level)
        return int(args.func(args) or 0)
    except Exception as exc:
        # Kafka clients say little of why they could not connect or log in (aiokafka's log
        # line has the cause); say what to check. Bad settings and arguments are ValueErrors that
        # name the setting, the value and what is allowed.
        said = failure_message(exc, _security_settings())
        if said is None and not isinstance(
            exc, ArtifactError | ValueError | RuntimeError | FileNotFoundError
        ):
            raise
        message = said or str(exc)
        if isinstance(exc, FileNotFoundError) and exc.filename:
            message = f"no such file: {exc.filename}"
        if getattr(args, "json", False):  # the last line of stdout stays one JSON object
            print(json.dumps({"error": message, "command": args.command}))
        print(f"streamscore {args.command}: error: {message}", file=sys.stderr)
        return exit_code(exc, said)


USAGE, FAILURE = 2, 1


def _relative_times(argv: list[str]) -> list[str]:
    """``--from -2h`` as ``--from=-2h``: argparse takes a value that starts with '-' for a flag.

    >>> _relative_times(["rescore", "--from", "-2h", "--to", "-15m", "--json"])
    ['rescore', '--from=-2h', '--to=-15m', '--json']
    """
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--from", "--to") and re.fullmatch(r"-\d+(\.\d+)?[smhd]", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def exit_code(exc: Exception, said: str | None = None) -> int:
    """2 when what was asked cannot work as asked (a setting, an argument, an input file: fix the
    command), 1 when it failed while running (a broker, a login, an ACL, a model on disk).

    >>> exit_code(ValueError("--to must be later than --from")), exit_code(RuntimeError("refused"))
    (2, 1)
    """
    return USAGE if isinstance(exc, ValueError | FileNotFoundError) and said is None else FAILURE


def _set_up_logging(level: str | None) -> None:
    logging.basicConfig(
        level=(level or "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").addHandler(REFUSED_LOGINS)  # a refused login, named in errors
    if not level:
        # aiokafka and sentence-transformers narrate every connection and load at INFO.
        for noisy in ("aiokafka", "sentence_transformers", "kafka"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _security_settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError:
        return Settings.from_env({})


if __name__ == "__main__":
    sys.exit(main())
