"""What one drift episode saw, in bounded memory: its label mix, confidence by label, and a
uniform sample of its foreign texts (text and compact embedding) with the most foreign ones.

The sample keeps the ``SAMPLE`` foreign texts whose message ids hash lowest: a uniform sample of
however many the episode sees, with no random state to snapshot, and a text seen twice (a
re-delivered signal) is kept once. The whole state is plain JSON, like the detectors'.

>>> ev = EpisodeEvidence(n_labels=2)
>>> for i in range(1000):
...     ev.add({"id": f"m{i}", "label": i % 2, "confidence": 0.5, "ood_score": float(i),
...             "text": f"text {i}", "embedding": pack([1.0, 0.0])}, foreign=i % 2 == 0)
>>> ev.messages, ev.foreign, ev.label_counts, len(ev.sample) == SAMPLE
(1000, 500, [500, 500], True)
>>> [x.text for x in ev.most_foreign][:2]
['text 998', 'text 996']
>>> EpisodeEvidence.from_state(ev.state()) == ev
True
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SAMPLE = 150  # foreign texts kept per episode: enough for themes, small enough to snapshot
MOST_FOREIGN = 5


def pack(vector: Any) -> str:
    """A unit embedding as base64 of int8 (1/127 steps): a quarter of float32, and cosine
    similarities within about 0.01 of the original.

    >>> v = unpack(pack([0.6, 0.8]))
    >>> bool(abs(v @ np.array([0.6, 0.8]) - 1.0) < 0.01)
    True
    """
    v = np.asarray(vector, dtype=np.float32)
    v = v / (np.linalg.norm(v) or 1.0)
    return base64.b64encode(np.round(v * 127).astype(np.int8).tobytes()).decode("ascii")


def unpack(packed: str) -> np.ndarray:
    v = np.frombuffer(base64.b64decode(packed), dtype=np.int8).astype(np.float32) / 127.0
    return v / (np.linalg.norm(v) or 1.0)


def priority(message_id: str) -> int:
    """Where a message ranks for the sample: the lowest are kept (a hash of its id)."""
    return int.from_bytes(hashlib.blake2b(message_id.encode(), digest_size=8).digest(), "big")


@dataclass
class ForeignText:
    """One foreign text of an episode, as the signal carried it."""

    id: str
    text: str
    ood_score: float
    label: int  # the label the model gave it
    embedding: str  # :func:`pack`


@dataclass
class EpisodeEvidence:
    """Counts and samples of one episode; ``add`` one signal at a time."""

    n_labels: int
    messages: int = 0
    foreign: int = 0
    label_counts: list[int] = field(default_factory=list)
    confidence_sums: list[float] = field(default_factory=list)
    sample: list[ForeignText] = field(default_factory=list)
    most_foreign: list[ForeignText] = field(default_factory=list)
    _worst: tuple[int, int] | None = field(default=None, repr=False, compare=False)  # sample index, priority

    def __post_init__(self) -> None:
        self.label_counts = self.label_counts or [0] * self.n_labels
        self.confidence_sums = self.confidence_sums or [0.0] * self.n_labels

    def add(self, signal: dict[str, Any], foreign: bool) -> None:
        """One scored message of the episode; ``foreign``: the model flagged it as OOD."""
        self.count(int(signal["label"]), float(signal["confidence"]), foreign)
        if foreign:
            self.keep_foreign(signal)

    def count(self, label: int, confidence: float, foreign: bool) -> None:
        """One message in the counts only (the episode's earlier messages, known by these alone)."""
        self.messages += 1
        if 0 <= label < self.n_labels:
            self.label_counts[label] += 1
            self.confidence_sums[label] += confidence
        self.foreign += foreign

    def keep_foreign(self, signal: dict[str, Any]) -> None:
        """Into the sample and the most-foreign list, if the signal carries its text and embedding."""
        if not signal.get("embedding") or signal.get("text") is None:
            return
        item = ForeignText(
            str(signal["id"]),
            str(signal["text"]),
            float(signal["ood_score"]),
            int(signal["label"]),
            signal["embedding"],
        )
        if any(x.id == item.id for x in self.sample):
            return
        if len(self.sample) < SAMPLE:
            self.sample.append(item)
            self._worst = None
        else:
            if self._worst is None:  # found again only after a replacement: rare once the sample is full
                i = max(range(len(self.sample)), key=lambda j: priority(self.sample[j].id))
                self._worst = (i, priority(self.sample[i].id))
            if priority(item.id) < self._worst[1]:
                self.sample[self._worst[0]] = item
                self._worst = None
        self.most_foreign = sorted([*self.most_foreign, item], key=lambda x: -x.ood_score)[:MOST_FOREIGN]

    def embeddings(self) -> np.ndarray:
        return np.stack([unpack(x.embedding) for x in self.sample]) if self.sample else np.zeros((0, 0))

    def state(self) -> dict[str, Any]:
        return {
            "n_labels": self.n_labels,
            "messages": self.messages,
            "foreign": self.foreign,
            "label_counts": self.label_counts,
            "confidence_sums": self.confidence_sums,
            "sample": [asdict(x) for x in self.sample],
            "most_foreign": [asdict(x) for x in self.most_foreign],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpisodeEvidence:
        return cls(
            n_labels=int(state["n_labels"]),
            messages=int(state["messages"]),
            foreign=int(state["foreign"]),
            label_counts=[int(x) for x in state["label_counts"]],
            confidence_sums=[float(x) for x in state["confidence_sums"]],
            sample=[ForeignText(**x) for x in state["sample"]],
            most_foreign=[ForeignText(**x) for x in state["most_foreign"]],
        )
