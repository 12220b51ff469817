"""``streamscore themes``: the themes among the foreign texts of a time or offset range of the input topic.

For a person investigating after the fact: the range of ``texts`` is read without a consumer
group (live workers are not disturbed), scored with the chosen model, and the texts it flags as
OOD are grouped with :func:`models.themes.find_themes`, the texts it passes serving as the
background that keywords stand out from. At most ``max_texts`` foreign texts are clustered (a
seeded uniform sample of them beyond that), so memory stays bounded over any range.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

from streamscore.models.scoring import Scorer
from streamscore.models.themes import Background, find_themes
from streamscore.schemas.messages import InputText, Origin, parse_input
from streamscore.streams.commands.base import (
    Command,
    at_least,
    common,
    on_broker,
    range_and_model,
    show,
    window_options,
)
from streamscore.streams.commands.progress import bar, say
from streamscore.streams.kafka.ranges import PartitionRange, Window, plan_ranges, read_window
from streamscore.streams.kafka.security import client_options
from streamscore.streams.settings import Settings


@dataclass
class ThemesResult:
    input_topic: str
    model_version: str
    window: dict[str, Any]
    partitions: list[PartitionRange]
    texts: int = 0  # valid texts read
    not_texts: int = 0  # messages that are not valid texts (the worker dead-letters them)
    foreign: int = 0  # texts the model flagged as OOD
    clustered: int = 0
    themes: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "input_topic": self.input_topic,
            "model_version": self.model_version,
            "window": self.window,
            "texts": self.texts,
            "not_texts": self.not_texts,
            "foreign": self.foreign,
            "clustered": self.clustered,
            "themes": self.themes,
            "summary": self.summary,
            "seconds": round(self.seconds, 3),
        }


def describe(result: ThemesResult) -> str:
    """What a person reads: the counts, then each theme with its keywords and examples."""
    lines = [
        f"{result.texts} texts in the range ({result.not_texts} not valid texts), {result.foreign} "
        f"foreign by {result.model_version}: {result.summary}"
    ]
    for i, t in enumerate(result.themes, 1):
        near = f"; nearest known label {t['nearest_label']}" if t.get("nearest_label") else ""
        lines.append(
            f"  theme {i}: {t['size']} texts ({t['share']:.0%} of the foreign), {', '.join(t['keywords'])}{near}"
        )
        lines += [f"    «{text}»" for text in t["examples"]]
    return "\n".join(lines)


async def range_themes(
    settings: Settings,
    bootstrap: str,
    window: Window,
    scorer: Scorer,
    *,
    max_texts: int = 5_000,
    text_chars: int = 200,
    with_texts: bool = True,
    progress: bool = False,
) -> ThemesResult:
    """Themes among the texts of ``window`` in ``settings.input_topic`` that ``scorer`` flags;
    ``progress``: on stderr, the range as it is read, then the clustering."""
    window.check()
    began = time.monotonic()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **client_options(settings),
    )
    await consumer.start()
    try:
        ranges = await plan_ranges(consumer, settings.input_topic, window)
        result = ThemesResult(
            settings.input_topic,
            scorer.version,
            {k: v for k, v in vars(window).items() if v is not None},
            ranges,
        )
        total = sum(r.stop - r.start for r in ranges)
        reading = bar(total, f"themes ← {settings.input_topic}") if progress else None
        background = Background()
        texts: list[str] = []
        vectors: list[np.ndarray] = []
        rng = random.Random(0)
        async for records in read_window(consumer, settings.input_topic, ranges, window, settings.batch_size):
            parsed = [
                parse_input(
                    rec.value, Origin(rec.topic, rec.partition, rec.offset), timestamp_ms=rec.timestamp
                )
                for rec in records
            ]
            valid = [p.text for p in parsed if isinstance(p, InputText)]
            result.not_texts += len(parsed) - len(valid)
            if reading is not None:
                reading.update(len(records))
            if not valid:
                continue
            X = scorer.embedder.encode(valid)
            flagged = score_flags(scorer, X)
            result.texts += len(valid)
            for text, x, foreign in zip(valid, X, flagged, strict=True):
                if not foreign:
                    background.add(text)
                    continue
                result.foreign += 1
                if len(texts) < max_texts:  # reservoir sampling: each foreign text equally likely
                    texts.append(text)
                    vectors.append(x)
                else:
                    j = rng.randrange(result.foreign)
                    if j < max_texts:
                        texts[j], vectors[j] = text, x
    finally:
        await consumer.stop()
    if reading is not None:
        reading.close()
        say("themes")(f"grouping {len(texts):,} of {result.foreign:,} foreign texts into themes")
    result.clustered = len(texts)
    art = scorer.artifact
    report = find_themes(
        texts,
        np.array(vectors).reshape(len(texts), -1),
        background,
        label_names=art.head.labels,
        label_centres=art.label_centres,
    )
    result.summary = report.summary
    for theme in report.themes:
        shown = theme.as_json()
        shown["examples"] = [e[:text_chars] for e in shown["examples"]] if with_texts else []
        result.themes.append(shown)
    result.seconds = time.monotonic() - began
    return result


def score_flags(scorer: Scorer, X: np.ndarray) -> np.ndarray:
    """``is_ood`` of each row, as the worker decides it."""
    art = scorer.artifact
    return np.asarray(art.ood.score(X, art.head) > art.ood_threshold)


# ------------------------------------------------------------------ the command


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, kafka=True, as_json=True)
    window_options(sp)
    sp.add_argument("--model", default=None)
    sp.add_argument("--device", default=None)
    sp.add_argument("--input-topic", dest="input_topic", default=None)
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    sp.add_argument(
        "--max-texts",
        type=at_least(10),
        default=5_000,
        help="foreign texts clustered at most (a uniform sample beyond)",
    )
    sp.add_argument(
        "--text-chars", type=int, default=200, help="example texts are cut to this many characters"
    )
    sp.add_argument(
        "--no-texts", action="store_true", help="keywords and counts only: no customer text in the output"
    )


def run(args: argparse.Namespace) -> int:
    settings, window, scorer = range_and_model(args)
    result = on_broker(
        settings,
        lambda bootstrap: range_themes(
            settings,
            bootstrap,
            window,
            scorer,
            max_texts=args.max_texts,
            text_chars=args.text_chars,
            with_texts=not args.no_texts,
            progress=True,
        ),
    )
    show(args, result.as_json(), describe(result))
    return 0


COMMAND = Command(
    name="themes",
    help="group the foreign texts of a time or offset range of the input topic into themes",
    description="Reads without a consumer group and scores the range with a chosen model; the texts it "
    "flags as OOD are clustered, each theme shown with its size, keywords and example texts. Times: "
    "ISO-8601, epoch ms, 'now' or -15m/-2h/-7d (write --from=-2h).",
    options=options,
    run=run,
    examples=(
        "streamscore themes --from=-1h --bootstrap-servers localhost:9092",
        "streamscore themes --from 2026-12-05T03:00:00Z --to 2026-12-05T04:00:00Z --no-texts --json",
    ),
)
