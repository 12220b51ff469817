"""Theme benchmark: do new intents injected into a stream come out as themes? JSON out.

    python benchmarks/themes.py --data ../shared/data/clinc150/clinc150_full.jsonl --json
    python benchmarks/themes.py --data ../shared/data/bitext_customer_support/bitext_customer_support.jsonl --json

Withholds ``--withhold`` labels (a seeded choice, recorded in the JSON) from training, trains
as ``streamscore train`` does, then streams unseen in-distribution texts and, from message
``--before``, injects the withheld labels' texts at each ``--share``. The texts the model flags
as OOD go to a bounded buffer of recent foreign texts, clustered every ``--every`` messages with
``models.themes``. For each withheld label: the best-matching theme's purity (share of its texts
from that label) and coverage (share of that label's injected texts in it), whether it was found
(the label is the theme's majority), the messages from injection start to the first such theme,
and which tokens of the label's name are among the keywords. A stationary stream (nothing
injected) reports its largest theme as a share of all texts: the false themes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamscore.models.artifact import ModelArtifact  # noqa: E402
from streamscore.models.drift.evidence import pack  # noqa: E402
from streamscore.models.drift.monitor import DriftMonitor  # noqa: E402
from streamscore.models.embedder import Embedder  # noqa: E402
from streamscore.models.registry import Registry  # noqa: E402
from streamscore.models.scoring import score_embeddings  # noqa: E402
from streamscore.models.themes import DISTANCE, Background, ThemeReport, find_themes  # noqa: E402
from streamscore.schemas.drift import SIGNAL_TEXT_CHARS  # noqa: E402
from streamscore.streams.worker.drift_agent import ExplainSettings, explainer_of  # noqa: E402
from streamscore.training.data import Row, read_labelled  # noqa: E402
from streamscore.training.fit import TrainConfig, train  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from quality import _split as split_by_label  # noqa: E402


@dataclass
class Stream:
    texts: list[str]
    labels: list[str]  # the true label, for scoring only
    injected_from: int


def make_stream(
    in_dist: list[Row], injected: list[Row], before: int, after: int, share: float, rng: random.Random
) -> Stream:
    """``before`` in-distribution texts, then ``after`` messages of which ``share`` are injected;
    no text is used twice."""
    pool_in = in_dist[:]
    pool_new = injected[:]
    rng.shuffle(pool_in)
    rng.shuffle(pool_new)
    if len(pool_in) < before + 1:
        raise SystemExit(
            f"{len(pool_in)} unseen in-distribution texts: fewer than --before {before}; lower it"
        )
    out: list[Row] = [pool_in.pop() for _ in range(before)]
    for _ in range(after):
        take_new = pool_new and rng.random() < share
        if not take_new and not pool_in:
            break
        out.append(pool_new.pop() if take_new else pool_in.pop())
    return Stream([r.text for r in out], [r.label for r in out], before)


def match_labels(
    report: ThemeReport,
    rows: list[int],
    labels: list[str],
    held: set[str],
    injected: Counter[str],
    first_found: dict[str, int],
    scale: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """For each withheld label, the theme holding most of its texts: purity, coverage (its
    texts there, times ``scale`` when the clustered texts are a sample, over ``injected``), found
    (the label is the theme's majority), keywords and the name's tokens among them."""
    per_label: dict[str, dict[str, Any]] = {}
    for label in sorted(held):
        best = None
        for theme in report.themes:
            members = [labels[rows[m]] for m in theme.members]
            count = members.count(label)
            if count and (best is None or count > best[0]):
                best = (count, theme, Counter(members).most_common(1)[0][0])
        if best is None:
            per_label[label] = {"found": False, "injected": injected[label]}
            continue
        count, theme, majority = best
        per_label[label] = {
            "found": majority == label and count / theme.size >= 0.5,
            "purity": round(count / theme.size, 4),
            "coverage": round(min(1.0, count * scale / max(1, injected[label])), 4),
            "injected": injected[label],
            "theme_size": theme.size,
            "keywords": theme.keywords,
            "keyword_hits": sorted(set(label.replace("-", "_").split("_")) & set(theme.keywords)),
            "examples": theme.examples,
            "messages_to_first_theme": first_found.get(label),
        }
    return per_label


def run_stream(
    stream: Stream,
    X: np.ndarray,
    is_ood: np.ndarray,
    held: set[str],
    *,
    buffer: int,
    every: int,
    distance: float,
    min_size: int,
    min_share: float,
) -> dict[str, Any]:
    """Feed the stream; cluster the recent foreign texts every ``every`` messages."""
    recent: deque[int] = deque(maxlen=buffer)  # indices of recent foreign texts
    background = Background()
    first_found: dict[str, int] = {}
    report = None
    cluster_s = 0.0
    checks = 0
    for i, text in enumerate(stream.texts):
        if is_ood[i]:
            recent.append(i)
        else:
            background.add(text)
        last = i == len(stream.texts) - 1
        if (i + 1) % every and not last:
            continue
        rows = list(recent)
        t = time.perf_counter()
        report = find_themes([stream.texts[j] for j in rows], X[rows], background, distance=distance,
                             min_size=min_size, min_share=min_share)  # fmt: skip
        cluster_s += time.perf_counter() - t
        checks += 1
        for theme in report.themes:
            majority, count = Counter(stream.labels[rows[m]] for m in theme.members).most_common(1)[0]
            if majority in held and count / theme.size >= 0.5 and majority not in first_found:
                first_found[majority] = i + 1 - stream.injected_from
    assert report is not None
    rows = list(recent)
    injected = Counter(lab for lab in stream.labels[stream.injected_from :] if lab in held)
    per_label = match_labels(report, rows, stream.labels, held, injected, first_found)
    flagged_in_dist = sum(1 for j in rows if stream.labels[j] not in held)
    return {
        "labels": per_label,
        "themes": [t.as_json() for t in report.themes],
        "largest_theme_share_of_texts": round(
            max((t.size for t in report.themes), default=0) / len(stream.texts), 4
        ),
        "foreign_texts_clustered": len(rows),
        "in_distribution_among_them": flagged_in_dist,
        "cluster_ms_per_check": round(1000 * cluster_s / max(1, checks), 2),
    }


def run_episode(
    stream: Stream, X: np.ndarray, art: ModelArtifact, held: set[str], every: int
) -> dict[str, Any]:
    """Feed the stream to the drift agent's monitor, as the worker does (signals with the text and
    embedding of each foreign text), and read the themes of the first episode that opens after
    injection starts from its evidence (a uniform sample of at most 150 foreign texts) every
    ``every`` messages. Coverage scales a theme's share of the sample up to the episode's
    foreign texts: the texts it stands for, over the label's injected texts in the episode."""
    scores = score_embeddings(art, X)
    explainer = explainer_of(art, ExplainSettings())
    assert art.drift is not None and explainer is not None
    assert scores.projection is not None and scores.label_index is not None
    monitor = DriftMonitor(art.drift, art.version, explainer=explainer, ood_threshold=art.ood_threshold)
    episode: tuple[str, int] | None = None  # (detector, message it opened at)
    first_found: dict[str, int] = {}
    opened: list[dict[str, Any]] = []
    last_report, last_rows, foreign_in_episode, end = None, [], 0, len(stream.texts)
    for i in range(len(stream.texts)):
        foreign = bool(scores.is_ood[i])
        signal = {
            "id": str(i),
            "ood_score": float(scores.ood_scores[i]),
            "confidence": float(scores.confidence[i]),
            "label": int(scores.label_index[i]),
            "projection": scores.projection[i].tolist(),
        }
        if foreign:
            signal |= {"text": stream.texts[i][:SIGNAL_TEXT_CHARS], "embedding": pack(X[i])}
        for alert in monitor.observe(signal, offset=i):
            if alert.status == "drift":
                opened.append({"detector": alert.detector, "at": i + 1 - stream.injected_from})
                if episode is None and i >= stream.injected_from:
                    episode = (alert.detector, i)
            elif episode and alert.detector == episode[0]:
                end = i + 1
        if (
            episode is None
            or end < len(stream.texts)  # the episode ended: its last themes stand
            or episode[0] not in monitor.evidence
            or ((i + 1) % every and i + 1 < len(stream.texts))
        ):
            continue
        ev = monitor.evidence[episode[0]]
        if len(ev.sample) < 10:
            continue
        report = find_themes(
            [x.text for x in ev.sample], ev.embeddings(), explainer.background or Background()
        )
        rows = [int(x.id) for x in ev.sample]
        last_report, last_rows, foreign_in_episode = report, rows, ev.foreign
        for theme in report.themes:
            majority, count = Counter(stream.labels[rows[m]] for m in theme.members).most_common(1)[0]
            if majority in held and count / theme.size >= 0.5 and majority not in first_found:
                first_found[majority] = i + 1 - stream.injected_from
    out: dict[str, Any] = {
        "episodes_opened": opened,
        "episode": episode and {"detector": episode[0], "opened_at": episode[1] + 1 - stream.injected_from},
    }
    if last_report is None or episode is None:
        return out | {
            "labels": {lab: {"found": False} for lab in sorted(held)},
            "themes": [],
            "largest_theme_share_of_texts": 0.0,
        }
    in_episode = Counter(lab for lab in stream.labels[episode[1] : end] if lab in held)
    scale = foreign_in_episode / len(last_rows)
    per_label = match_labels(last_report, last_rows, stream.labels, held, in_episode, first_found, scale)
    return out | {
        "labels": per_label,
        "themes": [t.as_json() for t in last_report.themes],
        "largest_theme_share_of_texts": round(
            max((t.size for t in last_report.themes), default=0) * scale / len(stream.texts), 4
        ),
        "foreign_in_episode": foreign_in_episode,
        "sampled": len(last_rows),
    }


