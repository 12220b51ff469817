"""The model registry: versioned artifacts under ``<root>/models/`` and the CURRENT pointer.

>>> import tempfile
>>> reg = Registry(tempfile.mkdtemp())
>>> reg.current() is None, reg.next_version()
(True, 'v0001')
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from streamscore.models.artifact import ArtifactError, ModelArtifact, load_artifact

_VERSION = re.compile(r"^v(\d+)$")


@dataclass
class Registry:
    root: Path | str

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def models_dir(self) -> Path:
        return Path(self.root) / "models"

    @property
    def current_file(self) -> Path:
        return self.models_dir / "CURRENT"

    def versions(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        found = [p.name for p in self.models_dir.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def find(self, name: str) -> str | None:
        """The version ``name`` stands for (``v0003``, or ``v3`` for it), None if there is none.

        >>> import tempfile
        >>> reg = Registry(tempfile.mkdtemp()); reg.path_of("v0003").mkdir(parents=True)
        >>> reg.find("v3"), reg.find("v0003"), reg.find("v4"), reg.find("three")
        ('v0003', 'v0003', None, None)
        """
        if not _VERSION.match(name):
            return None
        return next((v for v in (name, f"v{int(name[1:]):04d}") if self.path_of(v).is_dir()), None)

    def next_version(self) -> str:
        existing = [int(v[1:]) for v in self.versions()]
        return f"v{(max(existing) + 1) if existing else 1:04d}"

    def path_of(self, version: str) -> Path:
        return self.models_dir / version

    def current(self) -> str | None:
        try:
            text = self.current_file.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    @property
    def history_file(self) -> Path:
        return self.models_dir / "HISTORY"

    def set_current(self, version: str, record: bool = True) -> None:
        """Point CURRENT at ``version`` (checked loadable first); atomic for readers."""
        load_artifact(self.path_of(version))
        tmp = self.current_file.with_suffix(".tmp")
        tmp.write_text(version + "\n")
        os.replace(tmp, self.current_file)
        if record:
            with open(self.history_file, "a") as f:
                f.write(version + "\n")

    def history(self) -> list[str]:
        """Versions that were CURRENT, oldest first (one line each in ``HISTORY``)."""
        try:
            return [v for v in self.history_file.read_text().split() if v]
        except FileNotFoundError:
            return []

    def rollback(self) -> str:
        """Make the version that served before the present one CURRENT again."""
        hist = self.history()
        current = self.current()
        while hist and hist[-1] == current:
            hist.pop()
        if not hist:
            raise ArtifactError(f"nothing to roll back to: {current} is the only model that has served")
        previous = hist[-1]
        self.set_current(previous, record=False)
        self.history_file.write_text("".join(v + "\n" for v in hist))
        return previous

    def describe(self) -> list[dict]:
        """One row per version: validation metrics, strategy, whether it is CURRENT."""
        current = self.current()
        rows = []
        for version in self.versions():
            try:
                manifest = json.loads((self.path_of(version) / "manifest.json").read_text())
            except (OSError, ValueError):
                rows.append(
                    {
                        "version": version,
                        "current": version == current,
                        "broken": True,
                        "created_at": "?",
                        "ood_strategy": "?",
                        "val": {},
                    }
                )
                continue
            val = manifest.get("metrics", {}).get("val", {})
            keys = ("accuracy", "macro_f1", "ood_auroc", "ood_fpr95")
            rows.append(
                {
                    "version": version,
                    "current": version == current,
                    "created_at": manifest.get("created_at", "?"),
                    "ood_strategy": manifest.get("ood", {}).get("strategy", "?"),
                    "val": {k: val[k] for k in keys if k in val},
                }
            )
        return rows

    def resolve(self, model: str | None) -> Path:
        """A ``--model`` argument (None = CURRENT, a version, or a directory) → artifact folder."""
        if model is None:
            current = self.current()
            if current is None:
                raise ArtifactError(
                    f"no model in registry {self.root}: run `streamscore train --data FILE "
                    f"--registry {self.root}` first, or pass --model"
                )
            return self.path_of(current)
        version = self.find(model)
        if version is not None:
            return self.path_of(version)
        path = Path(model)
        if path.is_dir():
            return path
        raise ArtifactError(
            f"model {model!r} is neither a version in {self.models_dir} ({', '.join(self.versions()) or 'none'}) "
            "nor an artifact directory"
        )

    def load(self, model: str | None = None) -> ModelArtifact:
        return load_artifact(self.resolve(model))
