"""``streamscore`` command line. Each command is a small function; figures go out as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from models.artifact import ArtifactError
from streams.settings import Settings
from training.fit import TrainConfig


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
    from streams.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port).start(quiet=not args.verbose)
    print(
        f"embedded Kafka broker (Tansu, memory only) on {broker.bootstrap_servers}\n"
        f"  export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}\nCtrl-C stops it.",
        flush=True,
    )
    try:
        assert broker.process is not None
        return broker.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def cmd_train(args: argparse.Namespace) -> int:
    from training.fit import TrainConfig, train
    from training.registry import Registry

    cfg = TrainConfig(
        ood_label=args.ood_label,
        embedder=args.embedder,
        ood_strategy=args.ood_strategy,
        head_c=args.head_c,
        finetune_epochs=args.finetune_epochs,
        keep_in_dist=args.keep,
        seed=args.seed,
        device=args.device or "auto",
    )
    result = train(
        args.data,
        Registry(args.registry),
        cfg,
        force=args.force,
        promote=not args.no_promote,
        quiet=args.json,
    )
    _emit(result.as_json(), args.json) if args.json else _print_train(result.as_json())
    return 0


def _print_train(res: dict[str, Any]) -> None:
    val = res["val"]
    print(f"model {res['version']} saved to {res['path']}")
    shown = {k: val[k] for k in ("accuracy", "macro_f1", "ood_auroc", "ood_fpr95", "ood_recall") if k in val}
    print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    print(res["decision"])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.embedder import Embedder
    from training.data import load_rows
    from training.evaluate import evaluate_rows
    from training.registry import Registry

    artifact = Registry(args.registry).load(args.model)
    rows = [r for r in load_rows(args.data) if args.split in (None, "any") or r.split == args.split]
    if not rows:
        raise ValueError(f"{args.data} has no rows with split {args.split!r}")
    embedder = Embedder.load(artifact.embedder_name, args.device or "auto")
    t = time.perf_counter()
    metrics = evaluate_rows(
        artifact, embedder, rows, args.ood_label, progress=not args.json and sys.stderr.isatty()
    )
    metrics["seconds"] = round(time.perf_counter() - t, 2)
    metrics["split"] = args.split
    _emit(metrics, args.json)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker(_settings(args))


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.broker import bootstrap_or_embedded
    from streams.client import produce, text_messages

    settings = _settings(args)
    f = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    with f, bootstrap_or_embedded(settings.bootstrap_servers) as bootstrap:
        n = asyncio.run(produce(bootstrap, args.topic or settings.input_topic, text_messages(f)))
    print(f"sent {n} messages to {args.topic or settings.input_topic}", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from streams.broker import bootstrap_or_embedded
    from streams.client import format_scored, read_topic

    settings = _settings(args)
    topic = args.topic or settings.scored_topic

    async def run(bootstrap: str) -> None:
        async for rec in read_topic(
            bootstrap, topic, from_beginning=args.from_beginning, idle_timeout_s=args.timeout, limit=args.n
        ):
            print(
                format_scored(rec) if args.pretty else json.dumps(rec["value"], ensure_ascii=False),
                flush=True,
            )

    with bootstrap_or_embedded(settings.bootstrap_servers) as bootstrap:
        try:
            asyncio.run(run(bootstrap))
        except KeyboardInterrupt:
            pass
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from training.registry import Registry

    reg = Registry(args.registry)
    if args.action == "promote":
        if not args.version:
            raise ValueError("usage: streamscore models promote VERSION")
        before = reg.current()
        reg.set_current(args.version)
        print(f"CURRENT: {before} → {args.version}")
        return 0
    if args.action == "rollback":
        version = reg.rollback()
        print(f"rolled back: CURRENT is now {version}")
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


def cmd_drift_eval(args: argparse.Namespace) -> int:
    from models.embedder import Embedder
    from training.drift_eval import drift_eval, load_signals
    from training.registry import Registry

    artifact = Registry(args.registry).load(args.model)
    if artifact.drift is None:
        raise ArtifactError(
            f"model {artifact.version} has no drift calibration: retrain it with `streamscore train`"
        )
    embedder = Embedder.load(artifact.embedder_name, args.device or "auto")
    cache = Path(args.registry or "artifacts") / "cache"
    ins = load_signals(artifact, embedder, args.in_file, cache, args.in_split, args.ood_label, want_ood=False)
    shift = load_signals(
        artifact, embedder, args.shift, cache, args.shift_split, args.ood_label, want_ood=True
    )
    result = drift_eval(artifact, ins, shift, seeds=args.seeds)
    if args.json:
        _emit(result, True)
        return 0
    keys = ("false_alarms_per_10k", "median_delay", "p90_delay", "missed_rate")
    for scenario, detectors in result["scenarios"].items():
        print(scenario)
        for name, m in detectors.items():
            print(f"  {name:18s} " + "  ".join(f"{k}={m[k]}" for k in keys))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(
        _settings(args),
        n_in=args.n_in,
        n_drift=args.n_drift,
        drift_share=args.drift_share,
        rate=args.rate,
        n_after=args.n_after,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamscore", description="Streaming text scoring on Kafka.")
    p.add_argument("--log-level", dest="log_level", default=None, help="debug, info, warning (default info)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, kafka: bool = False, as_json: bool = False) -> None:
        sp.add_argument(
            "--registry", type=Path, default=None, help="model registry folder (default artifacts/)"
        )
        if kafka:
            sp.add_argument(
                "--bootstrap-servers",
                dest="bootstrap_servers",
                default=None,
                help="Kafka brokers host:port (env KAFKA_BOOTSTRAP_SERVERS); none: start an embedded broker",
            )
        if as_json:
            sp.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    sp = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    sp.add_argument("--port", type=int, default=9092)
    sp.add_argument("--verbose", action="store_true", help="show the broker's own log")
    sp.set_defaults(func=cmd_broker)

    sp = sub.add_parser("train", help="fit a model on labelled texts and register it")
    common(sp, as_json=True)
    sp.add_argument("--data", required=True, help="JSONL or CSV with text, label, split")
    sp.add_argument("--ood-label", default="oos", help="label of out-of-distribution rows (never trained on)")
    sp.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2")
    sp.add_argument(
        "--ood-strategy", default="energy", help="energy, msp, mahalanobis, relative_mahalanobis, knn"
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
        "--keep", type=float, default=0.95, help="share of in-distribution val texts the OOD gate passes"
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default=None)
    sp.add_argument("--force", action="store_true", help="promote even if it does not beat CURRENT")
    sp.add_argument("--no-promote", action="store_true", help="register without promoting")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="metrics of a model on labelled texts")
    common(sp, as_json=True)
    sp.add_argument("--model", default=None, help="version or artifact folder (default CURRENT)")
    sp.add_argument("--data", required=True)
    sp.add_argument("--split", default="test", help="rows of this split ('any' for all)")
    sp.add_argument("--ood-label", default="oos")
    sp.add_argument("--device", default=None)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("worker", help="run the scoring worker (Faust)")
    common(sp, kafka=True)
    sp.add_argument("--model", default=None)
    sp.add_argument("--device", default=None)
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    sp.add_argument("--batch-wait", dest="batch_wait_s", type=float, default=None, help="seconds")
    sp.add_argument("--max-text-chars", dest="max_text_chars", type=int, default=None)
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument("--scored-topic", dest="scored_topic", default=None)
    sp.add_argument("--dlq-topic", dest="dlq_topic", default=None)
    sp.add_argument("--signals-topic", dest="signals_topic", default=None)
    sp.add_argument("--alerts-topic", dest="alerts_topic", default=None)
    sp.add_argument("--drift-state-topic", dest="drift_state_topic", default=None)
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
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("produce", help="send texts (JSONL or plain lines) to the input topic")
    common(sp, kafka=True)
    sp.add_argument("file", help="JSONL file, or - for stdin")
    sp.add_argument("--topic", default=None)
    sp.set_defaults(func=cmd_produce)

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
        "--shift", required=True, help="shifted texts (its --ood-label rows if it has any, else all)"
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.log_level:
        # aiokafka and sentence-transformers narrate every connection and load at INFO.
        for noisy in ("aiokafka", "sentence_transformers", "kafka"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ArtifactError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"streamscore {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
