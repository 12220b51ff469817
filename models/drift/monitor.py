"""Drift episodes and alerts: detector alarms → one ``drift`` alert per episode, then ``resolved``.

A detector's alarm starts an episode unless one is open (then it is folded into it) or the
detector is cooling down after its last episode. An episode ends when the detector has not
alarmed for ``quiet`` messages, and a ``resolved`` alert closes it. The monitor's whole state
is plain JSON (``state`` / ``load_state``), so the drift agent can snapshot it to Kafka and a
restarted worker carries on mid-episode without relearning or repeating an alert.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from streamscore.models.drift import snapshot
from streamscore.models.drift.calibration import DriftCalibration
from streamscore.models.drift.evidence import EpisodeEvidence
from streamscore.models.drift.explain import Explainer
from streamscore.models.drift.signal import Detector, Signal
from streamscore.schemas.drift import AlertStatus, AlertWindow, DriftAlert, episode_record
from streamscore.schemas.messages import now_iso

LEAD = 50  # latest foreign signals kept for an episode about to start
HISTORY = 1_000  # latest messages' label, confidence and foreign flag, for the same
FOREIGN_KEYS = ("id", "text", "ood_score", "confidence", "label", "embedding")

SIGNAL_OF = {
    "ood_cusum": "ood_score",
    "confidence_drop": "confidence",
    "label_shift": "predicted_label",
    "embedding_shift": "embedding_projection",
}
REFERENCE_OF = {
    "ood_cusum": "mean and spread of OOD scores on held-out training-distribution texts",
    "confidence_drop": "the stream's own running mean of 1 - confidence (Page-Hinkley)",
    "label_shift": "predicted-label mix on held-out training-distribution texts",
    "embedding_shift": "mean embedding projection and distance from it on held-out training-distribution texts",
}


@dataclass
class Episode:
    """Where one detector stands: in an episode or not, and since when."""

    open: bool = False
    alert_id: str | None = None
    started_at: int = 0  # message count (``seen``) when it started
    last_alarm: int = -(10**12)
    last_resolved: int = -(10**12)
    alarms: int = 0


@dataclass
class DriftMonitor:
    """Feeds signals to the calibrated detectors of one model version and emits alerts."""

    calibration: DriftCalibration
    model_version: str
    quiet: int = 1_000
    cooldown: int = 500
    seen: int = 0
    last_offset: int = -1  # position of the last signal observed: drift.signals offset, index in it
    last_index: int = -1
    detectors: list[Detector] = field(default_factory=list)
    episodes: dict[str, Episode] = field(default_factory=dict)
    recent: list[tuple[int, int | None]] = field(default_factory=list)  # (offset, timestamp_ms)
    # Explanations (None: alerts carry none). A signal whose OOD score is above ``ood_threshold``
    # is foreign; ``lead`` holds the latest foreign signals, so an episode's evidence starts with
    # those its detector's alarm was built on.
    explainer: Explainer | None = None
    ood_threshold: float = float("inf")
    evidence: dict[str, EpisodeEvidence] = field(default_factory=dict)
    lead: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (seen, foreign signal)
    history: list[tuple[int, float, bool]] = field(
        default_factory=list
    )  # latest (label, confidence, foreign)
    published: dict[str, int] = field(default_factory=dict)  # episode → ``seen`` at its last record

    def __post_init__(self) -> None:
        if not self.detectors:
            self.detectors = self.calibration.detectors()
        for d in self.detectors:
            self.episodes.setdefault(d.name, Episode())

    def observe(self, record: dict[str, Any], offset: int, index: int = 0) -> list[DriftAlert]:
        """Signal ``index`` of the ``drift.signals`` record at ``offset``; returns the alerts it causes."""
        if (offset, index) <= (self.last_offset, self.last_index):
            return []  # already reflected in the state we resumed from
        self.last_offset, self.last_index = offset, index
        self.seen += 1
        self.recent.append((offset, record.get("timestamp_ms")))
        if len(self.recent) > 1_000:
            del self.recent[:500]
        sig = Signal(record["ood_score"], record["confidence"], record["label"], tuple(record["projection"]))
        foreign = sig.ood_score > self.ood_threshold
        if self.explainer is not None:
            for ev in self.evidence.values():
                ev.add(record, foreign)
            if foreign and record.get("embedding"):
                self.lead.append((self.seen, {k: record.get(k) for k in FOREIGN_KEYS}))
                del self.lead[:-LEAD]
            self.history.append((int(sig.label), float(sig.confidence), bool(foreign)))
            if len(self.history) > 2 * HISTORY:
                del self.history[:-HISTORY]
        alerts = []
        for det in self.detectors:
            ep = self.episodes[det.name]
            if det.update(sig):
                ep.last_alarm = self.seen
                if ep.open:
                    ep.alarms += 1
                elif self.seen - ep.last_resolved >= self.cooldown:
                    ep.open, ep.started_at, ep.alarms = True, self.seen, 1
                    ep.alert_id = f"{det.name}-{self.model_version}-{offset}-{index}"
                    self._start_evidence(det, record, foreign)
                    alerts.append(self._alert(det, ep, "drift"))
            elif ep.open and self.seen - ep.last_alarm >= self.quiet:
                alerts.append(self._alert(det, ep, "resolved"))
                ep.open, ep.last_resolved = False, self.seen
                self.evidence.pop(det.name, None)
        return alerts

    def _start_evidence(self, det: Detector, record: dict[str, Any], foreign: bool) -> None:
        if self.explainer is None:
            return
        # The episode starts with the messages its alarm was built on (the detector's span):
        # their counts, and the foreign texts among them that ``lead`` still holds.
        span = min(max(det.span, 1), HISTORY)
        ev = EpisodeEvidence(n_labels=len(self.explainer.labels))
        for label, confidence, was_foreign in self.history[-span:-1]:
            ev.count(label, confidence, was_foreign)
        for seen, earlier in self.lead:
            if self.seen - span < seen < self.seen:
                ev.keep_foreign(earlier)
        ev.add(record, foreign)
        self.evidence[det.name] = ev
        self.published[det.name] = self.seen

    def explanation(self, detector: str) -> dict[str, Any] | None:
        ev = self.evidence.get(detector)
        return None if self.explainer is None or ev is None else self.explainer.explain(ev)

    def episode_record(self, detector: str) -> dict[str, Any] | None:
        """The ``drift.episodes`` record of ``detector``'s open episode (None without one)."""
        ep, explanation = self.episodes[detector], self.explanation(detector)
        if ep.alert_id is None or explanation is None:
            return None
        self.published[detector] = self.seen
        return episode_record(
            ep.alert_id, detector, self.model_version, "open", ep.alarms, now_iso(), explanation
        )

    def due_records(self, every: int) -> list[dict[str, Any]]:
        """Records of open episodes that grew by ``every`` messages since their last one."""
        out = []
        for name in self.open_episodes:
            if self.seen - self.published.get(name, self.seen) >= every:
                record = self.episode_record(name)
                if record is not None:
                    out.append(record)
        return out

    def _alert(self, det: Detector, ep: Episode, status: AlertStatus, message: str = "") -> DriftAlert:
        span = det.span if status == "drift" else self.seen - ep.started_at + 1
        window = self.recent[-min(max(span, 1), len(self.recent)) :]
        if not message and status == "drift":
            message = (
                f"{det.name}: {SIGNAL_OF[det.name]} changed (statistic {det.statistic:.3g} > threshold "
                f"{det.threshold:.3g}) against {REFERENCE_OF[det.name]}; look at texts.scored around "
                f"the window's offsets and at the OOD and label panels"
            )
        elif not message:
            message = f"{det.name}: no alarm for {self.quiet} messages; episode {ep.alert_id} ended after {ep.alarms} alarm(s)"
        return DriftAlert(
            explanation=self.explanation(det.name),
            alert_id=ep.alert_id or "",
            detector=det.name,
            signal=SIGNAL_OF[det.name],
            status=status,
            statistic=round(float(det.statistic), 6),
            threshold=round(float(det.threshold), 6),
            window=AlertWindow(window[0][0], window[-1][0], window[0][1], window[-1][1], len(window)),
            model_version=self.model_version,
            reference=REFERENCE_OF[det.name],
            ert=self.calibration.ert,
            alarms_in_episode=ep.alarms,
            detected_at=now_iso(),
            message=message,
        )

    def close_all(self, why: str) -> list[DriftAlert]:
        """``resolved`` alerts for every open episode, when this monitor is being replaced."""
        alerts = []
        for det in self.detectors:
            ep = self.episodes[det.name]
            if ep.open:
                message = (
                    f"{det.name}: episode {ep.alert_id} closed: {why}; detectors restart on its reference"
                )
                alerts.append(self._alert(det, ep, "resolved", message))
                ep.open = False
        return alerts

    @property
    def open_episodes(self) -> list[str]:
        return [name for name, ep in self.episodes.items() if ep.open]

    @property
    def open_episode_ids(self) -> dict[str, str]:
        """Detector → the id of its open episode (its alerts' ``alert_id``)."""
        return {name: ep.alert_id or name for name, ep in self.episodes.items() if ep.open}

    def state(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "seen": self.seen,
            "last_offset": self.last_offset,
            "last_index": self.last_index,
            "recent": self.recent[-500:],
            "detectors": {d.name: d.state() for d in self.detectors},
            "episodes": {name: asdict(ep) for name, ep in self.episodes.items()},
            "evidence": {name: ev.state() for name, ev in self.evidence.items()},
            "lead": self.lead,
            "history": self.history[-HISTORY:],
            "published": self.published,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        state = snapshot.decode(state)  # texts shared between episodes back in place
        self.seen, self.last_offset = int(state["seen"]), int(state["last_offset"])
        # Snapshots from before signals were batched held one signal per offset.
        self.last_index = int(state.get("last_index", 0))
        self.recent = [tuple(x) for x in state["recent"]]  # type: ignore[misc]
        for d in self.detectors:
            d.load_state(state["detectors"][d.name])
        self.episodes = {name: Episode(**ep) for name, ep in state["episodes"].items()}
        # Snapshots from before explanations carry no evidence: the episode's starts afresh.
        self.evidence = {
            name: EpisodeEvidence.from_state(ev) for name, ev in state.get("evidence", {}).items()
        }
        self.lead = [(int(seen), sig) for seen, sig in state.get("lead", [])]
        self.history = [(int(a), float(c), bool(f)) for a, c, f in state.get("history", [])]
        self.published = {name: int(seen) for name, seen in state.get("published", {}).items()}

    def snapshot(self) -> bytes:
        """The state as one ``drift.state`` record, within its byte budget (models/drift/snapshot.py)."""
        return snapshot.encode(self.state())
