"""``streamscore drift-eval``: false alarms and detection delays of the calibrated detectors.

Scenarios are built from per-message signals of held-out in-distribution texts (``--in``) and
shifted texts (``--shift``), embedded once and cached. Each scenario is repeated over seeds;
each detector runs exactly as the drift agent runs it, and ``combined`` is the alert stream a
user receives: one alert per detector episode (alarms of a detector within ``episode_gap``
messages of its previous alarm are folded into that episode).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamscore.models.artifact import ModelArtifact
from streamscore.models.drift import Signal
from streamscore.models.embedder import Embedder
from streamscore.training.data import load_rows

CHANGE_AT = 2_000  # messages of in-distribution text before the change
AFTER = 2_000  # a change not detected within this many messages is missed
STATIONARY_LEN = 20_000


@dataclass
class Signals:
    ood: np.ndarray
    confidence: np.ndarray
    label: np.ndarray
    projection: np.ndarray
    true_label: list[str]

    def take(self, idx: np.ndarray) -> list[Signal]:
        return [
            Signal(
                float(self.ood[i]), float(self.confidence[i]), int(self.label[i]), tuple(self.projection[i])
            )
            for i in idx
        ]


def cached_embeddings(embedder: Embedder, texts: list[str], cache_dir: Path, key: str) -> np.ndarray:
    digest = hashlib.sha256(("\n".join(texts) + "\0" + key).encode()).hexdigest()[:20]
    path = cache_dir / f"emb-{digest}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    X = embedder.encode(texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, X, allow_pickle=False)
    return X


def signals_for(artifact: ModelArtifact, X: np.ndarray, true_label: list[str]) -> Signals:
    assert artifact.drift is not None
    probs = artifact.head.predict_proba(X)
    return Signals(
        ood=artifact.ood.score(X, artifact.head),
        confidence=probs.max(axis=1),
        label=probs.argmax(axis=1),
        projection=artifact.drift.project(X),
        true_label=true_label,
    )


def _stream(
    name: str, ins: Signals, shift: Signals, rng: np.random.Generator
) -> tuple[list[Signal], int | None]:
    n_in = len(ins.ood)
    if name == "stationary":
        return ins.take(rng.integers(0, n_in, STATIONARY_LEN)), None
    before = ins.take(rng.integers(0, n_in, CHANGE_AT))
    if name == "abrupt":
        after = shift.take(rng.integers(0, len(shift.ood), AFTER))
    elif name == "mixture_20":
        is_shift = rng.random(AFTER) < 0.2
        after = [
            shift.take(rng.integers(0, len(shift.ood), 1))[0] if s else ins.take(rng.integers(0, n_in, 1))[0]
            for s in is_shift
        ]
    elif name == "label_shift":
        # Same kind of texts, another class mix: a random 10% of the classes take half the traffic.
        classes = sorted(set(ins.true_label))
        favoured = set(rng.choice(classes, size=max(1, len(classes) // 10), replace=False))
        fav = np.array([lab in favoured for lab in ins.true_label])
        weights = np.where(fav, 0.5 / fav.sum(), 0.5 / max((~fav).sum(), 1))
        after = ins.take(rng.choice(n_in, size=AFTER, p=weights / weights.sum()))
    else:
        raise ValueError(name)
    return before + after, CHANGE_AT


def _episode_starts(alarm_times: list[int], gap: int) -> list[int]:
    starts, last = [], None
    for t in alarm_times:
        if last is None or t - last > gap:
            starts.append(t)
        last = t
    return starts


def _summarise(starts_per_run: list[list[int]], change: int | None, length: int) -> dict[str, Any]:
    false_alarms = 0
    delays: list[int] = []
    missed = 0
    for starts in starts_per_run:
        before = [t for t in starts if change is None or t < change]
        false_alarms += len(before)
        if change is not None:
            hit = [t - change for t in starts if change <= t < change + AFTER]
            if hit:
                delays.append(hit[0] + 1)
            else:
                missed += 1
    clean_msgs = len(starts_per_run) * (change if change is not None else length)
    return {
        "false_alarms_per_10k": 10_000 * false_alarms / clean_msgs,
        "median_delay": float(np.median(delays)) if delays else None,
        "p90_delay": float(np.percentile(delays, 90)) if delays else None,
        "missed_rate": (missed / len(starts_per_run)) if change is not None else None,
        "runs": len(starts_per_run),
    }


SCENARIOS = ("stationary", "abrupt", "mixture_20", "label_shift")
SHIFTED = ("abrupt", "mixture_20")  # the scenarios that use the shifted texts


def drift_eval(
    artifact: ModelArtifact,
    ins: Signals,
    shifts: dict[str, Signals],
    seeds: int = 10,
    episode_gap: int = 1_000,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every scenario for each shifted data set (the stationary and label-shift streams use only
    the in-distribution texts, so they run once), and what the detectors cost per message.

    ``scenarios`` is the first data set's, ``by_shift`` every data set's; ``cost`` is the time of
    ``update`` per message, all detectors together and each, on one core. ``say`` is told of
    each scenario as it starts (progress)."""
    assert artifact.drift is not None, "this model has no drift calibration: retrain it"
    ert = artifact.drift.ert
    seconds: dict[str, float] = {}
    messages = 0
    by_shift: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for name, shift in shifts.items():
        by_shift[name] = {}
        for scenario in SCENARIOS:
            if scenario not in SHIFTED and scenario in shared:
                by_shift[name][scenario] = shared[scenario]
                continue
            if say is not None:
                say(f"{scenario} ({name}): {seeds} streams")
            result, n = _scenario(artifact, scenario, ins, shift, seeds, episode_gap, seconds)
            messages += n
            by_shift[name][scenario] = result
            if scenario not in SHIFTED:
                shared[scenario] = result
    cost = {d: round(1_000 * s / messages, 5) for d, s in seconds.items()}
    return {
        "ert": ert,
        "model_version": artifact.version,
        "scenarios": next(iter(by_shift.values())),
        "by_shift": by_shift,
        "cost_ms_per_message": {"all": round(sum(cost.values()), 5), **cost},
        "messages_timed": messages,
    }


