"""Records from JSONL, CSV or Parquet files (JSONL and CSV may be gzipped), and labelled rows.

``read_records`` is shared by training and replay: it yields every record with its line (or
row) number and reports a line that is not a record instead of raising, so a caller can name
the line. ``read_labelled`` reads the text, label and split columns (``Columns``) for training.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "d.jsonl")
>>> _ = open(path, "w").write('{"text": "hi", "label": "greet", "split": "train"}\\n{oops\\n')
>>> [(n, type(r).__name__) for n, r in read_records(path)]
[(1, 'dict'), (2, 'BadRecord')]
>>> load_rows(path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamscore.training.data.DataError: ...d.jsonl:2: not valid JSON (...)
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
    if path.is_dir():
        raise DataError(f"{path} is a directory: give one data file (JSONL, CSV, TSV or Parquet)")
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


@dataclass(frozen=True)
class Columns:
    """Which column of a labelled file holds the text, the label and the split.

    >>> Columns.parse(["text=body", "label=category"])
    Columns(text='body', label='category', split='split')
    """

    text: str = "text"
    label: str = "label"
    split: str = "split"

    @classmethod
    def parse(cls, specs: list[str], **named: str | None) -> Columns:
        """From ``--field FIELD=COLUMN`` specs and ``--text-field`` style options (None: unset)."""
        changes = {k: v for k, v in named.items() if v}
        return cls(**(changes | field_specs(specs, ("text", "label", "split"))))


def field_specs(specs: list[str], fields: tuple[str, ...]) -> dict[str, str]:
    """``--field FIELD=COLUMN`` specs as {field: column}; train, evaluate and replay share the form.

    >>> field_specs(["text=Review Text"], ("id", "text"))
    {'text': 'Review Text'}
    """
    out = {}
    for spec in specs:
        name, sep, column = spec.partition("=")
        if not sep or name not in fields or not column:
            raise ValueError(f"--field {spec!r}: expected FIELD=COLUMN, FIELD one of {', '.join(fields)}")
        out[name] = column
    return out


SPLIT_NAMES = ("train", "val", "test")
MADE_SPLIT = (0.8, 0.1, 0.1)  # train, val, test shares of each label when a file has no split
MADE_SPLIT_SEED = 0  # fixed, so that train and evaluate make the same split of the same file


@dataclass
class Labelled:
    """A labelled file's rows and, when the file had no split, how one was made."""

    rows: list[Row]
    split_made: str | None = None

    def of_split(self, split: str | None) -> list[Row]:
        """The rows of ``split`` (``None`` or ``any``: all); none is an error naming the splits there are.

        >>> Labelled([Row("a", "x", "train"), Row("b", "x", "test")]).of_split("test")
        [Row(text='b', label='x', split='test')]
        >>> Labelled([Row("a", "x", "train")]).of_split("val")
        Traceback (most recent call last):
        ...
        ValueError: no rows with split 'val' (there are: train); pass --split any for all
        """
        rows = [r for r in self.rows if split in (None, "any") or r.split == split]
        if not rows:
            have = ", ".join(sorted({r.split for r in self.rows}))
            raise ValueError(f"no rows with split {split!r} (there are: {have}); pass --split any for all")
        return rows


def read_labelled(path: str | Path, columns: Columns | None = None) -> Labelled:
    """Read labelled rows; a missing column or an unusable row is an error that names it.

    A file without a split column (or with no ``train``/``val``/``test`` in it) gets a stratified
    80/10/10 split, the same one every time, so ``evaluate --split test`` sees rows that
    ``train`` did not fit on.
    """
    path, cols = Path(path), columns or Columns()
    rows: list[Row] = []
    for lineno, rec in read_records(path):
        if isinstance(rec, BadRecord):
            raise DataError(f"{path}:{lineno}: {rec.detail}")
        if not rows:
            _check_columns(path, rec, cols)
        text, label = rec.get(cols.text), rec.get(cols.label)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: no '{cols.text}' text")
        if label is None or label == "":
            raise DataError(f"{path}:{lineno}: no '{cols.label}'")
        split = rec.get(cols.split) or "all"
        rows.append(Row(text=text, label=str(label), split=str(split)))
    if not rows:
        raise DataError(f"{path} holds no rows")
    if any(r.split in SPLIT_NAMES for r in rows):
        return Labelled(rows)
    made = stratified_split(rows)
    counts = {name: sum(r.split == name for r in made) for name in SPLIT_NAMES}
    note = (
        f"{path.name} has no '{cols.split}' column with train/val/test: made a stratified split by "
        f"'{cols.label}' ({counts['train']} train, {counts['val']} val, {counts['test']} test; the "
        "same on every run)"
    )
    return Labelled(made, note)


def load_rows(path: str | Path, columns: Columns | None = None) -> list[Row]:
    """The rows of :func:`read_labelled`."""
    return read_labelled(path, columns).rows


def _check_columns(path: Path, rec: dict[str, Any], cols: Columns) -> None:
    missing = [c for c in (cols.text, cols.label) if c not in rec]
    if missing:
        found = ", ".join(repr(k) for k in rec) or "none"
        field = "text" if cols.text in missing else "label"
        raise DataError(
            f"{path} has no column {missing[0]!r} (its columns: {found}); "
            f"name yours with --field {field}=COLUMN"
        )


def stratified_split(rows: list[Row]) -> list[Row]:
    """``rows`` with a split each: per label 80% train, 10% val, 10% test (a label of fewer than
    5 rows trains only), in a seeded order.

    >>> from collections import Counter
    >>> rows = [Row(f"t{i}", "ab"[i % 2], "all") for i in range(40)]
    >>> sorted(Counter(r.split for r in stratified_split(rows)).items())
    [('test', 4), ('train', 32), ('val', 4)]
    """
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_label[r.label].append(i)
    split_of: dict[int, str] = {}
    rng = random.Random(MADE_SPLIT_SEED)
    for label in sorted(by_label):
        idx = by_label[label][:]
        rng.shuffle(idx)
        n_held = max(1, round(len(idx) * MADE_SPLIT[1])) if len(idx) >= 5 else 0
        for k, i in enumerate(idx):
            split_of[i] = "val" if k < n_held else "test" if k < 2 * n_held else "train"
    return [Row(r.text, r.label, split_of[i]) for i, r in enumerate(rows)]


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
