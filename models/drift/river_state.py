"""River's Page-Hinkley state as plain numbers: the one place that reads River's private fields.

River offers no public way to read or restore a detector's running sums, and pickling would let
a snapshot run code. So this adapter names every private attribute it touches (river 0.26), and
:func:`check` fails loudly, naming the attribute, if a River upgrade renames one;
tests/test_drift.py calls it and checks that a restored detector goes on exactly like one that
never stopped.

>>> from river.drift import PageHinkley
>>> ph = PageHinkley(min_instances=3, threshold=1.0, mode="up")
>>> for x in (0.1, 0.1, 0.2):
...     ph.update(x)
>>> copy = PageHinkley(min_instances=3, threshold=1.0, mode="up")
>>> load(copy, state(ph))
>>> state(copy) == state(ph)
True
"""

from __future__ import annotations

from typing import Any

# Page-Hinkley's running sums: all of its state but the mean and the drift flag.
SUMS = ("_sum_increase", "_sum_decrease", "_min_increase", "_max_decrease")
MEAN, DRIFT = "_x_mean", "_drift_detected"


def check(ph: Any) -> None:
    """Raise if ``ph`` (a ``river.drift.PageHinkley``) lacks an attribute this adapter uses."""
    missing = [a for a in (*SUMS, MEAN, DRIFT) if not hasattr(ph, a)]
    if missing or not hasattr(getattr(ph, MEAN, None), "n"):
        raise RuntimeError(
            f"river's PageHinkley has no {', '.join(missing) or MEAN + '.n'}: this river version is not "
            "supported by models/drift/river_state.py; pin river==0.26.1 or update the adapter"
        )


def statistic(ph: Any) -> float:
    """The upward test statistic Page-Hinkley compares with its threshold."""
    return float(getattr(ph, "_sum_increase") - getattr(ph, "_min_increase"))  # noqa: B009


def count(ph: Any) -> int:
    """Values seen since the last reset."""
    return int(getattr(ph, MEAN).n)


def state(ph: Any) -> dict[str, Any]:
    mean = getattr(ph, MEAN)
    return {
        **{f: float(getattr(ph, f)) for f in SUMS},
        "n": float(mean.n),
        "mean": float(mean.get()),
        "drift": bool(ph.drift_detected),
    }


def load(ph: Any, saved: dict[str, Any]) -> None:
    from river import stats

    for f in SUMS:
        setattr(ph, f, float(saved[f]))
    mean = stats.Mean()
    if saved["n"]:
        mean.update(saved["mean"], w=saved["n"])  # public API: a mean of n values at `mean`
    setattr(ph, MEAN, mean)
    setattr(ph, DRIFT, bool(saved["drift"]))
