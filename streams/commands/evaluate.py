"""``streamscore evaluate``: a model's metrics on labelled texts."""

from __future__ import annotations

import argparse
import sys
import time

from streamscore.models.backends import BACKENDS
from streamscore.streams.commands.base import Command, cache_dir, column_options, columns_of, common, emit


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, as_json=True)
    sp.add_argument("--model", default=None, help="version or artifact folder (default CURRENT)")
    sp.add_argument("--data", required=True, help="labelled texts: JSONL, CSV, TSV or Parquet (.gz too)")
    column_options(sp)
    sp.add_argument("--split", default="test", help="rows of this split ('any' for all)")
    sp.add_argument("--backend", default="torch", choices=BACKENDS, help="embedder runtime")
    sp.add_argument("--ood-label", default="oos")
    sp.add_argument("--device", default=None)


def run(args: argparse.Namespace) -> int:
    from streamscore.models.embedder import Embedder
    from streamscore.models.registry import Registry
    from streamscore.training.data import read_labelled
    from streamscore.training.evaluate import evaluate_rows

    artifact = Registry(args.registry).load(args.model)
    labelled = read_labelled(args.data, columns_of(args))
    if labelled.split_made:
        print(labelled.split_made, file=sys.stderr)
    rows = labelled.of_split(args.split)
    embedder = Embedder.load(
        artifact.embedder_name, args.device or "auto", backend=args.backend, cache_dir=cache_dir()
    )
    t = time.perf_counter()
    withheld = frozenset(artifact.manifest.get("training_data", {}).get("withheld", []))
    metrics = evaluate_rows(
        artifact,
        embedder,
        rows,
        args.ood_label,
        progress=sys.stderr.isatty(),  # a bar on a terminal; the lines around it otherwise
        near_labels=withheld,
    )
    metrics["seconds"] = round(time.perf_counter() - t, 2)
    metrics["split"] = args.split
    metrics["split_made"] = labelled.split_made
    metrics["backend"] = args.backend
    emit(metrics, args.json)
    return 0


COMMAND = Command(
    name="evaluate",
    help="metrics of a model on labelled texts",
    options=options,
    run=run,
    examples=(
        "streamscore evaluate --data datasets/clinc150/clinc150_full.jsonl --json",
        "streamscore evaluate --data tickets.csv --text-field body --label-field category --split test",
    ),
)
