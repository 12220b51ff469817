"""``streamscore bench --json`` measures what docs/design.md lists, on a real broker and worker.

Figures are checked for shape and sanity only: performance targets live in the bench output
and the README, not in timed tests.
"""

import os
import statistics

import pytest

from tests.conftest import cli, last_json

pytestmark = pytest.mark.integration


def test_bench_reports_every_figure(kafka, trained_registry):
    proc = cli(
        "bench",
        "--registry", str(trained_registry),
        "--bootstrap-servers", kafka,
        "--messages", "300",
        "--repeats", "2",
        "--naive-messages", "40",
        "--latency-seconds", "2",
        "--latency-windows", "2",
        "--json",
        timeout=900,
    )  # fmt: skip
    out = last_json(proc)
    assert len(proc.stdout.strip().splitlines()) == 1 and "[bench]" in proc.stderr  # progress under --json
    for key in (
        "raw_encode_per_s",
        "worker_encode_per_s",
        "e2e_msgs_per_s",
        "naive_msgs_per_s",
        "worker_rss_mb",
    ):
        assert out[key] > 0, (key, out)
    assert out["messages"] == 300 and out["naive_messages"] == 40 and out["repeats"] == 2
    assert out["backend"] == "torch" and out["device"] in ("cpu", "cuda")
    assert out["e2e_msgs_per_s_by_backend"] == {"torch": out["e2e_msgs_per_s"]}
    for load in ("load_50", "load_90"):
        lat = out["latency_ms"][load]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and lat["n"] >= 50
    # The loads are shares of the median end-to-end run (rates rounded to 0.1).
    full = statistics.median(out["e2e_runs_per_s_by_backend"]["torch"])
    assert out["latency_ms"]["full_rate_per_s"] == pytest.approx(full, abs=0.15), out["latency_ms"]
    for load, share in (("load_50", 0.5), ("load_90", 0.9)):
        assert out["latency_ms"][load]["rate_per_s"] == pytest.approx(share * full, abs=0.15), out[
            "latency_ms"
        ]
    # Half load in two windows, a new worker each; the percentiles pool both windows' messages.
    half = out["latency_ms"]["load_50"]
    windows = half["windows"]
    assert len(windows) == 2 and half["n"] == sum(w["n"] for w in windows), half
    for w in windows:
        assert 0 < w["p50"] <= w["p95"] <= w["p99"] and w["n"] >= 50, half
        # Where the CPU went in the window: the worker scored and the bench produced and read,
        # and the machine was at least as busy as the two together (ticks of 10 ms: a margin).
        cpu = w["cpu_cores"]
        assert cpu["worker"] > 0.05 and cpu["bench"] > 0.01, cpu
        assert cpu["machine_busy"] + 0.1 >= cpu["worker"] + cpu["bench"] + cpu["children"], cpu
        assert cpu["cores"] == os.cpu_count() and cpu["steal"] >= 0, cpu
        # The window's micro-batches, from the worker's metrics: exactly its messages (neither
        # the warm-up's last batch nor one of its own counted late), in batches within the limit.
        assert w["texts"] == w["n"], w
        assert w["batches"] >= 1 and 1 <= w["texts_per_batch"] <= out["batch_size"], w
        assert w["texts_per_batch"] == pytest.approx(w["n"] / w["batches"], abs=0.051), w
        if out["encoder_threads"] >= 2:  # the encode pool ran the forwards, and counted them
            assert w["forwards"] >= 1 and 0 <= w["forwards_split"] <= w["forwards"], w
    assert half["p99_median_of_windows"] == pytest.approx(
        statistics.median(w["p99"] for w in windows), abs=0.1
    )
    # Two turns, each a raw pass, the worker's run and a raw pass: each ratio compares the run
    # with the raw passes around it, and the figure is the median over the turns.
    raw, runs = out["raw_runs_per_s"], out["e2e_runs_per_s_by_backend"]["torch"]
    assert len(raw) == 4 and len(runs) == 2 and out["raw_encode_per_s"] == max(raw), out
    assert out["e2e_msgs_per_s"] == max(runs), out
    for t, ratio in enumerate(out["ratios_by_turn"]["e2e_over_raw"]):
        assert ratio == pytest.approx(runs[t] / ((raw[2 * t] + raw[2 * t + 1]) / 2), rel=2e-3), out
    naive = out["naive_runs_per_s"]
    assert len(naive) == 2 and out["naive_msgs_per_s"] == max(naive), out
    for t, ratio in enumerate(out["ratios_by_turn"]["e2e_over_naive"]):
        # The printed rates are rounded to 0.1: on a loaded machine the naive consumer runs at
        # a few messages per second, where that rounding alone moves the ratio by 0.5% or more.
        rounding = 0.05 / naive[t] + 0.05 / runs[t]
        assert ratio == pytest.approx(runs[t] / naive[t], rel=rounding + 1e-3), out
    for name in ("e2e_over_raw", "e2e_over_naive"):
        assert out["ratios"][name] == pytest.approx(statistics.median(out["ratios_by_turn"][name]), abs=1e-3)
    assert out["encoder_threads"] >= 1
    assert set(out["encode_ms_per_text_by_batch"]) == {"1", "8", "64"}
    assert all(v > 0 for v in out["encode_ms_per_text_by_batch"].values())
    assert out["worker_encode_per_s_by_backend"] == {"torch": out["worker_encode_per_s"]}
    # The encoder-free run found every text in the worker's cache, so it encoded none.
    free = out["encoder_free"]
    assert free["cache_hit_ratio"] == 1.0 and free["per_s"] > 0 and free["messages"] == 300, free
    assert out["ratios"]["encoder_free_over_torch_e2e"] == round(free["per_s"] / out["e2e_msgs_per_s"], 3)
    # Two workers in one consumer group, a core each: both took partitions and scored messages.
    scale = out["scale_out"]
    if len(os.sched_getaffinity(0)) < 2:  # nothing to hold two workers apart: said, not faked
        assert "needs 2 CPU cores" in scale["skipped"], scale
        return
    assert scale["one_worker_per_s"] > 0 and scale["two_workers_per_s"] > 0, scale
    # The rates are printed rounded to 0.1/s, the speedup from the unrounded ones: 0.01 apart at most.
    assert abs(scale["speedup"] - scale["two_workers_per_s"] / scale["one_worker_per_s"]) <= 0.01, scale
    assert len(scale["shares"]) == 2 and all(share > 0 for share in scale["shares"]), scale
    assert sum(scale["scored_by_worker"]) == scale["messages"] * scale["repeats"], scale


