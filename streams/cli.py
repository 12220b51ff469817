"""``streamscore`` command line: ``main``, the global flags, logging and exit codes.

Each command is a module of ``streams/commands/`` that owns its flags, its run and its job.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from importlib import import_module
from typing import get_args

from streamscore.models.artifact import ArtifactError
from streamscore.streams.commands import COMMANDS
from streamscore.streams.commands.base import FAILURE, USAGE, CommandParser, Parser
from streamscore.streams.kafka.security import REFUSED_LOGINS, failure_message
from streamscore.streams.settings import LogLevel, Settings


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="streamscore", description="Streaming text scoring on Kafka.")
    p.add_argument("--version", action="version", version=f"streamscore {_version()}")
    levels = list(get_args(LogLevel))
    log_help = f"{', '.join(levels)} (default info)"
    p.add_argument("--log-level", dest="log_level", default=None, choices=levels, help=log_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    p.set_defaults(commands=sub.choices)
    for module in COMMANDS:
        command = import_module(f"streamscore.streams.commands.{module}").COMMAND
        sp = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog="examples:\n" + "\n".join(f"  {line}" for line in command.examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.options(sp)
        sp.add_argument(  # global flags work after the command too
            "--log-level", dest="log_level", default=argparse.SUPPRESS, choices=levels, help=log_help
        )
        sp.set_defaults(func=command.run)
    return p


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamscore")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
