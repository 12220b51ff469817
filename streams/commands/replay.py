"""``streamscore replay FILE``: historical rows → the input topic, paced, resumable, reproducible.

Each record of a JSONL, CSV or Parquet file (JSONL and CSV may be gzipped) becomes one input
message, checked with the worker's own validation (``schemas.parse_input``): a row the worker
would dead-letter is reported with its line number and not sent, unless ``send_malformed``
asks for it (to exercise the dead-letter path). Ids are kept, or made from the file name and
line, so the same file always gives the same ids.

Progress is checkpointed under ``<registry>/replay/`` as the first row the broker has not yet
confirmed. Ctrl-C waits for the rows in flight, saves the checkpoint and says how far it got;
``resume`` continues from there, so every row is sent exactly once. After a ``kill -9`` the
checkpoint is at most a second old and the rows after it are sent again: at least once, and the
ids let a consumer drop the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from streamscore.schemas.messages import (
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    Origin,
    Rejection,
    now_iso,
    parse_input,
    ts_to_ms,
)
from streamscore.streams.commands.base import Command, common, on_broker, settings_of, show
from streamscore.streams.commands.progress import bar
from streamscore.streams.kafka.security import client_options, unreachable
from streamscore.streams.settings import Settings
from streamscore.training.data import BadRecord, count_records, field_specs, read_records

FIELDS = ("id", "text", "ts", "source", "meta")
MAX_REPORTED = 100  # malformed lines listed one by one in the summary; all are counted


@dataclass(frozen=True)
class FieldMap:
    """Which column of the file holds each field of the input message.

    >>> FieldMap.parse(["text=Review Text", "id=review_id"]).text
    'Review Text'
    """

    id: str = "id"
    text: str = "text"
    ts: str = "ts"
    source: str = "source"
    meta: str = "meta"

    @classmethod
    def parse(cls, specs: list[str]) -> FieldMap:
        return cls(**field_specs(specs, FIELDS))


def _jsonable(value: Any) -> Any:
    """Parquet and CSV values JSON cannot hold as they are (datetimes, decimals, bytes)."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts_value(value: Any) -> Any:
    """A file's time value as the contract has it: ISO-8601 text or epoch milliseconds."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())  # CSV gives every value as text
    return value


def row_message(
    rec: dict[str, Any], line: int, fields: FieldMap, id_prefix: str, extra_meta: bool = True
) -> dict[str, Any]:
    """The input message for one record: mapped fields, an id made from ``line`` when the row has
    none, and (``extra_meta``) every other column in ``meta``.

    >>> row_message({"body": "hi", "stars": 5}, 7, FieldMap(text="body"), "reviews-")
    {'id': 'reviews-7', 'text': 'hi', 'meta': {'stars': 5}}
    """
    msg: dict[str, Any] = {}
    rid = rec.get(fields.id)
    if rid is None or rid == "":
        msg["id"] = f"{id_prefix}{line}"
    else:
        msg["id"] = str(rid) if isinstance(rid, int) and not isinstance(rid, bool) else rid
    if fields.text in rec:
        msg["text"] = rec[fields.text]
    for name in ("source", "ts"):
        value = rec.get(getattr(fields, name))
        if value is not None and value != "":
            msg[name] = _ts_value(value) if name == "ts" else value
    meta = rec.get(fields.meta)
    mapped = {getattr(fields, name) for name in FIELDS}
    extras = {k: v for k, v in rec.items() if k not in mapped} if extra_meta else {}
    if isinstance(meta, dict) or (meta in (None, "") and extras):
        msg["meta"] = {**extras, **(meta or {})}
    elif meta not in (None, ""):
        msg["meta"] = meta  # not an object: the contract check below rejects it
    return msg


def encode_message(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"), default=_jsonable).encode("utf-8")


@dataclass
class Pacer:
    """When each row is due, in seconds after the run starts: as fast as possible, ``rate`` rows
    per second, or the rows' own spacing in time divided by ``speed``.

    >>> p = Pacer(rate=10.0)
    >>> p.due(0, None), p.due(5, None)
    (0.0, 0.5)
    >>> p = Pacer(speed=2.0)
    >>> p.due(0, 1_000), p.due(1, 5_000), p.due(2, 3_000)
    (0.0, 2.0, 2.0)
    """

    rate: float | None = None
    speed: float | None = None
    first_ts: int | None = None
    last_due: float = 0.0

    def due(self, n_sent: int, ts_ms: int | None) -> float:
        if self.rate:
            return n_sent / self.rate
        if self.speed and ts_ms is not None:
            if self.first_ts is None:
                self.first_ts = ts_ms
            # Rows out of time order go out at once: the clock never runs backwards.
            self.last_due = max(self.last_due, (ts_ms - self.first_ts) / 1000.0 / self.speed)
        return self.last_due

    def describe(self) -> str:
        if self.rate:
            return f"{self.rate:g} rows/s"
        if self.speed:
            return f"original speed x {self.speed:g}"
        return "as fast as possible"


@dataclass
class ReplayOptions:
    topic: str = Settings.input_topic
    fields: FieldMap = field(default_factory=FieldMap)
    id_prefix: str | None = None  # None: the file name up to its first dot, and "-"
    keep_timestamps: bool = False  # Kafka timestamp = the row's ts
    rate: float | None = None
    speed: float | None = None
    skip: int = 0
    limit: int | None = None
    send_malformed: bool = False
    extra_meta: bool = True
    resume: bool = False
    max_in_flight: int = 10_000  # rows sent but not yet confirmed; bounds memory

    def check(self) -> None:
        if self.rate is not None and self.speed is not None:
            raise ValueError("--rate and --speed exclude each other: pick one way of pacing")
        if (self.rate is not None and self.rate <= 0) or (self.speed is not None and self.speed <= 0):
            raise ValueError("--rate and --speed must be positive")
        if self.skip < 0 or (self.limit is not None and self.limit < 0):
            raise ValueError("--skip and --limit cannot be negative")


@dataclass
class Checkpoint:
    """How far a replay got: the index of the first row not yet confirmed, and its options."""

    file: str
    size: int
    mtime_ns: int
    topic: str
    bootstrap: str
    options: dict[str, Any]
    end: int | None  # row index where the run stops (None: end of file)
    next_index: int
    next_line: int | None
    sent: int
    malformed: dict[str, int]
    updated_at: str = ""

    @staticmethod
    def path_for(state_dir: Path, file: Path, topic: str, bootstrap: str) -> Path:
        key = hashlib.sha256(f"{file.resolve()}\n{topic}\n{bootstrap}".encode()).hexdigest()[:16]
        return Path(state_dir) / "replay" / f"{file.name}.{key}.json"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.updated_at = now_iso()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)  # a crash mid-write never leaves half a checkpoint

    @classmethod
    def load(cls, path: Path, file: Path, topic: str) -> Checkpoint:
        if not path.is_file():
            raise ValueError(
                f"nothing to resume: no interrupted replay of {file} to {topic} (looked for {path}); "
                "run without --resume to start from the beginning"
            )
        ck = cls(**json.loads(path.read_text()))
        st = file.stat()
        if (st.st_size, st.st_mtime_ns) != (ck.size, ck.mtime_ns):
            raise ValueError(
                f"{file} changed since the interrupted replay (size or modification time differ), so "
                f"its line numbers may not match; delete {path} and replay without --resume"
            )
        return ck


def _options_to_json(opts: ReplayOptions) -> dict[str, Any]:
    keep = ("id_prefix", "keep_timestamps", "rate", "speed", "send_malformed", "extra_meta")
    return {"fields": asdict(opts.fields), **{k: getattr(opts, k) for k in keep}}


def _options_from_json(opts: ReplayOptions, saved: dict[str, Any]) -> ReplayOptions:
    return replace(opts, **{**saved, "fields": FieldMap(**saved["fields"])})


@dataclass
class ReplaySummary:
    file: str
    topic: str
    pacing: str
    keep_timestamps: bool
    sent: int = 0  # this run
    sent_before: int = 0  # by the interrupted runs this one resumed
    malformed: Counter[str] = field(default_factory=Counter)
    malformed_lines: list[dict[str, Any]] = field(default_factory=list)
    malformed_sent: int = 0  # malformed rows sent anyway (send_malformed)
    skipped: int = 0  # rows before the start (--skip, or already sent before a resume)
    first_line: int | None = None
    last_line: int | None = None
    seconds: float = 0.0
    complete: bool = False
    interrupted: bool = False
    error: str | None = None
    next_line: int | None = None
    checkpoint: str | None = None

    def note_malformed(self, line: int, problem: Rejection) -> None:
        self.malformed[problem.reason] += 1
        if len(self.malformed_lines) < MAX_REPORTED:
            self.malformed_lines.append({"line": line, "reason": problem.reason, "detail": problem.detail})

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["malformed"] = dict(self.malformed)
        out["sent_total"] = self.sent + self.sent_before
        out["rows_per_s"] = round(self.sent / self.seconds, 1) if self.seconds > 0 else None
        out["seconds"] = round(self.seconds, 3)
        return out


def _rows(path: Path, start: int, end: int | None) -> Iterator[tuple[int, int, dict[str, Any] | BadRecord]]:
    for index, (line, rec) in enumerate(read_records(path)):
        if end is not None and index >= end:
            return
        if index >= start:
            yield index, line, rec


@dataclass
class _InFlight:
    """Rows in file order, each with its delivery future (None: not sent), until confirmed."""

    confirmed: int  # index of the first row the broker has not confirmed
    rows: deque[tuple[int, int, asyncio.Future | None]] = field(default_factory=deque)

    def settle(self) -> None:
        """Move the confirmed mark past every leading row the broker has acknowledged."""
        while self.rows and (self.rows[0][2] is None or self.rows[0][2].done()):
            index, line, fut = self.rows[0]
            if fut is not None and fut.exception() is not None:
                raise RuntimeError(f"the broker did not confirm the row at line {line}: {fut.exception()!r}")
            self.rows.popleft()
            self.confirmed = index + 1

    def sent(self) -> int:
        """Rows sent and not yet confirmed."""
        return sum(1 for _, _, f in self.rows if f is not None)


async def _wait_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` (the pacing); False if ``stop`` was set meanwhile."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return not stop.is_set()


async def _started_producer(bootstrap: str, client_options: dict[str, Any] | None) -> Any:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=10,
        max_batch_size=262_144,
        **(client_options or {}),
    )
    try:
        await producer.start()
    except Exception as exc:
        await producer.stop()
        raise RuntimeError(unreachable(bootstrap, client_options, exc)) from exc
    return producer


def _where_to_start(
    opts: ReplayOptions, ck_path: Path, path: Path
) -> tuple[ReplayOptions, int, int | None, int, Counter[str]]:
    """Options, first and end row, rows sent and malformed before: from the checkpoint when
    resuming, else from the options."""
    if opts.resume:
        ck = Checkpoint.load(ck_path, path, opts.topic)
        return _options_from_json(opts, ck.options), ck.next_index, ck.end, ck.sent, Counter(ck.malformed)
    end = opts.skip + opts.limit if opts.limit is not None else None
    return opts, opts.skip, end, 0, Counter()


def _progress_bar(path: Path, start: int, end: int | None, topic: str) -> Any:
    total = count_records(path)
    total = max(0, min(total, end) if end is not None else total) - start
    return bar(total, f"replay → {topic}", unit="row")


async def replay_file(
    path: str | Path,
    bootstrap: str,
    opts: ReplayOptions,
    *,
    state_dir: Path,
    max_text_chars: int = MAX_TEXT_CHARS,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    progress: bool = False,
    stop: asyncio.Event | None = None,
    client_options: dict[str, Any] | None = None,
) -> ReplaySummary:
    """Send the rows of ``path`` to ``opts.topic``; ``stop`` set ends the run after the row in hand.
    ``client_options``: Kafka security options (streams/kafka/security.py)."""
    path = Path(path).resolve()
    opts.check()
    ck_path = Checkpoint.path_for(state_dir, path, opts.topic, bootstrap)
    opts, start, end, sent_before, malformed_before = _where_to_start(opts, ck_path, path)
    id_prefix = opts.id_prefix if opts.id_prefix is not None else path.name.split(".")[0] + "-"
    pacer = Pacer(opts.rate, opts.speed)
    summary = ReplaySummary(str(path), opts.topic, pacer.describe(), opts.keep_timestamps)
    summary.sent_before, summary.skipped = sent_before, start
    summary.malformed.update(malformed_before)
    stop = stop or asyncio.Event()

    bar = _progress_bar(path, start, end, opts.topic) if progress else None

    producer = await _started_producer(bootstrap, client_options)
    in_flight = _InFlight(confirmed=start)

    def checkpoint(next_line: int | None) -> Checkpoint:
        st = path.stat()
        return Checkpoint(
            str(path),
            st.st_size,
            st.st_mtime_ns,
            opts.topic,
            bootstrap,
            _options_to_json(replace(opts, id_prefix=id_prefix)),
            end,
            in_flight.confirmed,
            next_line,
            sent_before + summary.sent - in_flight.sent(),
            dict(summary.malformed),
        )

    began = time.monotonic()
    last_save = began
    exhausted = False
    try:
        rows = _rows(path, start, end)
        for index, line, rec in rows:
            if stop.is_set():
                break
            summary.first_line = summary.first_line or line
            summary.last_line = line
            key, value, ts_ms, problem = _prepare(
                rec, line, path, opts, id_prefix, max_text_chars, max_message_bytes
            )
            if problem is not None:
                summary.note_malformed(line, problem)
            if problem is not None and not opts.send_malformed:
                in_flight.rows.append((index, line, None))
            else:
                if not await _wait_unless_stopped(
                    stop, began + pacer.due(summary.sent, ts_ms) - time.monotonic()
                ):
                    break
                fut = await producer.send(
                    opts.topic, value=value, key=key, timestamp_ms=ts_ms if opts.keep_timestamps else None
                )
                in_flight.rows.append((index, line, fut))
                summary.sent += 1
                summary.malformed_sent += problem is not None
            if bar is not None:
                bar.update(1)
            if len(in_flight.rows) > opts.max_in_flight and in_flight.rows[0][2] is not None:
                await asyncio.wait([in_flight.rows[0][2]])
            in_flight.settle()
            now = time.monotonic()
            if now - last_save > 1.0:
                checkpoint(in_flight.rows[0][1] if in_flight.rows else None).save(ck_path)
                last_save = now
        else:
            exhausted = True
        # Wait for every row in flight, so the checkpoint marks exactly what the broker holds.
        pending = [f for _, _, f in in_flight.rows if f is not None]
        if pending:
            await asyncio.wait(pending, timeout=120)
        in_flight.settle()
        if in_flight.rows:
            summary.error = f"{len(in_flight.rows)} rows not confirmed by the broker within 120 s"
    except RuntimeError as exc:
        summary.error = str(exc)
    finally:
        await producer.stop()
        if bar is not None:
            bar.close()
    summary.seconds = time.monotonic() - began
    summary.complete = exhausted and summary.error is None and not in_flight.rows
    if summary.complete:
        ck_path.unlink(missing_ok=True)
    else:
        summary.interrupted = stop.is_set()
        summary.next_line = _line_of(path, in_flight.confirmed)
        checkpoint(summary.next_line).save(ck_path)
        summary.checkpoint = str(ck_path)
    return summary


def _prepare(
    rec: dict[str, Any] | BadRecord,
    line: int,
    path: Path,
    opts: ReplayOptions,
    id_prefix: str,
    max_text_chars: int,
    max_message_bytes: int,
) -> tuple[bytes | None, bytes, int | None, Rejection | None]:
    """``(key, value, Kafka timestamp, problem)`` for one record; problem None means good."""
    if isinstance(rec, BadRecord):
        return None, rec.raw.rstrip(b"\r\n"), None, Rejection(rec.reason, rec.detail)
    msg = row_message(rec, line, opts.fields, id_prefix, opts.extra_meta)
    value = encode_message(msg)
    key = str(msg["id"]).encode("utf-8")
    checked = parse_input(
        value,
        Origin(path.name, 0, line),
        max_text_chars=max_text_chars,
        max_message_bytes=max_message_bytes,
    )
    if isinstance(checked, Rejection):
        return key, value, None, checked
    ts_ms = ts_to_ms(checked.ts) if checked.ts is not None else None
    if opts.keep_timestamps and (ts_ms is None or ts_ms < 0):
        why = "no time" if ts_ms is None else "a time before 1970"
        problem = Rejection("missing_ts", f"--keep-timestamps needs a time on every row; this one has {why}")
        return key, value, None, problem
    return key, value, ts_ms, None


def _line_of(path: Path, index: int) -> int | None:
    """The line of the row at ``index`` (None past the end)."""
    for i, (line, _) in enumerate(read_records(path)):
        if i == index:
            return line
    return None


def install_interrupt(stop: asyncio.Event, say: Any = None) -> None:
    """First Ctrl-C: finish cleanly (rows in flight confirmed, checkpoint saved); second: abort."""
    loop = asyncio.get_running_loop()

    def first() -> None:
        stop.set()
        if say:
            say("stopping: waiting for the rows in flight to be confirmed (Ctrl-C again aborts)")
        loop.remove_signal_handler(signal.SIGINT)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, first)
        loop.add_signal_handler(signal.SIGTERM, first)


def describe(summary: ReplaySummary, file_arg: str, topic_arg: str | None = None) -> str:
    """The human summary printed at the end of a replay."""
    s = summary
    rate = f" ({s.sent / s.seconds:.0f}/s)" if s.seconds > 0 and s.sent else ""
    lines = [f"sent {s.sent} rows to {s.topic} in {s.seconds:.1f}s{rate}, pacing {s.pacing}"]
    if s.sent_before:
        lines[0] += f"; {s.sent_before} sent before the interruption, {s.sent + s.sent_before} in all"
    if s.skipped:
        lines.append(f"started at row {s.skipped + 1} ({s.skipped} rows skipped or already sent)")
    bad = sum(s.malformed.values())
    if bad:
        what = "sent anyway to be dead-lettered" if s.malformed_sent else "not sent"
        lines.append(
            f"{bad} malformed rows {what}: " + ", ".join(f"{k} {v}" for k, v in s.malformed.most_common())
        )
        for m in s.malformed_lines[:20]:
            lines.append(f"  line {m['line']}: {m['reason']}: {m['detail']}")
        if bad > 20:
            lines.append(f"  … {bad - 20} more (--json lists the first {MAX_REPORTED})")
    if s.error:
        lines.append(f"stopped: {s.error}")
    if not s.complete:
        where = f"line {s.next_line}" if s.next_line else "the end of the file"
        lines.append(
            f"{'interrupted' if s.interrupted else 'not finished'}: rows before {where} are confirmed; "
            f"`streamscore replay {file_arg}{f' --topic {topic_arg}' if topic_arg else ''} --resume` "
            f"continues from {where}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ the command


def options(sp: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
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

    async def send(bootstrap: str) -> ReplaySummary:
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

    summary = on_broker(settings, send)
    show(args, summary.as_json(), describe(summary, args.file, args.topic))
    return 0 if summary.complete else 130 if summary.interrupted else 1


COMMAND = Command(
    name="replay",
    help="send the rows of a JSONL, CSV or Parquet file to the input topic (paced, resumable)",
    description="Rows become input messages (docs/replay.md). Malformed rows are reported with "
    "their line numbers and not sent. Ctrl-C stops cleanly; --resume continues from there.",
    options=options,
    run=run,
    examples=(
        'streamscore replay reviews.csv --field text="Review Text" --rate 200 --bootstrap-servers localhost:9092',
    ),
)
