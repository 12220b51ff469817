"""``streamscore train``: embed, fit head and OOD scorer, set the threshold, save, maybe promote."""

from __future__ import annotations

import copy
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from streamscore.models.artifact import (
    ArtifactError,
    ModelArtifact,
    load_artifact,
    save_artifact,
    sha256_file,
)
from streamscore.models.drift import calibrate_drift
from streamscore.models.drift.calibration import EmbeddingTest, LabelTest
from streamscore.models.embedder import DEFAULT_MODEL, Embedder, resolve_model_path
from streamscore.models.head import LinearHead
from streamscore.models.ood import KEEP_IN_DIST, OODScorer, ood_threshold
from streamscore.models.registry import Registry
from streamscore.models.themes import Background, label_centres
from streamscore.training.data import Columns, read_labelled, training_splits
from streamscore.training.evaluate import evaluate_embeddings
from streamscore.training.finetune import FinetuneConfig, finetune_encoder

HEAD_C_GRID = (3.0, 10.0, 30.0, 100.0)
BACKGROUND_TOKENS = 20_000  # distinct tokens kept of the training texts' document frequencies


def fit_head(
    X_tr: np.ndarray, y_tr: list[str], X_va: np.ndarray, y_va: list[str], c: float | None
) -> tuple[LinearHead, dict[str, float]]:
    """Fit the head; with ``c`` None, fit each C of the grid and keep the best on validation.

    Ties go to the smaller C (the stronger regularisation).
    """
    if c is not None:
        return LinearHead.fit(X_tr, y_tr, c=c), {"chosen": c}
    fitted = [LinearHead.fit(X_tr, y_tr, c=grid_c) for grid_c in HEAD_C_GRID]
    accuracy = [float(np.mean(np.array(h.predict(X_va)) == np.array(y_va))) for h in fitted]
    best = max(range(len(fitted)), key=lambda i: (accuracy[i], -i))
    report = {f"{grid_c:g}": acc for grid_c, acc in zip(HEAD_C_GRID, accuracy, strict=True)}
    return fitted[best], {**report, "chosen": HEAD_C_GRID[best]}


@dataclass
class TrainConfig:
    """What ``train`` fits; defaults are the measured best (docs/models.md, Scoring quality)."""

    ood_label: str = "oos"
    embedder: str = DEFAULT_MODEL
    # msp+knn: best near-OOD on two of three data sets, close on the third (docs/models.md).
    ood_strategy: str = "msp+knn"
    # Labels kept out of training and threshold setting, to be scored as near-OOD (evaluate
    # reads them from the manifest): a check of how a new, similar intent is noticed.
    withhold: tuple[str, ...] = ()
    head_c: float | None = None  # None: pick from HEAD_C_GRID by validation accuracy
    finetune_epochs: float = 2.0  # 0: keep the encoder frozen
    drift_ert: float = 10_000.0  # messages between false drift alarms, all detectors together
    # The label and embedding tests of the drift detectors; the others are the older, slower
    # tests, kept to compare (docs/drift.md).
    drift_label_test: LabelTest = "mix"
    drift_embedding_test: EmbeddingTest = "centre+spread"
    keep_in_dist: float = KEEP_IN_DIST  # share of in-distribution validation texts that pass the OOD gate
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"


@dataclass
class TrainResult:
    version: str
    path: Path
    metrics: dict[str, Any]
    promoted: bool
    decision: str
    timings_s: dict[str, float] = field(default_factory=dict)
    compared_with: dict[str, Any] | None = None  # CURRENT's metrics on the same validation rows

    def as_json(self) -> dict[str, Any]:
        return {
            "compared_with": self.compared_with,
            "version": self.version,
            "path": str(self.path),
            "promoted": self.promoted,
            "decision": self.decision,
            "val": self.metrics,
            "timings_s": self.timings_s,
        }


