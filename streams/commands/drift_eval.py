"""``streamscore drift-eval``: false alarms and detection delays of a model's drift detectors."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamscore.models.artifact import ArtifactError
from streamscore.streams.commands.base import Command, cache_dir, common, show
from streamscore.streams.commands.progress import say


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, as_json=True)
    sp.add_argument("--model", default=None)
    sp.add_argument("--in", dest="in_file", required=True, help="held-out in-distribution texts")
    sp.add_argument("--in-split", default="test", help="rows of --in with this split ('any' for all)")
    sp.add_argument(
        "--shift",
        required=True,
        action="append",
        help="shifted texts (its --ood-label rows if it has any, else all); repeat it for a table per data set",
    )
    sp.add_argument("--shift-split", default="any")
    sp.add_argument("--ood-label", default="oos")
    sp.add_argument("--seeds", type=int, default=10, help="repetitions of each scenario")
    sp.add_argument("--device", default=None)


def run(args: argparse.Namespace) -> int:
    from streamscore.models.embedder import Embedder
    from streamscore.models.registry import Registry
    from streamscore.training.drift_eval import drift_eval, load_signals, table

    artifact = Registry(args.registry).load(args.model)
    if artifact.drift is None:
        raise ArtifactError(
            f"model {artifact.version} has no drift calibration: retrain it with `streamscore train`"
        )
    embedder = Embedder.load(artifact.embedder_name, args.device or "auto", cache_dir=cache_dir())
    cache = Path(args.registry) / "cache"
    ins = load_signals(artifact, embedder, args.in_file, cache, args.in_split, args.ood_label, want_ood=False)
    shifts = {
        Path(path).stem: load_signals(
            artifact, embedder, path, cache, args.shift_split, args.ood_label, want_ood=True
        )
        for path in args.shift
    }
    result = drift_eval(artifact, ins, shifts, seeds=args.seeds, say=say("drift-eval"))
    show(args, result, table(result))
    return 0


COMMAND = Command(
    name="drift-eval",
    help="false alarms and detection delays of the drift detectors",
    options=options,
    run=run,
    examples=(
        "streamscore drift-eval --in datasets/clinc150/clinc150_full.jsonl "
        "--shift datasets/clinc150/clinc150_full.jsonl --json",
    ),
)
