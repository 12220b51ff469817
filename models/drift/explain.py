"""An episode's explanation: which labels moved, whose confidence fell, which texts are most
foreign and which themes they form, as one compact JSON object (at most ``MAX_BYTES``).

>>> ex = Explainer(labels=["billing", "shipping"], prior=[0.5, 0.5], label_confidence=[0.9, 0.9])
>>> ev = EpisodeEvidence(n_labels=2)
>>> for i in range(100):
...     shipping = i < 80  # 80% shipping where the prior says 50%, and less sure of itself
...     ev.add({"id": str(i), "label": int(shipping), "confidence": 0.6 if shipping else 0.9,
...             "ood_score": 0.0}, foreign=False)
>>> e = ex.explain(ev)
>>> e["labels_moved"][0]
{'label': 'shipping', 'share': 0.8, 'expected': 0.5, 'count': 80}
>>> e["confidence_fell"][0]["label"], e["themes_summary"]
('shipping', 'no foreign texts')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamscore.models.drift.evidence import EpisodeEvidence
from streamscore.models.themes import Background, find_themes

MAX_BYTES = 16_384  # an explanation rides on an alert: it must stay small
MIN_FOR_THEMES = 10  # fewer foreign texts than this are no basis for themes


@dataclass
class Explainer:
    """What a model version knows to explain an episode against (all from its artifact)."""

    labels: list[str]
    prior: list[float]  # label mix of held-out in-distribution texts
    label_confidence: list[float] | None = None  # mean confidence by predicted label, held out
    background: Background | None = None  # token document frequencies of the training texts
    label_centres: np.ndarray | None = None
    texts: bool = True  # False: keywords and counts only, no customer text
    text_chars: int = 200

    def explain(self, ev: EpisodeEvidence) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": ev.messages,
            "foreign": ev.foreign,
            "foreign_share": round(ev.foreign / ev.messages, 4) if ev.messages else 0.0,
            "labels_moved": self._labels_moved(ev),
            "confidence_fell": self._confidence_fell(ev),
            "most_foreign": [
                {"ood_score": round(x.ood_score, 4), "label": self.labels[x.label], **self._text(x.text)}
                for x in ev.most_foreign
            ],
            "texts_included": self.texts,
        }
        out |= self._themes(ev)
        return fit(out)

    def _text(self, text: str) -> dict[str, str]:
        return {"text": text[: self.text_chars]} if self.texts else {}

    def _labels_moved(self, ev: EpisodeEvidence, n: int = 5) -> list[dict[str, Any]]:
        if not ev.messages:
            return []
        moved = sorted(
            zip(self.labels, ev.label_counts, self.prior, strict=False),
            key=lambda r: -abs(r[1] / ev.messages - r[2]),
        )
        return [
            {"label": name, "share": round(c / ev.messages, 4), "expected": round(p, 4), "count": c}
            for name, c, p in moved[:n]
            if round(c / ev.messages, 4) != round(p, 4)
        ]

    def _confidence_fell(self, ev: EpisodeEvidence, n: int = 3, min_count: int = 5) -> list[dict[str, Any]]:
        if self.label_confidence is None:
            return []
        fell = sorted(
            (total / c - ref, name, total / c, ref, c)
            for name, c, total, ref in zip(
                self.labels, ev.label_counts, ev.confidence_sums, self.label_confidence, strict=False
            )
            if c >= min_count and total / c < ref
        )
        return [
            {"label": name, "confidence": round(mean, 4), "expected": round(ref, 4), "count": c}
            for _, name, mean, ref, c in fell[:n]
        ]

    def _themes(self, ev: EpisodeEvidence) -> dict[str, Any]:
        if len(ev.sample) < MIN_FOR_THEMES:
            summary = (
                "no foreign texts" if not ev.foreign else f"too few foreign texts for themes ({ev.foreign})"
            )
            return {"themes": [], "themes_summary": summary, "themes_from": len(ev.sample)}
        report = find_themes(
            [x.text for x in ev.sample],
            ev.embeddings(),
            self.background or Background(),
            label_names=self.labels,
            label_centres=self.label_centres,
        )
        themes = []
        for t in report.themes:
            theme = t.as_json()
            theme["examples"] = [e[: self.text_chars] for e in theme["examples"]] if self.texts else []
            themes.append(theme)
        return {"themes": themes, "themes_summary": report.summary, "themes_from": len(ev.sample)}


def summary(explanation: dict[str, Any]) -> list[str]:
    """An explanation in a few lines for a person (the demo and logs print it).

    >>> print("\\n".join(summary({"messages": 200, "foreign": 90, "labels_moved": [
    ...     {"label": "refund", "share": 0.3, "expected": 0.1, "count": 60}], "themes": [
    ...     {"size": 40, "keywords": ["flight", "cancelled"], "nearest_label": "refund"}],
    ...     "themes_summary": "1 theme(s) among 90 foreign texts; largest: 40 texts (flight, cancelled)"})))
    90 of 200 messages foreign; labels moved: refund 30.0% (expected 10.0%)
    theme of 40: flight, cancelled (nearest label: refund)
    """
    moved = ", ".join(
        f"{m['label']} {m['share']:.1%} (expected {m['expected']:.1%})"
        for m in explanation["labels_moved"][:3]
    )
    lines = [
        f"{explanation['foreign']} of {explanation['messages']} messages foreign; labels moved: {moved or 'none'}"
    ]
    for t in explanation["themes"][:3]:
        near = f" (nearest label: {t['nearest_label']})" if t.get("nearest_label") else ""
        lines.append(f"theme of {t['size']}: {', '.join(t['keywords'][:5])}{near}")
    if not explanation["themes"]:
        lines.append(explanation["themes_summary"])
    return lines


def fit(explanation: dict[str, Any], limit: int = MAX_BYTES) -> dict[str, Any]:
    """``explanation`` within ``limit`` bytes of JSON: theme examples go first, then the most
    foreign texts, then themes from the smallest.

    >>> big = {"themes": [{"examples": ["x" * 9000], "size": 3}], "most_foreign": [{"text": "y" * 9000}]}
    >>> fit(big, 1000)
    {'themes': [{'examples': [], 'size': 3}], 'most_foreign': [], 'trimmed': True}
    """

    def size() -> int:
        return len(json.dumps(explanation).encode())

    if size() <= limit:
        return explanation
    explanation["trimmed"] = True
    for theme in explanation.get("themes", []):
        theme["examples"] = []
    if size() > limit:
        explanation["most_foreign"] = []
    while size() > limit and explanation.get("themes"):
        explanation["themes"].pop()
    return explanation
