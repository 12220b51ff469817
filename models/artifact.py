"""Model artifacts on disk: ``manifest.json`` plus numeric parts in ``.npz``, never pickle.

The manifest lists every file with its SHA-256, so a truncated or edited artifact is refused
before it is used, and ``np.load(..., allow_pickle=False)`` means loading can never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamscore.models.drift import DriftCalibration
from streamscore.models.head import LinearHead
from streamscore.models.ood import OODScorer
from streamscore.models.themes import Background

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(Exception):
    """An artifact that cannot be served; the message says what is wrong and what to do."""


@dataclass
class ModelArtifact:
    """Everything needed to score: labels, head, OOD scorer and threshold, with provenance."""

    version: str
    manifest: dict[str, Any]
    head: LinearHead
    ood: OODScorer
    path: Path | None = None
    drift: DriftCalibration | None = None
    # Mean unit embedding of each label's training texts (rows in ``head.labels`` order): what a
    # theme of foreign texts is compared with. None in artifacts made before it was kept.
    label_centres: np.ndarray | None = None
    # Token document frequencies of the training texts: what a theme's keywords must stand out
    # from. None in artifacts made before it was kept.
    background: Background | None = None

    @property
    def ood_threshold(self) -> float:
        return float(self.manifest["thresholds"]["ood"])

    @property
    def embedder_name(self) -> str:
        """What to load the encoder from: the artifact's own fine-tuned copy, else the named model."""
        emb = self.manifest["embedder"]
        if emb.get("path") and self.path is not None:
            return str(self.path / emb["path"])
        return str(emb["name"])

    @property
    def dim(self) -> int:
        return int(self.manifest["embedder"]["dim"])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


ENCODER_DIR = "encoder"
CENTRES = "centres.npz"
BACKGROUND = "background.json"
# Weight formats that unpickle on load: an artifact may not contain them.
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def save_artifact(
    directory: Path,
    manifest: dict[str, Any],
    head: LinearHead,
    ood: OODScorer,
    encoder: Any = None,
    drift: DriftCalibration | None = None,
    label_centres: np.ndarray | None = None,
    background: Background | None = None,
) -> Path:
    """Write an artifact atomically: into a temporary folder, then renamed into place.

    ``encoder`` is a fine-tuned SentenceTransformer to ship inside the artifact (safetensors).
    """
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _save_npz(tmp / "head.npz", head.to_arrays())
    _save_npz(tmp / "ood.npz", ood.arrays)
    full = dict(manifest)
    if label_centres is not None:
        _save_npz(tmp / CENTRES, {"centres": np.asarray(label_centres, dtype=np.float32)})
    if background is not None:
        (tmp / BACKGROUND).write_text(json.dumps(background.state(), sort_keys=True))
    if drift is not None:
        _save_npz(tmp / "drift.npz", drift.arrays())
        full["drift"] = drift.to_json()
    if encoder is not None:
        encoder.save(str(tmp / ENCODER_DIR), create_model_card=False, safe_serialization=True)
        full["embedder"] = dict(full["embedder"], path=ENCODER_DIR)
    full["format_version"] = FORMAT_VERSION
    full["labels"] = head.labels
    full["ood"] = {"strategy": ood.strategy, "params": ood.params}
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    full["files"] = {name: sha256_file(tmp / name) for name in files}
    with open(tmp / MANIFEST, "w") as f:
        json.dump(full, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, directory)
    return directory


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _check_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Every file listed, present, unchanged and safe to load; nothing unlisted."""
    listed = set(manifest["files"])
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - {MANIFEST}
    for name in sorted(listed | present):
        if name.endswith(UNSAFE_SUFFIXES):
            raise ArtifactError(
                f"{directory}: {name} is a pickle-based format; artifacts must not contain one"
            )
    if present - listed:
        raise ArtifactError(
            f"{directory}: files not in the manifest: {', '.join(sorted(present - listed))}; "
            "an artifact is not edited in place: retrain or restore it"
        )
    for name, digest in manifest["files"].items():
        fpath = directory / name
        if not fpath.is_file():
            raise ArtifactError(f"{directory}: file {name} listed in the manifest is missing")
        if sha256_file(fpath) != digest:
            raise ArtifactError(
                f"{directory}: {name} does not match the SHA-256 in the manifest (truncated or "
                "modified); restore it or retrain"
            )


def load_artifact(directory: Path) -> ModelArtifact:
    """Load and check an artifact; raise :class:`ArtifactError` saying what is wrong."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{directory} is not a model artifact: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{mpath} is not readable JSON ({exc}); retrain or restore it") from exc
    for key in ("version", "labels", "files", "thresholds", "embedder", "ood"):
        if key not in manifest:
            raise ArtifactError(f"{mpath} lacks '{key}': the artifact is incomplete; retrain it")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory}: artifact format {manifest.get('format_version')!r}, this streamscore "
            f"reads format {FORMAT_VERSION}"
        )
    _check_files(directory, manifest)
    try:
        head = LinearHead.from_arrays(manifest["labels"], _load_npz(directory / "head.npz"))
        ood_meta = manifest["ood"]
        ood = OODScorer(ood_meta["strategy"], _load_npz(directory / "ood.npz"), dict(ood_meta["params"]))
        drift = None
        if "drift" in manifest:
            drift = DriftCalibration.from_parts(manifest["drift"], _load_npz(directory / "drift.npz"))
        centres = _load_npz(directory / CENTRES)["centres"] if CENTRES in manifest["files"] else None
        background = None
        if BACKGROUND in manifest["files"]:
            background = Background.from_state(json.loads((directory / BACKGROUND).read_text()))
    except (ValueError, KeyError, OSError) as exc:
        raise ArtifactError(f"{directory}: arrays do not load ({exc}); retrain the model") from exc
    encoder = manifest["embedder"].get("path")
    if encoder and not (directory / str(encoder)).resolve().is_relative_to(directory.resolve()):
        raise ArtifactError(
            f"{directory}: the manifest's embedder path {str(encoder)!r} points outside the artifact; "
            "an artifact carries its own encoder: retrain or restore it"
        )
    dim = int(manifest["embedder"].get("dim", -1))
    if head.weights.shape[1] != dim:
        raise ArtifactError(
            f"{directory}: head expects {head.weights.shape[1]}-d embeddings but the manifest "
            f"says the embedder gives {dim}"
        )
    if centres is not None and centres.shape != (len(head.labels), dim):
        raise ArtifactError(
            f"{directory}: label centres have shape {centres.shape}, not ({len(head.labels)}, {dim}); "
            "retrain the model"
        )
    return ModelArtifact(
        version=str(manifest["version"]),
        manifest=manifest,
        head=head,
        ood=ood,
        path=directory,
        drift=drift,
        label_centres=centres,
        background=background,
    )