def _library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("numpy", "scikit-learn", "torch", "sentence-transformers", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _finetune_summary(info: dict[str, Any]) -> str:
    """One line on how fine-tuning went: where it stopped and why, where texts were cut."""
    text = f"fine-tuned {info['steps']} of {info['steps_planned']} steps"
    if info.get("checks"):
        best = next(c for c in info["checks"] if c["epoch"] == info["best_epoch"])
        if info.get("stopped_early"):
            text += f", stopped at epoch {info['checks'][-1]['epoch']:g}: no better on validation since"
        else:
            text += "; best on validation at"
        text += f" epoch {best['epoch']:g} (accuracy {best['val_accuracy']:.4f}, its weights kept)"
    return text + f"; texts cut at {info['max_seq_length']} tokens ({info['texts_cut']} longer)"


def decide_promotion(
    new: dict[str, Any], current: dict[str, Any] | None, current_version: str | None, force: bool
) -> tuple[bool, str]:
    """Promote when the new model beats CURRENT on the same validation data (accuracy, then AUROC)."""
    if current is None:
        return True, "no serving model yet: promoted"
    keys = ["accuracy"] + (["ood_auroc"] if "ood_auroc" in new and "ood_auroc" in current else [])
    for key in keys:
        diff = new[key] - current[key]
        if abs(diff) > 1e-9:
            verdict = diff > 0
            text = (
                f"{key} {new[key]:.4f} vs {current[key]:.4f} for {current_version} on the same "
                f"validation data ({diff:+.4f})"
            )
            if verdict:
                return True, f"promoted: {text}"
            if force:
                return True, f"promoted by --force although {text}"
            return False, f"not promoted: {text}; use --force or `streamscore models promote`"
    if force:
        return True, f"promoted by --force; ties {current_version} on {', '.join(keys)}"
    return False, f"not promoted: ties {current_version} on {', '.join(keys)}"


def train(
    data: str | Path,
    registry: Registry,
    config: TrainConfig | None = None,
    *,
    force: bool = False,
    promote: bool = True,
    quiet: bool = False,
    embedder: Embedder | None = None,
    columns: Columns | None = None,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Fit a model on ``data`` and register it (promoting it if it beats CURRENT). ``cache_dir``:
    where an encoder that is not fine-tuned may be loaded from its saved trace (models/saved_trace.py)."""
    import time

    cfg = config or TrainConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    labelled = read_labelled(data, columns)
    unknown = sorted(set(cfg.withhold) - {r.label for r in labelled.rows})
    if unknown:
        raise ValueError(f"--withhold {', '.join(unknown)}: no such label in {data}")
    rows = [r for r in labelled.rows if r.label not in cfg.withhold]
    if labelled.split_made:
        _say(labelled.split_made, quiet)
    splits = training_splits(rows, cfg.ood_label, cfg.val_fraction, cfg.seed)
    if len({r.label for r in splits.train}) < 2:
        raise ValueError(f"{data}: training needs at least two labels among its train rows")
    _say(
        f"training on {len(splits.train)} rows, validating on {len(splits.val)} ({splits.val_source}); "
        f"{sum(r.label == cfg.ood_label for r in rows)} '{cfg.ood_label}' rows kept out of training",
        quiet,
    )
    emb = embedder or Embedder.load(
        cfg.embedder, cfg.device, cache_dir=None if cfg.finetune_epochs > 0 else cache_dir
    )
    progress = not quiet and sys.stderr.isatty()
    y_tr = [r.label for r in splits.train]
    finetune_info = None
    if cfg.finetune_epochs > 0:
        emb = copy.deepcopy(emb)  # never change a caller's (or a cached) encoder in place
        _say(f"fine-tuning {emb.name} for {cfg.finetune_epochs:g} epoch(s) on {len(y_tr)} texts", quiet)
        t = time.perf_counter()
        ft_cfg = FinetuneConfig(epochs=cfg.finetune_epochs, seed=cfg.seed)
        finetune_info = {
            **asdict(ft_cfg),
            **finetune_encoder(
                emb,
                [r.text for r in splits.train],
                y_tr,
                ft_cfg,
                progress,
                val_texts=[r.text for r in splits.val],
                val_labels=[r.label for r in splits.val],
            ),
        }
        _say(_finetune_summary(finetune_info), quiet)
        timings["finetune"] = time.perf_counter() - t
    texts = [r.text for r in splits.train + splits.val + splits.val_ood]
    t = time.perf_counter()
    X_all = emb.encode(texts, progress=progress)
    timings["embed"] = time.perf_counter() - t
    n_tr, n_va = len(splits.train), len(splits.val)
    X_tr, X_va, X_vo = X_all[:n_tr], X_all[n_tr : n_tr + n_va], X_all[n_tr + n_va :]

    t = time.perf_counter()
    head, c_search = fit_head(X_tr, y_tr, X_va, [r.label for r in splits.val], cfg.head_c)
    ood = OODScorer.fit(cfg.ood_strategy, X_tr, y_tr, head.labels, X_val=X_va, head=head)
    timings["fit"] = time.perf_counter() - t
    val_ood_scores = ood.score(X_va, head)
    threshold = ood_threshold(val_ood_scores, cfg.keep_in_dist)
    t = time.perf_counter()
    val_probs = head.predict_proba(X_va)
    drift = calibrate_drift(
        X_tr,
        X_va,
        val_ood_scores,
        val_probs.max(axis=1),
        val_probs.argmax(axis=1),
        len(head.labels),
        ert=cfg.drift_ert,
        seed=cfg.seed,
        label_test=cfg.drift_label_test,
        embedding_test=cfg.drift_embedding_test,
    )
    timings["drift_calibration"] = time.perf_counter() - t

    version = registry.next_version()
    manifest: dict[str, Any] = {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "embedder": {
            "name": emb.name,
            "revision": emb.weights_size,
            "dim": emb.dim,
            "finetuned": finetune_info,
        },
        "head": {"kind": "linear_softmax", "c": c_search["chosen"], "val_accuracy_by_c": c_search},
        "thresholds": {"ood": threshold, "keep_in_dist": cfg.keep_in_dist},
        "training_data": {
            "path": str(data),
            "sha256": sha256_file(Path(data)),
            "rows_train": n_tr,
            "rows_val": n_va,
            "rows_val_ood": len(splits.val_ood),
            "val_source": splits.val_source,
            "split_made": labelled.split_made,
            "withheld": sorted(cfg.withhold),
            "columns": asdict(columns or Columns()),
            "ood_label": cfg.ood_label,
            "seed": cfg.seed,
        },
        "libraries": _library_versions(),
    }
    candidate = ModelArtifact(version, dict(manifest, labels=head.labels), head, ood)
    val_labels = [r.label for r in splits.val + splits.val_ood]
    X_val = np.concatenate([X_va, X_vo]) if len(X_vo) else X_va
    metrics = evaluate_embeddings(candidate, X_val, val_labels, cfg.ood_label)
    manifest["metrics"] = {"val": metrics}
    encoder = emb.model if finetune_info else None
    centres = label_centres(X_tr, y_tr, head.labels)
    path = save_artifact(
        registry.path_of(version),
        manifest,
        head,
        ood,
        encoder=encoder,
        drift=drift,
        label_centres=centres,
        background=Background.of([r.text for r in splits.train], limit=BACKGROUND_TOKENS),
    )
    timings["total"] = time.perf_counter() - t0

    current_version = registry.current()
    current_metrics = None
    if current_version is not None:
        try:
            current = load_artifact(registry.path_of(current_version))
            # Compare on the same rows, each model through its own encoder.
            X_cur = X_val
            if finetune_info or resolve_model_path(current.embedder_name) != resolve_model_path(emb.name):
                cur_emb = Embedder.load(current.embedder_name, cfg.device, cache_dir=cache_dir)
                X_cur = cur_emb.encode([r.text for r in splits.val + splits.val_ood], progress=progress)
            current_metrics = evaluate_embeddings(current, X_cur, val_labels, cfg.ood_label)
        except (ArtifactError, RuntimeError) as exc:
            _say(f"serving model {current_version} cannot be loaded ({exc}); replacing it", quiet)
            current_version = None
    promoted, decision = decide_promotion(metrics, current_metrics, current_version, force)
    if promoted and promote:
        registry.set_current(version)
    elif not promote:
        promoted, decision = False, "not promoted: --no-promote"
    compared = {"version": current_version, "val": current_metrics} if current_metrics else None
    return TrainResult(version, path, metrics, promoted, decision, timings, compared)