def test_bench_backlog_drains_waiting_messages_and_counts_what_each_guarantee_holds(
    kafka, trained_registry, broker_kind
):
    """``bench --backlog``: messages already waiting, a fresh worker drains them, a second one
    joins. Exactly-once (where the broker has transactions) holds a producer per partition."""
    exactly_once = broker_kind == "apache-kafka"
    proc = cli(
        "bench",
        "--registry", str(trained_registry),
        "--bootstrap-servers", kafka,
        "--backlog",
        "--backlog-partitions", "3",
        "--messages", "600",
        *(["--exactly-once"] if exactly_once else []),
        "--json",
        timeout=600,
    )  # fmt: skip
    out = last_json(proc)
    backlog = out["backlog"]
    guarantees = ["exactly_once", "at_least_once"] if exactly_once else ["at_least_once"]
    assert [(r["guarantee"], r["partitions"]) for r in backlog["runs"]] == [(g, 3) for g in guarantees]
    for run in backlog["runs"]:
        assert run["messages"] == 600 and run["peak_rss_mb"] > 0, run
        assert run["start_s"] > 0 and run["join_s"] > 0 and run["after_join_s"] > 0, run
        assert 0 < run["scored_first"] <= 600, run
        if run["guarantee"] == "exactly_once" and run["scored_first"] == 600:
            # Its first transaction committed the whole backlog (slow while the broker made its
            # transaction log): no rate to give, and it says so instead of a made-up one.
            assert run["per_s"] is None, run
            continue
        # Rated over what it scored after the first look found it scoring (polled every 50 ms).
        assert run["scored_first"] < 600 and run["per_s"] > 0, run
        assert run["per_s"] == pytest.approx((600 - run["scored_first"]) / run["drain_s"], rel=0.02), run
    sockets = {r["guarantee"]: r["sockets"] for r in backlog["runs"]}
    if exactly_once:  # a transactional producer, and so a connection, for each of the 3 partitions
        assert sockets["exactly_once"] >= sockets["at_least_once"] + 3, sockets
        rates = {r["guarantee"]: r["per_s"] for r in backlog["runs"]}
        expected = (
            None
            if rates["exactly_once"] is None
            else round(rates["exactly_once"] / rates["at_least_once"], 3)
        )
        assert backlog["ratios"]["exactly_once_over_at_least_once_3"] == expected, backlog
    assert out["cpu"] and out["commit_interval_s"] > 0
