"""Scoring-quality benchmark: every head/OOD variant on one or more datasets, as JSON.

    python benchmarks/quality.py --scenario clinc150 --json
    python benchmarks/quality.py --scenario bitext_vs_clinc --scenario reviews_departments --json

Frozen-encoder variants share one embedding pass; fine-tuned variants go through
``training.fit.train`` exactly as ``streamscore train`` does, and every variant is scored with
``training.evaluate.evaluate_embeddings`` (the code behind ``streamscore evaluate``). Out-of-
distribution rows never enter training or threshold setting.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.artifact import ModelArtifact  # noqa: E402
from models.embedder import Embedder  # noqa: E402
from models.head import LinearHead  # noqa: E402
from models.ood import STRATEGIES, OODScorer, ood_threshold  # noqa: E402
from models.registry import Registry  # noqa: E402
from training.data import Row, load_rows, training_splits  # noqa: E402
from training.evaluate import evaluate_embeddings, evaluate_rows  # noqa: E402
from training.fit import TrainConfig, train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def _split(rows: list[Row], seed: int = 0, val: float = 0.1, test: float = 0.2) -> list[Row]:
    """Stratified train/val/test for datasets shipped with a single split."""
    by: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by[r.label].append(r)
    rng = random.Random(seed)
    out = []
    for label in sorted(by):
        g = by[label][:]
        rng.shuffle(g)
        n_te, n_va = int(len(g) * test), int(len(g) * val)
        out += [Row(r.text, r.label, "test") for r in g[:n_te]]
        out += [Row(r.text, r.label, "val") for r in g[n_te : n_te + n_va]]
        out += [Row(r.text, r.label, "train") for r in g[n_te + n_va :]]
    return out


def scenario_rows(name: str) -> list[Row]:
    """Rows with splits; OOD rows carry the label ``oos``."""
    if name == "clinc150":
        return load_rows(DATA / "clinc150" / "clinc150_full.jsonl")
    clinc_oos = [
        r
        for r in load_rows(DATA / "clinc150" / "clinc150_full.jsonl")
        if r.label == "oos" and r.split == "test"
    ]
    if name == "bitext_vs_clinc":
        # Support tickets in distribution; CLINC150's out-of-scope queries as the foreign stream.
        rows = _split(load_rows(DATA / "bitext_customer_support" / "bitext_customer_support.jsonl"))
        return rows + clinc_oos
    if name == "reviews_departments":
        # Which department a review is about; reviews of Jackets and Trend are held out as OOD.
        recs = [
            json.loads(x) for x in open(DATA / "womens_clothing_reviews" / "womens_clothing_reviews.jsonl")
        ]
        rng = random.Random(0)
        rng.shuffle(recs)
        ind = [
            Row(r["text"], r["domain"], "all")
            for r in recs
            if r.get("domain") in ("Tops", "Dresses", "Bottoms", "Intimate")
        ]
        per: dict[str, list[Row]] = defaultdict(list)
        for r in ind:
            if len(per[r.label]) < 1200:
                per[r.label].append(r)
        ood = [Row(r["text"], "oos", "test") for r in recs if r.get("domain") in ("Jackets", "Trend")][:800]
        return _split([r for g in per.values() for r in g]) + ood
    raise SystemExit(f"unknown scenario {name!r}")


def frozen_variants(rows: list[Row], emb: Embedder, c: float) -> dict[str, dict]:
    s = training_splits(rows)
    test = [r for r in rows if r.split == "test"]
    t = time.perf_counter()
    X_tr = emb.encode([r.text for r in s.train])
    X_va = emb.encode([r.text for r in s.val])
    X_te = emb.encode([r.text for r in test])
    embed_s = time.perf_counter() - t
    y = [r.label for r in s.train]
    t = time.perf_counter()
    head = LinearHead.fit(X_tr, y, c=c)
    head_s = time.perf_counter() - t
    out = {}
    for strategy in STRATEGIES:
        t = time.perf_counter()
        ood = OODScorer.fit(strategy, X_tr, y, head.labels)
        manifest = {
            "thresholds": {"ood": ood_threshold(ood.score(X_va, head))},
            "embedder": {"name": emb.name, "dim": emb.dim},
        }
        fit_s = time.perf_counter() - t
        art = ModelArtifact(f"frozen+{strategy}", manifest, head, ood)
        t = time.perf_counter()
        m = evaluate_embeddings(art, X_te, [r.label for r in test])
        m["ms_per_text_head_ood"] = 1000 * (time.perf_counter() - t) / len(test)
        m["train_seconds"] = round(
            embed_s * len(s.train) / (len(s.train) + len(s.val) + len(test)) + head_s + fit_s, 1
        )
        out[f"frozen+lr+{strategy}"] = m
    return out


def finetuned_variant(rows: list[Row], emb: Embedder, epochs: float, workdir: Path) -> dict:
    path = workdir / "data.jsonl"
    path.write_text(
        "".join(json.dumps({"text": r.text, "label": r.label, "split": r.split}) + "\n" for r in rows)
    )
    reg = Registry(workdir / f"reg-{epochs:g}")
    res = train(path, reg, TrainConfig(finetune_epochs=epochs), quiet=True, embedder=emb)
    art = reg.load(res.version)
    tuned = Embedder.load(art.embedder_name, emb.device)
    m = evaluate_rows(art, tuned, [r for r in rows if r.split == "test"])
    m["train_seconds"] = round(res.timings_s["total"], 1)
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario", action="append", choices=["clinc150", "bitext_vs_clinc", "reviews_departments"]
    )
    p.add_argument(
        "--finetune-epochs",
        type=float,
        action="append",
        help="fine-tuned variants to add (default 2; 0 for none)",
    )
    p.add_argument("--head-c", type=float, default=10.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    emb = Embedder.load()
    report = {}
    for name in args.scenario or ["clinc150"]:
        rows = scenario_rows(name)
        variants = frozen_variants(rows, emb, args.head_c)
        with tempfile.TemporaryDirectory() as tmp:
            for epochs in [e for e in (args.finetune_epochs or [2.0]) if e > 0]:
                variants[f"finetuned{epochs:g}+lr+energy"] = finetuned_variant(rows, emb, epochs, Path(tmp))
        report[name] = variants
        if not args.json:
            print(name)
            for v, m in variants.items():
                print(
                    f"  {v:28s} acc={m['accuracy']:.4f} auroc={m.get('ood_auroc', float('nan')):.4f} fpr95={m.get('ood_fpr95', float('nan')):.3f}"
                )
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
