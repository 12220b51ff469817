"""``streamscore topics``: the topics streamscore uses, as the settings want them and as they are."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

from streamscore.streams.commands.base import Command, common, on_broker, settings_of, show
from streamscore.streams.kafka.security import client_options
from streamscore.streams.kafka.topics import (
    admin_client,
    describe_configs,
    ensure_topics,
    partitions_of,
    topic_configs,
    topic_plan,
)
from streamscore.streams.settings import Settings

ROLES = ("input", "scored", "dlq", "signals", "alerts", "drift_state", "episodes")
ONE_PARTITION = ("signals", "drift_state")  # streams/kafka/topics.py: one_partition_topics


@dataclass
class TopicState:
    """One topic: what the settings ask for and what the cluster has (None: it does not exist)."""

    name: str
    role: str
    want_partitions: int
    want_replication: int
    want_configs: dict[str, str]
    partitions: int | None = None
    replication: int | None = None
    configs: dict[str, str] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """What differs from the settings, in words; empty when the topic is as wanted."""
        if self.partitions is None:
            return ["missing: streamscore topics --create makes it"]
        out = []
        if self.partitions < self.want_partitions:
            out.append(f"{self.partitions} partitions, settings want {self.want_partitions}")
        elif self.role in ONE_PARTITION and self.partitions > 1:
            out.append(
                f"{self.partitions} partitions: the drift agent needs exactly 1 (the worker refuses to start)"
            )
        if self.replication is not None and self.replication < self.want_replication:
            out.append(f"replication factor {self.replication}, settings want {self.want_replication}")
        for key, value in self.want_configs.items():
            if self.configs.get(key) != value:
                out.append(f"{key}={self.configs.get(key)}, settings want {value}")
        return out

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "exists": self.partitions is not None, "problems": self.problems}


def wanted(settings: Settings) -> list[TopicState]:
    plan, configs = topic_plan(settings), topic_configs(settings)
    names = [getattr(settings, f"{role}_topic") for role in ROLES]
    return [
        TopicState(name, role, plan[name], settings.replication_factor, configs.get(name, {}))
        for role, name in zip(ROLES, names, strict=True)
    ]


async def describe(bootstrap: str, settings: Settings, options: dict[str, Any]) -> list[TopicState]:
    """The topics of the settings as the cluster has them."""
    states = wanted(settings)
    async with admin_client(bootstrap, options) as admin:
        found = await partitions_of(admin, [s.name for s in states])
        present = [s for s in states if s.name in found]
        for state in present:
            parts = found[state.name]
            state.partitions = len(parts)
            state.replication = min((len(p["replicas"]) for p in parts), default=0)
        configs = await describe_configs(admin, [s.name for s in present]) if present else {}
        for state in present:
            state.configs = configs.get(state.name) or {}
    return states


async def create_missing(bootstrap: str, settings: Settings, options: dict[str, Any]) -> None:
    await ensure_topics(
        bootstrap,
        topic_plan(settings),
        options,
        timeout_s=settings.connect_timeout_s,
        configs=topic_configs(settings),
        replication_factor=settings.replication_factor,
    )


def table(states: list[TopicState]) -> str:
    """A plain table for a person: one line per topic, its problems last."""
    rows = [("TOPIC", "ROLE", "PARTITIONS", "REPLICATION", "STATE")]
    for s in states:
        have = lambda v, want: f"{v if v is not None else '-'}/{want}"  # noqa: E731
        rows.append(
            (
                s.name,
                s.role,
                have(s.partitions, s.want_partitions),
                have(s.replication, s.want_replication),
                "; ".join(s.problems) or "ok",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows
    )


# ------------------------------------------------------------------ the command


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True, as_json=True)
    sp.add_argument(
        "--create", action="store_true", help="create the missing topics first (existing ones are left alone)"
    )
    sp.add_argument("--partitions", type=int, default=None, help="partitions of the input and scored topics")


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    options = client_options(settings)

    async def check(bootstrap: str) -> tuple[str, list[TopicState]]:
        if args.create:
            await create_missing(bootstrap, settings, options)
        return bootstrap, await describe(bootstrap, settings, options)

    bootstrap, states = on_broker(settings, check)
    show(args, {"bootstrap_servers": bootstrap, "topics": [s.as_json() for s in states]}, table(states))
    # Exit 1 when a topic is missing or not as the settings want, so a deploy script can check.
    return 1 if any(s.problems for s in states) else 0


COMMAND = Command(
    name="topics",
    help="show the topics streamscore uses, as the settings want them and as they are; --create makes them",
    description="On a cluster set STREAMSCORE_REPLICATION_FACTOR=3 STREAMSCORE_MIN_INSYNC_REPLICAS=2 "
    "first. Exit code 1 when a topic is missing or differs from the settings.",
    options=options,
    run=run,
    examples=("streamscore topics --bootstrap-servers localhost:9092 --create --partitions 6",),
)
