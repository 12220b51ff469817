"""Online drift detectors calibrated to an expected run time (ERT), and the episode monitor.

One detector per file, as River does: each sees one :class:`Signal` per scored message, keeps
its state in plain numbers (``state()`` / ``load_state()``) and reports ``statistic`` against
``threshold``; its ``calibrate_*`` function sets the threshold by simulation on held-out
in-distribution signals so that, on a stationary stream, the mean number of messages between
false alarms is the configured ERT. ``calibration`` fits the whole set at training time;
``monitor`` turns alarms into one alert per episode. Pure logic: no Kafka, no torch.
May import numpy, river and ``models``; nothing from ``streams`` or ``training``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> det = OodCusum(mean=0.0, std=1.0, threshold=20.0)
>>> any(det.update_value(x) for x in rng.normal(0, 1, 500))
False
>>> any(det.update_value(x) for x in rng.normal(3, 1, 50))
True
"""

from streamscore.models.drift.calibration import HEADROOM, N_DETECTORS, DriftCalibration, calibrate_drift
from streamscore.models.drift.confidence_drop import ConfidenceDrop, calibrate_confidence_drop
from streamscore.models.drift.embedding_shift import (
    EmbeddingCentre,
    EmbeddingShift,
    calibrate_embedding_shift,
)
from streamscore.models.drift.embedding_spread import EmbeddingSpread, calibrate_embedding_spread
from streamscore.models.drift.label_mix import LabelMix, calibrate_label_mix
from streamscore.models.drift.label_shift import LabelShift, calibrate_label_shift, g_statistic
from streamscore.models.drift.monitor import DriftMonitor, Episode
from streamscore.models.drift.ood_cusum import OodCusum, calibrate_cusum
from streamscore.models.drift.signal import Detector, Signal

__all__ = [
    "HEADROOM",
    "N_DETECTORS",
    "ConfidenceDrop",
    "Detector",
    "DriftCalibration",
    "DriftMonitor",
    "EmbeddingCentre",
    "EmbeddingShift",
    "EmbeddingSpread",
    "Episode",
    "LabelMix",
    "LabelShift",
    "OodCusum",
    "Signal",
    "calibrate_confidence_drop",
    "calibrate_cusum",
    "calibrate_drift",
    "calibrate_embedding_shift",
    "calibrate_embedding_spread",
    "calibrate_label_mix",
    "calibrate_label_shift",
    "g_statistic",
]