def summarise(per_label: dict[str, dict[str, Any]]) -> dict[str, Any]:
    found = [v for v in per_label.values() if v.get("found")]
    return {
        "found": len(found),
        "of": len(per_label),
        "median_purity": round(median(v.get("purity", 0.0) for v in per_label.values()), 4),
        "median_coverage": round(median(v.get("coverage", 0.0) for v in per_label.values()), 4),
        "median_messages_to_first_theme": median(
            [v["messages_to_first_theme"] for v in found if v.get("messages_to_first_theme") is not None]
            or [float("nan")]
        ),
        "keyword_hits": sum(bool(v.get("keyword_hits")) for v in per_label.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a labelled file (JSONL, CSV, TSV, Parquet)")
    p.add_argument("--withhold", type=int, default=5, help="labels withheld and injected")
    p.add_argument("--seed", type=int, default=7, help="the choice of withheld labels and the streams")
    p.add_argument("--share", type=float, action="append", help="injected share (default 0.1 and 0.3)")
    p.add_argument("--before", type=int, default=1000, help="in-distribution messages before injection")
    p.add_argument("--after", type=int, default=2000, help="messages from injection on")
    p.add_argument("--buffer", type=int, default=1000, help="recent foreign texts kept for clustering")
    p.add_argument("--every", type=int, default=50, help="messages between clusterings")
    p.add_argument(
        "--episode",
        action="store_true",
        help="themes as the drift agent finds them: from the evidence of the episode that opens "
        "after injection (a sample of at most 150 foreign texts), not a buffer of recent ones",
    )
    p.add_argument("--distance", type=float, default=DISTANCE)
    p.add_argument("--min-size", type=int, default=5)
    p.add_argument("--min-share", type=float, default=0.05)
    p.add_argument(
        "--gate",
        type=float,
        default=None,
        help="texts above this quantile of in-distribution validation scores are foreign "
        "(default: the model's OOD threshold)",
    )
    p.add_argument("--finetune-epochs", type=float, default=TrainConfig.finetune_epochs)
    p.add_argument("--registry", type=Path, help="train once into this registry and reuse it")
    p.add_argument("--ood-label", default="oos")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    rows = [r for r in read_labelled(args.data).rows if r.label != args.ood_label]
    labels = sorted({r.label for r in rows})
    held = sorted(random.Random(args.seed).sample(labels, args.withhold))
    if sum(r.split == "test" and r.label not in held for r in rows) < args.before + args.after:
        # A file with too few test rows (or none): more of each label to test.
        rows = split_by_label(rows, args.seed, val=0.1, test=0.3)
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(args.registry or Path(tmp) / "reg")
        path = Path(tmp) / "data.jsonl"
        path.write_text(
            "".join(json.dumps({"text": r.text, "label": r.label, "split": r.split}) + "\n" for r in rows)
        )
        t = time.perf_counter()
        current = registry.current()
        art = registry.load(current) if current else None
        if art is None or art.manifest["training_data"].get("withheld") != held:
            version = train(path, registry, TrainConfig(finetune_epochs=args.finetune_epochs,
                            withhold=tuple(held)), quiet=True, force=True).version  # fmt: skip
            art = registry.load(version)
        train_s = time.perf_counter() - t
        emb = Embedder.load(art.embedder_name)
        in_dist = [r for r in rows if r.split == "test" and r.label not in held]
        injected = [r for r in rows if r.label in held]  # none of their rows trained
        report: dict[str, Any] = {
            "data": str(args.data),
            "withheld": held,
            "seed": args.seed,
            "ood_strategy": art.ood.strategy,
            "train_seconds": round(train_s, 1),
            "finetuned": bool(art.manifest["embedder"].get("finetuned")),
            "settings": {
                k: getattr(args, k)
                for k in (
                    "before",
                    "after",
                    "buffer",
                    "every",
                    "distance",
                    "min_size",
                    "min_share",
                    "episode",
                )
            },
        }
        gate = art.ood_threshold
        if args.gate is not None:
            val = [r.text for r in rows if r.split == "val" and r.label not in held]
            gate = float(np.quantile(art.ood.score(emb.encode(val), art.head), args.gate))
        report["gate"] = {"quantile": args.gate, "score": gate, "ood_threshold": art.ood_threshold}
        cache: dict[str, tuple[np.ndarray, bool]] = {}

        def score(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            todo = [t for t in dict.fromkeys(texts) if t not in cache]
            if todo:
                X = emb.encode(todo)
                flags = art.ood.score(X, art.head) > gate
                cache.update({t: (x, bool(f)) for t, x, f in zip(todo, X, flags, strict=True)})
            return np.stack([cache[t][0] for t in texts]), np.array([cache[t][1] for t in texts])

        streams = {"stationary": 0.0} | {f"share_{s:g}": s for s in (args.share or [0.1, 0.3])}
        for name, share in streams.items():
            stream = make_stream(in_dist, injected, args.before, args.after, share, random.Random(args.seed))
            X, is_ood = score(stream.texts)
            if args.episode:
                out = run_episode(stream, X, art, set(held) if share else set(), args.every)
            else:
                out = run_stream(stream, X, is_ood, set(held) if share else set(), buffer=args.buffer,
                                 every=args.every, distance=args.distance, min_size=args.min_size,
                                 min_share=args.min_share)  # fmt: skip
            if share:
                out["summary"] = summarise(out["labels"])
                out["flagged_share_of_injected"] = round(
                    float(np.mean([f for f, lab in zip(is_ood, stream.labels, strict=True) if lab in held])),
                    4,
                )
            report[name] = out
    if not args.json:
        for name in streams:
            r = report[name]
            print(
                name,
                r.get("summary"),
                "largest theme share",
                r["largest_theme_share_of_texts"],
                file=sys.stderr,
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
