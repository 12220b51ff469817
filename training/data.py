"""Labelled text rows from JSONL or CSV (optionally gzipped): ``text``, ``label``, ``split``.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "d.jsonl")
>>> _ = open(path, "w").write('{"text": "hi", "label": "greet", "split": "train"}\\n')
>>> load_rows(path)[0]
Row(text='hi', label='greet', split='train')
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    text: str
    label: str
    split: str


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    name = path.name.removesuffix(".gz")
    with _open_text(path) as f:
        if name.endswith(".csv"):
            for lineno, rec in enumerate(csv.DictReader(f), start=2):
                yield lineno, rec
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, rec


def load_rows(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[Row]:
    """Read labelled rows; a row without text or label is an error that names its line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    rows = []
    for lineno, rec in _records(path):
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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