def _scenario(
    artifact: ModelArtifact,
    scenario: str,
    ins: Signals,
    shift: Signals,
    seeds: int,
    episode_gap: int,
    seconds: dict[str, float],
) -> tuple[dict[str, Any], int]:
    """One scenario over ``seeds`` streams: each detector alone, the combined alert stream, the
    trivial baseline. Adds each detector's ``update`` time to ``seconds``."""
    assert artifact.drift is not None
    ert = artifact.drift.ert
    per_detector: dict[str, list[list[int]]] = {}
    combined: list[list[int]] = []
    baseline: list[list[int]] = []
    length = messages = 0
    change: int | None = None
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        stream, change = _stream(scenario, ins, shift, rng)
        length = len(stream)
        messages += length
        run_starts = []
        for d in artifact.drift.detectors():
            times = []
            began = time.perf_counter()
            for t, sig in enumerate(stream):
                if d.update(sig):
                    times.append(t)
            seconds[d.name] = seconds.get(d.name, 0.0) + time.perf_counter() - began
            starts = _episode_starts(times, episode_gap)
            per_detector.setdefault(d.name, []).append(starts)
            run_starts += starts
        combined.append(sorted(run_starts))
        # The trivial baseline: an alarm every ERT messages, at a random phase.
        phase = int(rng.integers(0, int(ert)))
        baseline.append(list(range(phase, length, int(ert))))
    result = {"combined": _summarise(combined, change, length)}
    result.update({name: _summarise(runs, change, length) for name, runs in per_detector.items()})
    result["baseline"] = _summarise(baseline, change, length)
    return result, messages


def table(result: dict[str, Any]) -> str:
    """Markdown: per shifted data set, a row per scenario and a column per detector (false
    alarms per 10k on the stationary stream; else median / p90 delay and the share missed).

    >>> r = {"by_shift": {"x.jsonl": {"stationary": {"combined": {"false_alarms_per_10k": 0.25}},
    ...      "abrupt": {"combined": {"median_delay": 6.0, "p90_delay": 7.4, "missed_rate": 0.0}}}},
    ...      "cost_ms_per_message": {"all": 0.02}}
    >>> print(table(r))
    | data set | scenario | combined |
    |---|---|---|
    | x.jsonl | stationary: false alarms / 10k | 0.25 |
    | x.jsonl | abrupt: median / p90 delay, missed | 6 / 7, 0% |
    <BLANKLINE>
    cost of all detectors: 0.02 ms per message
    """
    lines: list[str] = []
    for data, scenarios in result["by_shift"].items():
        columns = list(next(iter(scenarios.values())))
        if not lines:
            lines += [
                f"| data set | scenario | {' | '.join(columns)} |",
                "|---|" + "---|" * (len(columns) + 1),
            ]
        for scenario, detectors in scenarios.items():
            label = (
                "stationary: false alarms / 10k"
                if scenario == "stationary"
                else f"{scenario}: median / p90 delay, missed"
            )
            cells = [_cell(detectors.get(c), scenario == "stationary") for c in columns]
            lines.append(f"| {data} | {label} | {' | '.join(cells)} |")
    lines += ["", f"cost of all detectors: {result['cost_ms_per_message']['all']:g} ms per message"]
    return "\n".join(lines)


def _cell(m: dict[str, Any] | None, stationary: bool) -> str:
    if m is None:
        return ""
    if stationary:
        return f"{m['false_alarms_per_10k']:.2f}"
    if m["median_delay"] is None:
        return "missed"
    return f"{m['median_delay']:g} / {m['p90_delay']:.0f}, {m['missed_rate']:.0%}"


def load_signals(
    artifact: ModelArtifact,
    embedder: Embedder,
    path: str,
    cache_dir: Path,
    split: str | None,
    ood_label: str,
    want_ood: bool,
) -> Signals:
    """Signals of ``path``'s rows of ``split``: in-distribution rows, or for the shifted stream
    its OOD-labelled rows when it has any (else all its rows)."""
    rows = [r for r in load_rows(path) if split in (None, "any") or r.split == split]
    ood = [r for r in rows if r.label == ood_label]
    rows = (ood or rows) if want_ood else [r for r in rows if r.label != ood_label]
    if not rows:
        raise ValueError(f"{path} has no usable rows with split {split!r}")
    X = cached_embeddings(
        embedder, [r.text for r in rows], cache_dir, artifact.embedder_name + artifact.version
    )
    return signals_for(artifact, X, [r.label for r in rows])
