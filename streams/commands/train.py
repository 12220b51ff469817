"""``streamscore train``: fit a model on labelled texts and register it."""

from __future__ import annotations

import argparse
from typing import Any, get_args

from streamscore.models.drift.calibration import EmbeddingTest, LabelTest
from streamscore.models.ood import KEEP_IN_DIST, STRATEGIES
from streamscore.streams.commands.base import Command, cache_dir, column_options, columns_of, common, emit
from streamscore.training.fit import TrainConfig


def options(sp: argparse.ArgumentParser) -> None:
    common(sp, as_json=True)
    sp.add_argument("--data", required=True, help="labelled texts: JSONL, CSV, TSV or Parquet (.gz too)")
    column_options(sp)
    sp.add_argument("--ood-label", default="oos", help="label of out-of-distribution rows (never trained on)")
    sp.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2")
    sp.add_argument(
        "--ood-strategy",
        default=TrainConfig.ood_strategy,
        choices=STRATEGIES,
        metavar="STRATEGY",
        help=f"how far from the training data a text lies: {', '.join(STRATEGIES)} (docs/models.md)",
    )
    sp.add_argument(
        "--drift-label-test",
        default=TrainConfig.drift_label_test,
        choices=get_args(LabelTest),
        help="mix: chi-square of the recent label mix, every message (default); window: G-test of 500",
    )
    sp.add_argument(
        "--drift-embedding-test",
        default=TrainConfig.drift_embedding_test,
        choices=get_args(EmbeddingTest),
        help="centre+spread (default): window mean and each text's distance; centre: window mean only",
    )
    sp.add_argument(
        "--withhold",
        default=None,
        metavar="LABEL,LABEL",
        help="keep these labels out of training; evaluate then scores them as near-OOD (new, similar intents)",
    )
    sp.add_argument(
        "--head-c",
        type=float,
        default=None,
        help="inverse L2 strength of the head (default: chosen on validation)",
    )
    sp.add_argument(
        "--finetune-epochs",
        type=float,
        default=TrainConfig.finetune_epochs,
        help="epochs of encoder fine-tuning before the head is fitted (0: frozen encoder, fastest)",
    )
    sp.add_argument(
        "--keep",
        type=float,
        default=KEEP_IN_DIST,
        help="share of in-distribution val texts the OOD gate passes",
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default=None)
    sp.add_argument("--force", action="store_true", help="promote even if it does not beat CURRENT")
    sp.add_argument("--no-promote", action="store_true", help="register without promoting")


def run(args: argparse.Namespace) -> int:
    from streamscore.models.registry import Registry
    from streamscore.training.fit import train

    cfg = TrainConfig(
        ood_label=args.ood_label,
        embedder=args.embedder,
        ood_strategy=args.ood_strategy,
        withhold=tuple(x.strip() for x in (args.withhold or "").split(",") if x.strip()),
        head_c=args.head_c,
        finetune_epochs=args.finetune_epochs,
        keep_in_dist=args.keep,
        seed=args.seed,
        device=args.device or "auto",
        drift_label_test=args.drift_label_test,
        drift_embedding_test=args.drift_embedding_test,
    )
    result = train(
        args.data,
        Registry(args.registry),
        cfg,
        force=args.force,
        promote=not args.no_promote,
        columns=columns_of(args),
        cache_dir=cache_dir(),
    )
    emit(result.as_json(), True) if args.json else _print(result.as_json())
    return 0


def _print(res: dict[str, Any]) -> None:
    val = res["val"]
    print(f"model {res['version']} saved to {res['path']}")
    shown = {k: val[k] for k in ("accuracy", "macro_f1", "ood_auroc", "ood_fpr95", "ood_recall") if k in val}
    print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    print(res["decision"])


COMMAND = Command(
    name="train",
    help="fit a model on labelled texts and register it",
    options=options,
    run=run,
    examples=(
        "streamscore train --data datasets/clinc150/clinc150_full.jsonl",
        "streamscore train --data tickets.csv --field text=body --field label=category --finetune-epochs 0",
    ),
)
