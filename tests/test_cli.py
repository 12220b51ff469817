"""The CLI as a user runs it: registry listing, promotion, rollback, errors that say what to do."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli


def test_models_list_promote_rollback(trained_registry, tmp_path):
    import shutil

    root = tmp_path / "reg"
    shutil.copytree(trained_registry, root)
    v1 = (root / "models" / "CURRENT").read_text().strip()
    # A second version, registered but not serving.
    v2 = "v0002"
    shutil.copytree(root / "models" / v1, root / "models" / v2)
    manifest = json.loads((root / "models" / v2 / "manifest.json").read_text())
    manifest["version"] = v2
    (root / "models" / v2 / "manifest.json").write_text(json.dumps(manifest))

    listing = json.loads(cli("models", "--registry", str(root), "--json").stdout.strip().splitlines()[-1])
    assert listing["current"] == v1
    assert [(r["version"], r["current"]) for r in listing["versions"]] == [(v1, True), (v2, False)]
    assert listing["versions"][0]["val"]["accuracy"] > 0.5

    assert (
        "*" in [line for line in cli("models", "--registry", str(root)).stdout.splitlines() if v1 in line][0]
    )
    cli("models", "promote", v2, "--registry", str(root))
    assert (root / "models" / "CURRENT").read_text().strip() == v2
    out = cli("models", "rollback", "--registry", str(root)).stdout
    assert v1 in out and (root / "models" / "CURRENT").read_text().strip() == v1


def test_promoting_a_broken_version_is_refused(trained_registry, tmp_path):
    import shutil

    root = tmp_path / "reg"
    shutil.copytree(trained_registry, root)
    v1 = (root / "models" / "CURRENT").read_text().strip()
    shutil.copytree(root / "models" / v1, root / "models" / "v0005")
    (root / "models" / "v0005" / "ood.npz").unlink()
    proc = cli("models", "promote", "v0005", "--registry", str(root), check=False)
    assert proc.returncode == 2 and "ood.npz" in proc.stderr and "missing" in proc.stderr
    assert (root / "models" / "CURRENT").read_text().strip() == v1


def test_no_model_says_how_to_train(tmp_path):
    proc = cli(
        "evaluate",
        "--registry",
        str(tmp_path),
        "--data",
        str(ROOT / "datasets/clinc150/clinc150_full.jsonl"),
        check=False,
    )
    assert proc.returncode == 2 and "streamscore train" in proc.stderr


def test_registry_defaults_to_the_environment_then_artifacts(tmp_path):
    env_proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "models", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "STREAMSCORE_REGISTRY": str(tmp_path / "reg")},
    )
    assert env_proc.returncode == 0, env_proc.stderr
    assert json.loads(env_proc.stdout.splitlines()[-1]) == {"current": None, "versions": []}
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "train", "--data", str(tmp_path / "none.jsonl")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "STREAMSCORE_REGISTRY"},
    )
    assert proc.returncode == 2 and "none.jsonl does not exist" in proc.stderr, proc.stderr


@pytest.mark.parametrize("option", ["--repeats", "--latency-windows", "--messages", "--naive-messages"])
def test_bench_refuses_a_count_below_one(option):
    # Refused before anything starts: no model is loaded and no broker is started.
    proc = cli("bench", option, "0", "--json", check=False, timeout=60)
    assert (
        proc.returncode == 2 and f"argument {option}: '0' is not a whole number of at least 1" in proc.stderr
    )
