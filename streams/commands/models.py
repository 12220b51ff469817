"""``streamscore models``: list the registered models; promote one or roll back CURRENT."""

from __future__ import annotations

import argparse

from streamscore.models.registry import Registry
from streamscore.streams.commands.base import Command, common, emit


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, as_json=True)
    sp.add_argument("action", nargs="?", choices=["list", "promote", "rollback"], default="list")
    sp.add_argument("version", nargs="?")


def run(args: argparse.Namespace) -> int:
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
        _changed(before, version, "promoted", args.json)
    elif args.action == "rollback":
        _changed(before, reg.rollback(), "rolled back", args.json)
    elif args.json:
        emit({"current": reg.current(), "versions": reg.describe()}, True)
    else:
        _list(reg)
    return 0


def _list(reg: Registry) -> None:
    rows = reg.describe()
    if not rows:
        print(f"no models in {reg.models_dir}")
    for row in rows:
        mark = "*" if row["current"] else " "
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in row["val"].items())
        print(f"{mark} {row['version']}  {row['created_at']}  {row['ood_strategy']:<20} {metrics}")


def _changed(before: str | None, current: str, what: str, as_json: bool) -> None:
    if as_json:
        emit({"before": before, "current": current, "action": what}, True)
    else:
        print(f"{what}: CURRENT {before} → {current}")


COMMAND = Command(
    name="models",
    help="list registered models; promote or roll back CURRENT",
    options=options,
    run=run,
    examples=("streamscore models", "streamscore models promote v0003", "streamscore models rollback"),
)
