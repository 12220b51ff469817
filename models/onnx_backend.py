"""ONNX Runtime backends for the embedder: ``onnx`` (fp32) and ``onnx-int8`` (dynamic quantisation).

The model is exported once from the local sentence-transformers folder (no network) into a
cache folder, and quantised there for this CPU's instruction set; later loads reuse the files.
``onnx`` gives the torch embeddings to about 1e-7. ``onnx-int8`` is about twice as fast on
CPUs with VNNI and costs a little accuracy (``streamscore evaluate --backend onnx-int8``
reports it); its activations are quantised with a scale taken from the whole batch, so a
text's vector depends slightly on its batch-mates: scores are not bit-reproducible across
replays with that backend (docs/replay.md).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("streamscore.embedder")

DEFAULT_CACHE = Path("~/.cache/streamscore")


def quantisation_target() -> str:
    """The optimum quantisation config: ``arm64`` on ARM, else ``avx512_vnni``.

    ``avx512_vnni`` (signed int8 weights) also suits CPUs without VNNI: it was the fastest on an
    AVX2-only EPYC too (docs/performance-log.md).
    """
    import platform

    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "avx512_vnni"


def export_dir(model_path: str, cache_dir: Path | None = None) -> Path:
    """Where the ONNX export of ``model_path`` lives: one folder per model folder and weights size."""
    src = Path(model_path)
    weights = src / "model.safetensors"
    fingerprint = f"{src.resolve()}:{weights.stat().st_size if weights.exists() else 0}"
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    return (cache_dir or DEFAULT_CACHE).expanduser() / "onnx" / f"{src.name}-{digest}"


def load_onnx_model(
    model_path: str, backend: str, cache_dir: Path | None = None, threads: int | None = None
) -> Any:
    """A SentenceTransformer on ONNX Runtime (CPU), exporting and quantising on first use.

    ``threads`` caps ONNX Runtime's threads per call (None: its default, every core)."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    if backend not in ("onnx", "onnx-int8"):
        raise ValueError(f"unknown ONNX backend {backend!r}; use onnx or onnx-int8")
    target = export_dir(model_path, cache_dir)
    file_name = _exported_file(target, backend)
    if file_name is None:
        _export(model_path, target, backend)
        file_name = _exported_file(target, backend)
        if file_name is None:
            raise RuntimeError(f"exporting {model_path} for the {backend} backend left no model in {target}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return SentenceTransformer(
        str(target),
        device="cpu",
        backend="onnx",
        # ORT lists AzureExecutionProvider first on some builds: ask for the CPU one by name.
        model_kwargs={"provider": "CPUExecutionProvider", "file_name": file_name, "session_options": options},
    )


def _exported_file(target: Path, backend: str) -> str | None:
    """The ONNX file for ``backend`` in ``target``, if exported: optimum names the int8 one
    ``model_qint8_<cpu>.onnx`` or ``model_quint8_<cpu>.onnx`` depending on the instruction set."""
    folder = target / "onnx"
    if backend == "onnx":
        return "model.onnx" if (folder / "model.onnx").exists() else None
    found = sorted(folder.glob(f"model_*int8_{quantisation_target()}.onnx"))
    return found[0].name if found else None


def _export(model_path: str, target: Path, backend: str) -> None:
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a scratch folder and move it in place, so two workers starting together never
    # load a half-written export.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        work = Path(tmp) / "model"
        if (target / "onnx" / "model.onnx").exists():
            shutil.copytree(target, work)
        else:
            log.info("exporting %s to ONNX in %s (once)", model_path, target)
            shutil.copytree(model_path, work)
            model = SentenceTransformer(
                str(work), device="cpu", backend="onnx", model_kwargs={"provider": "CPUExecutionProvider"}
            )
            model.save_pretrained(str(work))
        if backend == "onnx-int8":
            config = quantisation_target()
            log.info("quantising the ONNX model to int8 (%s)", config)
            model = SentenceTransformer(
                str(work),
                device="cpu",
                backend="onnx",
                model_kwargs={"provider": "CPUExecutionProvider", "file_name": "model.onnx"},
            )
            export_dynamic_quantized_onnx_model(model, config, str(work))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            work.rename(target)
        except OSError:
            if not target.exists():  # another process won the race: its export is as good
                raise


def session_forward(model: Any) -> Callable[[Mapping[str, Any]], Any] | None:
    """features → mean-pooled token embeddings, straight from ``model``'s ONNX Runtime session,
    for a model of the usual modules (the transformer on ONNX Runtime, mean pooling, and
    perhaps a normaliser, which the embedder applies anyway); None for any other model.

    sentence-transformers' own call converts and pools through several modules of Python around
    the session; the encoder threads need the interpreter lock for each step, and wait for it
    behind a busy event loop. Here the session runs on the tokenizer's arrays and the pooling is
    one numpy expression: the same vectors to about 3e-8, and more messages per second end to end
    (docs/performance-log.md)."""
    import numpy as np
    import torch

    modules = list(model)
    session = getattr(getattr(modules[0], "auto_model", None), "session", None)
    if session is None or len(modules) not in (2, 3) or getattr(modules[1], "pooling_mode", None) != "mean":
        return None
    if len(modules) == 3 and type(modules[2]).__name__ != "Normalize":
        return None
    inputs = [i.name for i in session.get_inputs()]
    output = session.get_outputs()[0].name

    def forward(features: Mapping[str, Any]) -> Any:
        hidden = session.run([output], {name: features[name].numpy() for name in inputs})[0]
        mask = features["attention_mask"].numpy()[:, :, None].astype(hidden.dtype)
        return torch.from_numpy((hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9))

    return forward
