"""The CPU encoder kept as a saved trace and tokenizer file, loaded without sentence-transformers.

Importing sentence-transformers (and transformers under it) took 4.5 s of a worker's 7.5 s from
start to its first scored record (docs/development.md). A worker only runs the encoder, and on a
CPU it runs it as a TorchScript trace (models/traced.py) fed by a fast tokenizer, which need only
torch and `tokenizers`. So the first process that traces an encoder saves the trace, the
tokenizer and the few facts the embedder needs into ``cache_dir``, and later processes load those
instead of the model: the same operators and weights, so the same vectors, bit for bit.

:func:`save` keeps that promise checkable: it saves only when the tokenizer file gives the very
tensors sentence-transformers gives and the reloaded trace the very vectors of the eager model, on
probe texts of every padded width, truncation included. Anything else (another model layout, a
check that fails) saves nothing, and processes keep loading the model.

>>> import tempfile
>>> from streamscore.models.embedder import Embedder
>>> full = Embedder.load(device="cpu")
>>> folder = Path(tempfile.mkdtemp()) / "trace"
>>> save(full.model, full._forward(), folder)
True
>>> lean = load(folder)
>>> texts = ["where is my parcel?", "hello"]
>>> import torch
>>> features = lean.preprocess(texts)
>>> bool(torch.equal(lean.traced(features), full._forward()(full.model.preprocess(texts))))
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamscore.models.traced import PROBE, TracedEncoder

log = logging.getLogger("streamscore.embedder")

FORMAT = 1  # bump when the folder's files change meaning
# Traces kept in a cache folder, the most recently used: each fine-tuned model version served
# adds one of about 90 MB, and a long-lived registry has many.
KEEP = 8
# Probe texts for the tokenizer: empty-ish, accents, other scripts, emoji, and one past the
# 256-token limit so that truncation is checked too.
_TOKENIZER_PROBE = [
    *PROBE,
    "x",
    "Café crème, naïve façade; ÀÉÎÕÜ",
    "我的包裹在哪里 どこですか 어디에 있나요",
    "refund please 🙂🙂 !!! ??? ... $$$ 100% #order-1234",
    "word " * 400,
]


@dataclass(frozen=True)
class SavedTokenizer:
    """What the embedder reads of a tokenizer: how it pads."""

    pad_token_id: int
    padding_side: str = "right"


class SavedEncoder:
    """The parts of a SentenceTransformer the embedder uses, from a saved folder: ``preprocess``,
    the trace, the dimension, the pad token and the linear layers (for models/padding.py)."""

    training = False

    def __init__(self, folder: Path) -> None:
        import tokenizers
        import torch

        meta = json.loads((folder / "meta.json").read_text())
        self.folder = folder
        self.names: tuple[str, ...] = tuple(meta["names"])
        self.dim = int(meta["dim"])
        self.tokenizer = SavedTokenizer(int(meta["pad_token_id"]))
        self._tokens = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokens.enable_truncation(int(meta["max_length"]), strategy="longest_first")
        self._tokens.enable_padding(
            pad_id=self.tokenizer.pad_token_id,
            pad_token=meta["pad_token"],
            pad_type_id=int(meta["pad_type_id"]),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated from torch 2.x on, still shipped
            module = torch.jit.load(str(folder / "encoder.pt"), map_location="cpu")
        self.traced = TracedEncoder(module.eval(), self.names)

    def preprocess(self, texts: list[str]) -> dict[str, Any]:
        """Token tensors of ``texts``, padded to the longest: what sentence-transformers gives."""
        import numpy as np
        import torch

        encodings = self._tokens.encode_batch(texts)
        fields = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}
        return {
            name: torch.from_numpy(np.array([getattr(e, fields[name]) for e in encodings], dtype=np.int64))
            for name in self.names
        }

    def modules(self) -> Iterator[Any]:
        """The trace's linear layers as ``torch.nn.Linear`` sharing its weights."""
        import torch

        for module in self.traced.module.modules():
            if getattr(module, "original_name", "") == "Linear":
                out_features, in_features = module.weight.shape
                layer = torch.nn.Linear(
                    in_features, out_features, bias=module.bias is not None, device="meta"
                )
                layer.weight = torch.nn.Parameter(module.weight, requires_grad=False)
                if module.bias is not None:
                    layer.bias = torch.nn.Parameter(module.bias, requires_grad=False)
                yield layer

    def get_embedding_dimension(self) -> int:
        return self.dim

    def eval(self) -> SavedEncoder:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise TypeError(
            "an encoder loaded from a saved trace cannot be copied to fine-tune: load it without cache_dir"
        )


