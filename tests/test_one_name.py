"""One installed name (issue 36): the wheel holds ``streamscore`` and nothing beside it, and a
project with packages of its own called ``models`` or ``training`` keeps them and still scores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_one_top_level_name_with_its_data(tmp_path):
    source = tmp_path / "source"  # a copy: a build leaves build/ and *.egg-info beside its sources
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (source / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ("streamscore", "streams", "models", "schemas", "training"):
        shutil.copytree(
            ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("streamscore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("streamscore-")} == {"streamscore"}
    for part in ("streams/cli.py", "models/scoring.py", "schemas/messages.py", "training/fit.py"):
        assert f"streamscore/{part}" in names
    assert "streamscore/schemas/json/texts.scored.schema.json" in names  # package data
    assert any(n.startswith("streamscore/streams/ui/templates/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "streamscore = streamscore.streams.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_a_project_with_its_own_models_and_training_packages_keeps_them_and_scores(
    tmp_path, trained_registry
):
    for name in ("models", "training"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"WHO = 'the user project: {name}'\n")
    script = f"""
import json, models, training
import streamscore
out = streamscore.load_model(registry={str(trained_registry)!r}).score(["my card was declined"])
import models as again
print(json.dumps({{"models": again.WHO, "training": training.WHO, "label": out.records[0].label}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["models"] == "the user project: models" and said["training"] == "the user project: training"
    assert said["label"]
