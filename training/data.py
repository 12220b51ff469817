"""Records from JSONL, CSV or Parquet files (JSONL and CSV may be gzipped), and labelled rows.

``read_records`` is shared by training and replay: it yields every record with its line (or
row) number and reports a line that is not a record instead of raising, so a caller can name
the line. ``load_rows`` reads ``text``, ``label`` and ``split`` for training.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "d.jsonl")
>>> _ = open(path, "w").write('{"text": "hi", "label": "greet", "split": "train"}\\n{oops\\n')
>>> [(n, type(r).__name__) for n, r in read_records(path)]
[(1, 'dict'), (2, 'BadRecord')]
>>> load_rows(path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
training.data.DataError: ...d.jsonl:2: not valid JSON (...)
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    text: str
    label: str
    split: str


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class BadRecord:
    """A line that holds no record: ``reason`` is ``invalid_json`` or ``not_an_object``."""

    reason: str
    detail: str
    raw: bytes  # the line as read, so it can still be sent on to be dead-lettered


FORMATS = ("jsonl", "csv", "tsv", "parquet")
# The CLINC150 copy the repository ships (datasets/clinc150, with its licence): demo, bench, tests.
SHIPPED_CLINC150 = Path(__file__).resolve().parents[1] / "datasets" / "clinc150" / "clinc150_full.jsonl"


def file_format(path: str | Path) -> str:
    """``jsonl``, ``csv``, ``tsv`` or ``parquet`` from the file name (``.gz`` looked through)."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    return "jsonl"  # .jsonl, .ndjson, .json (one object per line)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
    """``(line, record)`` for every record of ``path``: the line number for JSONL and CSV (where a
    CSV record starts), the 1-based row number for Parquet. Blank JSONL lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _parquet_records(path)
        return
    with _open_text(path) as f:
        if fmt in ("csv", "tsv"):
            reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
            start = 2  # line 1 is the header
            for rec in reader:
                yield start, rec
                start = reader.line_num + 1
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                yield lineno, BadRecord("invalid_json", f"not valid JSON ({exc})", line.encode("utf-8"))
                continue
            if not isinstance(rec, dict):
                yield (
                    lineno,
                    BadRecord(
                        "not_an_object", f"expected a JSON object, got {type(rec).__name__}", line.encode()
                    ),
                )
                continue
            yield lineno, rec


def _parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise DataError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec


def count_records(path: str | Path) -> int:
    """How many records ``read_records`` will yield (Parquet: from the footer, no scan)."""
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return sum(1 for _ in read_records(path))


def load_rows(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[Row]:
    """Read labelled rows; a row without text or label is an error that names its line."""
    path = Path(path)
    rows = []
    for lineno, rec in read_records(path):
        if isinstance(rec, BadRecord):
            raise DataError(f"{path}:{lineno}: {rec.detail}")
        text, label = rec.get(text_field), rec.get(label_field)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: no '{text_field}' text")
        if label is None or label == "":
            raise DataError(f"{path}:{lineno}: no '{label_field}'")
        split = rec.get("split") or "all"
        rows.append(Row(text=text, label=str(label), split=str(split)))
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


@dataclass
class Splits:
    """Rows for fitting (``train``), threshold setting (``val``) and OOD rows kept aside."""

    train: list[Row]
    val: list[Row]
    val_ood: list[Row]
    val_source: str  # "val rows" or "held out from train"


def training_splits(
    rows: list[Row], ood_label: str = "oos", val_fraction: float = 0.1, seed: int = 0
) -> Splits:
    """Split rows: OOD-labelled rows never train; ``val`` rows validate, else a stratified hold-out.

    Rows with split ``train`` are the training pool; when there are none, rows whose split is
    not ``val`` or ``test`` are (datasets shipped with one split say ``all``).
    """
    in_dist = [r for r in rows if r.label != ood_label]
    pool = [r for r in in_dist if r.split == "train"]
    if not pool:
        pool = [r for r in in_dist if r.split not in ("val", "test")]
    val = [r for r in in_dist if r.split == "val"]
    val_ood = [r for r in rows if r.label == ood_label and r.split == "val"]
    if val:
        return Splits(pool, val, val_ood, "val rows")
    by_label: dict[str, list[Row]] = defaultdict(list)
    for r in pool:
        by_label[r.label].append(r)
    rng = random.Random(seed)
    train, held = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_val = int(round(len(group) * val_fraction)) if len(group) >= 5 else 0
        held.extend(group[:n_val])
        train.extend(group[n_val:])
    return Splits(train, held, val_ood, "held out from train")