def folder_for(model_path: str, cache_dir: Path) -> Path:
    """Where the saved trace of the model in ``model_path`` lives: one folder per model files
    (names, sizes, times) and torch version, so a changed model or torch never loads a stale one."""
    import torch

    src = Path(model_path).resolve()
    digest = hashlib.sha256(f"{FORMAT}|{torch.__version__}|{src}".encode())
    if src.is_dir():
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"|{path.relative_to(src)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Path(cache_dir).expanduser() / "traced" / f"{src.name}-{digest.hexdigest()[:12]}"


def load(folder: Path) -> SavedEncoder | None:
    """The encoder saved in ``folder``, or None where there is none (or it cannot be read)."""
    if not (folder / "meta.json").is_file():
        return None
    try:
        encoder = SavedEncoder(folder)
        os.utime(folder / "meta.json")  # used now: kept by prune
        return encoder
    except (OSError, RuntimeError, ValueError, KeyError, AttributeError) as exc:
        log.warning("cannot load the saved encoder in %s (%s): loading the model instead", folder, exc)
        return None


def save(model: Any, traced: TracedEncoder, folder: Path) -> bool:
    """Save ``traced`` (the trace of ``model``, a SentenceTransformer) and its tokenizer into
    ``folder`` when, reloaded, they give ``model``'s very tensors and vectors; whether saved."""
    import torch

    tokenizer = getattr(model, "tokenizer", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    max_length = getattr(model, "max_seq_length", None)
    if tokenizer is None or backend is None or max_length is None or tokenizer.padding_side != "right":
        return False
    with torch.inference_mode():  # the dimension as the trace gives it, whatever the model's API calls it
        dim = int(traced(model.preprocess(PROBE[:1])).shape[-1])
    meta = {
        "format": FORMAT,
        "names": list(traced.names),
        "dim": dim,
        "max_length": int(max_length),
        "pad_token_id": int(tokenizer.pad_token_id),
        "pad_token": str(tokenizer.pad_token),
        "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0)),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Built in a scratch folder and moved in place, so two workers starting together never
    # load a half-written one.
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        work = Path(tmp) / "trace"
        work.mkdir()
        backend.save(str(work / "tokenizer.json"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(traced.module, str(work / "encoder.pt"))
        (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if not _same(model, traced, SavedEncoder(work)):
            log.info("the saved encoder differs from the model: workers will load the model")
            return False
        if load(folder) is not None:
            return True  # another process saved it meanwhile, and workers may be loading it now
        if folder.exists():  # a damaged one
            shutil.rmtree(folder, ignore_errors=True)
        try:
            work.rename(folder)
        except OSError:
            if not (folder / "meta.json").exists():  # another process won the race: its copy is as good
                raise
    prune(folder.parent)
    return True


def prune(parent: Path, keep: int = KEEP) -> list[Path]:
    """Remove all but the ``keep`` most recently used saved traces under ``parent``; the removed.
    A process loading one that goes meanwhile loads its model instead (:func:`load`)."""
    saved = sorted(
        (p for p in parent.iterdir() if (p / "meta.json").is_file()),
        key=lambda p: (p / "meta.json").stat().st_mtime,
        reverse=True,
    )
    for old in saved[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return saved[keep:]


def _same(model: Any, traced: TracedEncoder, saved: SavedEncoder) -> bool:
    """Whether ``saved`` tokenizes the probe texts as ``model`` does and its trace gives the
    vectors ``traced`` gives, to the last bit."""
    import torch

    theirs = model.preprocess(_TOKENIZER_PROBE)
    ours = saved.preprocess(_TOKENIZER_PROBE)
    tensors = {k for k, v in theirs.items() if torch.is_tensor(v)}
    if tensors != set(ours) or not all(torch.equal(theirs[k], ours[k]) for k in tensors):
        return False
    with torch.inference_mode():
        for texts in (PROBE[:2], PROBE):
            features = saved.preprocess(texts)
            if not torch.equal(saved.traced(features), traced(features)):
                return False
    return True
