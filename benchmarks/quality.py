"""Scoring-quality benchmark: every head/OOD variant on one or more datasets, as JSON.

    python benchmarks/quality.py --scenario clinc150 --json
    python benchmarks/quality.py --scenario clinc150_near --scenario bitext_near --scenario reviews_departments --json

Near-OOD scenarios withhold a seeded set of labels from training and threshold setting and score
their test rows as near-OOD (``near_ood_auroc``, ``near_ood_fpr95``), beside the far-OOD rows
(``ood_auroc``, ``ood_fpr95``) where the data has them.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamscore.models.artifact import ModelArtifact  # noqa: E402
from streamscore.models.embedder import Embedder  # noqa: E402
from streamscore.models.head import LinearHead  # noqa: E402
from streamscore.models.ood import STRATEGIES, OODScorer, ood_threshold  # noqa: E402
from streamscore.models.registry import Registry  # noqa: E402
from streamscore.training.data import Row, load_rows, training_splits  # noqa: E402
from streamscore.training.evaluate import evaluate_embeddings  # noqa: E402
from streamscore.training.fit import TrainConfig, fit_head, train  # noqa: E402

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


@dataclass
class Scenario:
    """Rows with splits (far-OOD rows labelled ``oos``), and the labels withheld from training
    whose test rows are scored as near-OOD."""

    rows: list[Row]
    near_labels: list[str] = field(default_factory=list)
    how: str = ""


def choose_withheld(groups: dict[str, list[str]], per_group: int, seed: int = 0) -> list[str]:
    """``per_group`` labels of each group, a seeded choice; sorted.

    >>> choose_withheld({"bank": ["a", "b", "c"], "travel": ["d", "e"]}, 1)
    ['b', 'e']
    """
    rng = random.Random(seed)
    return sorted(label for g in sorted(groups) for label in rng.sample(sorted(groups[g]), per_group))


def withhold(rows: list[Row], labels: list[str]) -> list[Row]:
    """``rows`` without the train and val rows of ``labels``: only their test rows stay, as
    near-OOD, so they enter neither training nor threshold setting."""
    held = set(labels)
    return [r for r in rows if r.label not in held or r.split == "test"]


def _clinc_domains() -> dict[str, list[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    for line in open(DATA / "clinc150" / "clinc150_full.jsonl", encoding="utf-8"):
        rec = json.loads(line)
        if rec["label"] != "oos":
            groups[rec["domain"]].add(rec["label"])
    return {d: sorted(v) for d, v in groups.items()}


def scenario(name: str, seed: int = 0) -> Scenario:
    if name == "clinc150":
        return Scenario(load_rows(DATA / "clinc150" / "clinc150_full.jsonl"), how="all 150 intents; oos far")
    clinc_oos = [
        r
        for r in load_rows(DATA / "clinc150" / "clinc150_full.jsonl")
        if r.label == "oos" and r.split == "test"
    ]
    if name == "clinc150_near":
        near = choose_withheld(_clinc_domains(), 3, seed)
        rows = withhold(load_rows(DATA / "clinc150" / "clinc150_full.jsonl"), near)
        return Scenario(rows, near, f"3 intents of each of the 10 domains withheld (seed {seed}); oos far")
    if name in ("bitext_vs_clinc", "bitext_near"):
        # Support tickets in distribution; CLINC150's out-of-scope queries as the foreign stream.
        rows = _split(load_rows(DATA / "bitext_customer_support" / "bitext_customer_support.jsonl"))
        if name == "bitext_vs_clinc":
            return Scenario(rows + clinc_oos, how="27 intents; CLINC150 oos far")
        near = choose_withheld({"all": sorted({r.label for r in rows})}, 5, seed)
        return Scenario(
            withhold(rows, near) + clinc_oos,
            near,
            f"5 of 27 intents withheld (seed {seed}); CLINC150 oos far",
        )
    if name == "reviews_departments":
        # Which department a review is about; reviews of Jackets and Trend are held out: near-OOD.
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
        held = [Row(r["text"], r["domain"], "test") for r in recs if r.get("domain") in ("Jackets", "Trend")][
            :800
        ]
        rows = _split([r for g in per.values() for r in g]) + held
        return Scenario(rows, ["Jackets", "Trend"], "departments Jackets and Trend withheld")
    raise SystemExit(f"unknown scenario {name!r}")


SCENARIOS = ("clinc150", "clinc150_near", "bitext_vs_clinc", "bitext_near", "reviews_departments")


def head_and_ood_ms(head: LinearHead, ood: OODScorer, X: np.ndarray, batch: int = 64) -> float:
    """Milliseconds per text for the head and the OOD score, in the worker's micro-batches
    (``Settings.batch_size``): a kNN product with the whole test set at once would cost
    differently from what a worker pays."""
    t = time.perf_counter()
    for start in range(0, len(X), batch):
        part = X[start : start + batch]
        ood.score(part, head, head.logits(part))
    return 1000 * (time.perf_counter() - t) / max(1, len(X))


def strategy_variants(
    sc: Scenario, emb: Embedder, c: float | None, prefix: str, strategies: tuple[str, ...] = STRATEGIES
) -> dict[str, dict]:
    """Every OOD strategy over one embedding pass of ``emb`` (frozen or fine-tuned)."""
    rows = sc.rows
    s = training_splits(rows)
    test = [r for r in rows if r.split == "test"]
    t = time.perf_counter()
    X_tr = emb.encode([r.text for r in s.train])
    X_va = emb.encode([r.text for r in s.val])
    X_te = emb.encode([r.text for r in test])
    embed_s = time.perf_counter() - t
    y = [r.label for r in s.train]
    t = time.perf_counter()
    if c is None:
        head, _ = fit_head(X_tr, y, X_va, [r.label for r in s.val], None)
    else:
        head = LinearHead.fit(X_tr, y, c=c)
    head_s = time.perf_counter() - t
    out = {}
    for strategy in strategies:
        t = time.perf_counter()
        ood = OODScorer.fit(strategy, X_tr, y, head.labels, X_val=X_va, head=head)
        manifest = {
            "thresholds": {"ood": ood_threshold(ood.score(X_va, head))},
            "embedder": {"name": emb.name, "dim": emb.dim},
        }
        fit_s = time.perf_counter() - t
        art = ModelArtifact(f"{prefix}+{strategy}", manifest, head, ood)
        m = evaluate_embeddings(art, X_te, [r.label for r in test], near_labels=set(sc.near_labels))
        m["ms_per_text_head_ood"] = head_and_ood_ms(head, ood, X_te)
        m["ms_per_text_encode"] = 1000 * embed_s / (len(s.train) + len(s.val) + len(test))
        m["train_seconds"] = round(
            embed_s * len(s.train) / (len(s.train) + len(s.val) + len(test)) + head_s + fit_s, 1
        )
        out[f"{prefix}+lr+{strategy}"] = m
    return out


def finetuned_variants(
    sc: Scenario, emb: Embedder, epochs: float, workdir: Path, strategies: tuple[str, ...]
) -> dict:
    """Fine-tune as ``streamscore train`` does, then every strategy on the tuned encoder."""
    path = workdir / "data.jsonl"
    path.write_text(
        "".join(json.dumps({"text": r.text, "label": r.label, "split": r.split}) + "\n" for r in sc.rows)
    )
    reg = Registry(workdir / f"reg-{epochs:g}")
    res = train(path, reg, TrainConfig(finetune_epochs=epochs), quiet=True, embedder=emb)
    art = reg.load(res.version)
    tuned = Embedder.load(art.embedder_name, emb.device)
    info = art.manifest["embedder"]["finetuned"]
    how = {
        k: info.get(k) for k in ("steps", "steps_planned", "best_epoch", "stopped_early", "max_seq_length")
    }
    out = strategy_variants(sc, tuned, None, f"finetuned{epochs:g}", strategies)
    for m in out.values():
        m["train_seconds"] = round(res.timings_s["total"], 1)
        m["finetune_seconds"] = round(res.timings_s.get("finetune", 0.0), 1)
        m["finetune"] = how
    return out


def _pair(m: dict, auroc: str, fpr: str) -> str:
    return f"{m[auroc]:.4f} / {m[fpr]:.3f}" if auroc in m else "—"


def _variant_name(key: str) -> str:
    """``finetuned2+lr+msp+knn`` → ``fine-tuned 2 ep · msp+knn``; ``frozen+lr+energy`` → ``frozen · energy``."""
    encoder, _, strategy = key.split("+", 2)
    if encoder.startswith("finetuned"):
        encoder = f"fine-tuned {encoder.removeprefix('finetuned')} ep"
    return f"{encoder} · {strategy}"


def markdown_table(report: dict[str, dict], default: str | None = None) -> str:
    """One Markdown table of every variant of every scenario in ``report`` (this script's JSON);
    the ``default`` strategy's fine-tuned rows in bold.

    >>> m = {"accuracy": 0.9, "near_ood_auroc": 0.95, "near_ood_fpr95": 0.2, "ms_per_text_head_ood": 0.01,
    ...      "ms_per_text_encode": 1.6, "train_seconds": 60.0}
    >>> print(markdown_table({"x": {"_scenario": {}, "frozen+lr+msp": m}}))
    | data | variant | accuracy | near-OOD AUROC / FPR95 | far-OOD AUROC / FPR95 | scoring ms/text (encoder + head/OOD) | training |
    |---|---|---|---|---|---|---|
    | x | frozen · msp | 0.9000 | 0.9500 / 0.200 | — | 1.6 + 0.010 | 1.0 min |
    """
    lines = [
        "| data | variant | accuracy | near-OOD AUROC / FPR95 | far-OOD AUROC / FPR95 "
        "| scoring ms/text (encoder + head/OOD) | training |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario_name, variants in report.items():
        for key, m in variants.items():
            if key.startswith("_"):
                continue
            name = _variant_name(key)
            if default and not key.startswith("frozen") and key.endswith(f"+lr+{default}"):
                name = f"**{name} (default)**"
            lines.append(
                f"| {scenario_name} | {name} | {m['accuracy']:.4f} "
                f"| {_pair(m, 'near_ood_auroc', 'near_ood_fpr95')} | {_pair(m, 'ood_auroc', 'ood_fpr95')} "
                f"| {m['ms_per_text_encode']:.1f} + {m['ms_per_text_head_ood']:.3f} "
                f"| {m['train_seconds'] / 60:.1f} min |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", action="append", choices=SCENARIOS)
    p.add_argument(
        "--finetune-epochs",
        type=float,
        action="append",
        help="fine-tuned variants to add (default 2; 0 for none)",
    )
    p.add_argument("--strategy", action="append", choices=STRATEGIES, help="OOD strategies (default: all)")
    p.add_argument("--head-c", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0, help="the choice of withheld labels")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--table",
        nargs="+",
        metavar="JSON",
        help="print the Markdown table of earlier --json outputs instead of running",
    )
    p.add_argument("--default", default=TrainConfig.ood_strategy, help="strategy to mark in --table")
    args = p.parse_args()
    if args.table:
        merged: dict[str, dict] = {}
        for file in args.table:  # files may hold other variants of the same scenario
            for name, found in json.loads(Path(file).read_text()).items():
                merged.setdefault(name, {}).update(found)
        print(markdown_table(merged, args.default))
        return
    strategies = tuple(args.strategy or STRATEGIES)
    emb = Embedder.load()
    report: dict[str, dict] = {}
    for name in args.scenario or ["clinc150"]:
        sc = scenario(name, args.seed)
        variants: dict[str, dict] = {
            "_scenario": {"how": sc.how, "withheld": sc.near_labels, "seed": args.seed}
        }
        variants |= strategy_variants(sc, emb, args.head_c, "frozen", strategies)
        with tempfile.TemporaryDirectory() as tmp:
            for epochs in [e for e in (args.finetune_epochs or [2.0]) if e > 0]:
                variants |= finetuned_variants(sc, emb, epochs, Path(tmp), strategies)
        report[name] = variants
        if not args.json:
            print(f"{name}: {sc.how}")
            for v, m in variants.items():
                if v.startswith("_"):
                    continue
                print(
                    f"  {v:36s} acc={m['accuracy']:.4f}"
                    f" near auroc={m.get('near_ood_auroc', float('nan')):.4f} fpr95={m.get('near_ood_fpr95', float('nan')):.3f}"
                    f" far auroc={m.get('ood_auroc', float('nan')):.4f} fpr95={m.get('ood_fpr95', float('nan')):.3f}"
                    f" ood {m['ms_per_text_head_ood']:.3f} ms/text"
                )
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
