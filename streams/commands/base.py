"""What every command shares: its parser, the flags several take, and the "broker, run, print" step.

A command is a module of ``streams/commands/`` with a ``COMMAND``: its name, help and examples,
``options`` (its flags) and ``run`` (what it does with them). ``streams/cli.py`` puts them together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from streamscore.streams.settings import Settings

T = TypeVar("T")
USAGE, FAILURE = 2, 1  # exit codes: fix the command; it failed while running


@dataclass(frozen=True)
class Command:
    """One ``streamscore`` command: what ``--help`` says of it, its flags and its run."""

    name: str
    help: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: tuple[str, ...]
    description: str | None = None


# ------------------------------------------------------------------ parsers


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, and under ``--json`` also as the one JSON object on stdout."""

    def error(self, message: str) -> NoReturn:
        if "--json" in sys.argv[1:]:
            commands = self.get_default("commands") or {}
            command = self.prog.removeprefix("streamscore").strip() or next(
                (a for a in sys.argv[1:] if a in commands), None
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


# ------------------------------------------------------------------ flags several commands take


def common(sp: argparse.ArgumentParser, kafka: bool = False, as_json: bool = False) -> None:
    """``--registry``; with ``kafka`` the broker's flags; with ``as_json`` ``--json``."""
    sp.add_argument("--registry", type=Path, default=None, help="model registry folder (default artifacts/)")
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


def column_options(sp: argparse.ArgumentParser) -> None:
    """Where a labelled file keeps its text, label and split (train, evaluate)."""
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


def columns_of(args: argparse.Namespace) -> Any:
    """The columns that ``column_options`` named."""
    from streamscore.training.data import Columns

    return Columns.parse(args.field, text=args.text_field, label=args.label_field, split=args.split_field)


def window_options(sp: argparse.ArgumentParser, lateness: bool = False) -> None:
    """A time or offset range of a topic (rescore, themes); ``window_of`` reads it."""
    sp.add_argument("--from", dest="from_time", default=None, help="start time (inclusive)")
    sp.add_argument("--to", dest="to_time", default=None, help="end time (exclusive; default now)")
    if lateness:
        sp.add_argument(
            "--lateness",
            type=float,
            default=0.0,
            help="seconds of record time to read past --to, for records written out of time order",
        )
    sp.add_argument("--from-offset", default=None, help="N, or P=N,P=N per partition (inclusive)")
    sp.add_argument("--to-offset", default=None, help="N, or P=N,P=N per partition (exclusive)")


def window_of(args: argparse.Namespace) -> Any:
    """The range that ``window_options`` named, checked."""
    from streamscore.streams.kafka.ranges import Window, parse_offsets, parse_time

    now = int(time.time() * 1000)
    window = Window(
        from_ms=parse_time(args.from_time, now) if args.from_time else None,
        to_ms=parse_time(args.to_time, now) if args.to_time else now if args.from_time else None,
        from_offsets=parse_offsets(args.from_offset) if args.from_offset else None,
        to_offsets=parse_offsets(args.to_offset) if args.to_offset else None,
        lateness_ms=int(getattr(args, "lateness", 0.0) * 1000),
    )
    window.check()
    return window


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least``.

    >>> at_least(10)("12")
    12
    >>> at_least(10)("5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '5' is not a whole number of at least 10
    """

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {least}")
        return value

    return whole


count = at_least(1)


# ------------------------------------------------------------------ settings, broker, run, print


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings, with every flag that names one laid over the environment's."""
    names = Settings.__dataclass_fields__
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return Settings.from_env(**overrides)


def cache_dir() -> Path:
    """The settings' ``cache_dir``: where an embedder keeps its saved trace and ONNX exports."""
    return Settings.from_env().cache_dir


def range_and_model(args: argparse.Namespace) -> tuple[Settings, Any, Any]:
    """For a command that scores a range of the input topic (rescore, themes): its settings, the
    checked range and the model. The broker and the range are checked first: loading a model
    takes seconds, and a user who forgot the broker should not wait for them."""
    from streamscore.streams.kafka.broker import require_broker
    from streamscore.streams.worker.run import load_scorer

    settings = settings_of(args)
    require_broker(settings.bootstrap_servers, settings.embedded_broker)
    window = window_of(args)
    return settings, window, load_scorer(settings)


def on_broker(settings: Settings, job: Callable[[str], Coroutine[Any, Any, T]]) -> T:
    """Run ``job(bootstrap)`` on the settings' brokers, or on a throwaway embedded one (``--embedded``)."""
    from streamscore.streams.kafka.broker import bootstrap_or_embedded

    with bootstrap_or_embedded(settings.bootstrap_servers, settings.embedded_broker) as bootstrap:
        return asyncio.run(job(bootstrap))


def emit(obj: dict[str, Any], as_json: bool) -> None:
    """``--json``: exactly one JSON object as the last line of stdout; else readable lines."""
    if as_json:
        print(json.dumps(obj, sort_keys=True), flush=True)
        return
    for key, value in obj.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{key:>18}: {value}")


def show(args: argparse.Namespace, as_json: dict[str, Any], text: str) -> None:
    """A result: one JSON object under ``--json``, else the readable text."""
    if getattr(args, "json", False):
        emit(as_json, True)
    else:
        print(text, flush=True)
