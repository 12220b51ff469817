"""Themes: groups of foreign texts that say one new thing, with keywords, examples and the
nearest known label.

A drift episode's foreign texts (or any set of OOD texts) are clustered on their unit-length
embeddings by average-linkage agglomeration with a cosine-distance cut, so the number of themes
is not fixed in advance; a group smaller than ``min_size`` texts and ``min_share`` of them is
not a theme. Keywords are the theme's tokens weighed against a background of in-distribution
texts (document frequency in the theme times inverse document frequency in the background,
a class-based TF-IDF), so words every ticket uses do not come up.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a, b = rng.normal(size=8), rng.normal(size=8)
>>> X = np.stack([a + 0.05 * rng.normal(size=8) for _ in range(6)] + [b + 0.05 * rng.normal(size=8) for _ in range(2)])
>>> X /= np.linalg.norm(X, axis=1, keepdims=True)
>>> texts = ["refund for my cancelled flight"] * 6 + ["hello there", "good morning"]
>>> background = Background.of(["i want to check my balance", "my card was declined"])
>>> found = find_themes(texts, X, background, min_size=3)
>>> [(t.size, t.keywords[:3]) for t in found.themes], found.unthemed
([(6, ['cancelled', 'flight', 'refund'])], 2)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A short English stop list: words that carry no topic in customer texts.
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can cannot could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves i'm i've i'd don't can't won't it's
    please thanks thank hi hello want need like get got also would could""".split()
)
TOKEN = re.compile(r"[a-z][a-z']+[a-z]")


def tokens(text: str) -> set[str]:
    """The distinct topic words of ``text``: lower-case, 3+ letters, no stop words.

    >>> sorted(tokens("Refund for my CANCELLED flight, please!"))
    ['cancelled', 'flight', 'refund']
    """
    return {t for t in TOKEN.findall(text.lower()) if t not in STOP_WORDS}


@dataclass
class Background:
    """Document frequencies of tokens over in-distribution texts, bounded to ``limit`` tokens
    (the rarest are dropped when it is exceeded, which only makes them look rarer)."""

    docs: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    limit: int = 50_000

    @classmethod
    def of(cls, texts: list[str], limit: int = 50_000) -> Background:
        bg = cls(limit=limit)
        for text in texts:
            bg.add(text)
        return bg

    def add(self, text: str) -> None:
        self.docs += 1
        self.counts.update(tokens(text))
        if len(self.counts) > self.limit:
            keep = self.counts.most_common(self.limit // 2)
            self.counts = Counter(dict(keep))

    def idf(self, token: str) -> float:
        return float(np.log((1 + self.docs) / (1 + self.counts.get(token, 0))) + 1.0)

    def state(self) -> dict[str, Any]:
        return {"docs": self.docs, "counts": dict(self.counts), "limit": self.limit}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Background:
        return cls(int(state["docs"]), Counter(state["counts"]), int(state["limit"]))


@dataclass(frozen=True)
class Theme:
    """One group of foreign texts that belong together."""

    size: int
    share: float  # of the texts clustered
    keywords: list[str]
    examples: list[str]  # the texts nearest the theme's centre
    nearest_label: str | None  # the known label whose centre lies nearest
    label_similarity: float  # cosine similarity of the two centres
    members: list[int] = field(repr=False, compare=False)  # indices into the texts given

    def as_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "share": round(self.share, 4),
            "keywords": self.keywords,
            "examples": self.examples,
            "nearest_label": self.nearest_label,
            "label_similarity": round(self.label_similarity, 4),
        }


@dataclass(frozen=True)
class ThemeReport:
    themes: list[Theme]
    unthemed: int  # texts in no theme
    texts: int

    @property
    def summary(self) -> str:
        if not self.themes:
            return f"no coherent theme among {self.texts} foreign texts"
        top = self.themes[0]
        return (
            f"{len(self.themes)} theme(s) among {self.texts} foreign texts; largest: {top.size} texts "
            f"({', '.join(top.keywords[:4])})"
        )


def label_centres(X: np.ndarray, y: list[str], labels: list[str]) -> np.ndarray:
    """Unit-length mean embedding of each label's rows, in ``labels`` order.

    >>> label_centres(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]), ["a", "b", "b"], ["b", "a"])
    array([[0., 1.],
           [1., 0.]], dtype=float32)
    """
    y_arr = np.asarray(y)
    centres = np.stack([np.asarray(X, dtype=np.float64)[y_arr == label].mean(axis=0) for label in labels])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres.astype(np.float32)


DISTANCE = 0.5  # cosine distance cut of the average-linkage tree (benchmarks/themes.py, docs/drift.md)


def cluster(X: np.ndarray, distance: float = DISTANCE) -> np.ndarray:
    """Cluster index per row of unit-length ``X`` (average linkage, cosine distance cut)."""
    if len(X) < 2:
        return np.zeros(len(X), dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(np.asarray(X, dtype=np.float64), method="average", metric="cosine")
    return fcluster(tree, t=distance, criterion="distance") - 1


def keywords(texts: list[str], background: Background, n: int = 6) -> list[str]:
    """The ``n`` tokens that set ``texts`` apart from the background, best first; a token must
    appear in at least two texts (or the only one)."""
    df = Counter(t for text in texts for t in tokens(text))
    floor = min(2, len(texts))
    scored = [(c / len(texts) * background.idf(tok), tok) for tok, c in df.items() if c >= floor]
    return [tok for _, tok in sorted(scored, key=lambda s: (-s[0], s[1]))[:n]]


def find_themes(
    texts: list[str],
    X: np.ndarray,
    background: Background,
    *,
    label_names: list[str] | None = None,
    label_centres: np.ndarray | None = None,
    distance: float = DISTANCE,
    min_size: int = 5,
    min_share: float = 0.05,
    examples: int = 3,
) -> ThemeReport:
    """Themes among ``texts`` (rows of ``X``), largest first."""
    X = np.asarray(X, dtype=np.float32)
    groups = cluster(X, distance)
    floor = max(min_size, int(np.ceil(min_share * len(texts))))
    themes = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) < floor:
            continue
        centre = X[rows].mean(axis=0)
        centre /= np.linalg.norm(centre) or 1.0
        near = rows[np.argsort(-(X[rows] @ centre))[:examples]]
        label, similarity = None, 0.0
        if label_names and label_centres is not None and len(label_centres):
            sims = label_centres @ centre
            label, similarity = label_names[int(sims.argmax())], float(sims.max())
        themes.append(
            Theme(
                size=len(rows),
                share=len(rows) / len(texts),
                keywords=keywords([texts[i] for i in rows], background),
                examples=[texts[i] for i in near],
                nearest_label=label,
                label_similarity=similarity,
                members=rows.tolist(),
            )
        )
    themes.sort(key=lambda t: -t.size)
    return ThemeReport(themes, len(texts) - sum(t.size for t in themes), len(texts))
