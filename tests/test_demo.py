"""The README's first command, as a new user runs it: an empty registry, no broker given."""

import re

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration


def test_demo_from_nothing_shows_scores_drift_alert_and_dead_letters(tmp_path):
    proc = cli("demo", "--registry", str(tmp_path / "artifacts"), "--rate", "300", timeout=900)
    out = proc.stdout
    assert "no model in" in out and "started an embedded broker" in out, "it trains and starts what it needs"
    assert re.search(r"scored (\d+) of \1 texts; 3 malformed messages went to texts\.dlq", out), out[-2000:]
    drift_starts = out.index("===== drift phase:")
    drift_ends = out.index("===== drift phase over")
    alert = re.search(r"DRIFT ALERT ood_cusum on ood_score", out)
    assert alert and alert.start() > drift_starts, "the OOD alert comes after the drift starts"
    # The alert arrives within a few dozen messages, well before the 400-message phase is over.
    assert alert.start() < drift_ends, out[drift_starts:drift_ends]
    assert re.search(r"resolved\s+ood_cusum", out[drift_ends:]), (
        "the episode is closed once traffic is normal"
    )
    before, during = re.search(r"OOD rate: ([\d.]+)% before the drift, ([\d.]+)% during it", out).groups()
    assert float(before) < 10 < 30 < float(during)
    assert "streamscore replay" in out and "rescore" in out, "it says where to look next"
    assert (tmp_path / "artifacts" / "demo" / "demo-stream.jsonl").is_file()
