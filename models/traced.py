"""The CPU encoder run as TorchScript: the same vectors, with the Python left out of the forward.

In eager mode every operator of the transformer is dispatched from Python, holding the GIL
between operators. A worker's scorer threads and its event loop then queue for the GIL, and
small batches, whose operators are short, spend much of their time waiting (traced ran about
1.5x faster on small batches: docs/performance-log.md). A traced forward runs in the TorchScript interpreter, without
the GIL.

Tracing records the operators one example runs, so a model whose forward branches on its
input could be recorded wrong. :func:`trace_encoder` therefore checks the traced forward
against the eager one, bit for bit, on batches of several sizes and padded widths, and returns
``None`` (keep eager) when they differ in the last bit or tracing fails.

>>> from streamscore.models.embedder import Embedder
>>> emb = Embedder.load(device="cpu", trace=False)
>>> traced = trace_encoder(emb.model)
>>> features = emb.model.preprocess(["where is my parcel?", "hello"])
>>> import torch
>>> bool(torch.equal(traced(features), emb.model(features)["sentence_embedding"]))
True
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

# Lengths that give padded widths of 8, 16 and 40+ tokens, alone and padded together.
PROBE = [
    "ok",
    "where is my parcel?",
    "the parcel I ordered two weeks ago has still not arrived and nobody answers my emails",
    "refund " * 30,
]


class TracedEncoder:
    """Calls a traced sentence-transformers model with its tokenizer's tensors, by name."""

    def __init__(self, module: Any, names: tuple[str, ...]) -> None:
        self.module, self.names = module, names

    def __call__(self, features: Mapping[str, Any]) -> Any:
        import torch

        # No graph optimisation: the plain interpreter runs exactly the recorded operators,
        # so the vectors stay bit-identical to eager ones (and to the embedding cache's).
        with torch.jit.optimized_execution(False):
            return self.module(*(features[n] for n in self.names))


def trace_encoder(model: Any) -> TracedEncoder | None:
    """``model`` (a SentenceTransformer in eval mode, on CPU) traced, or None where the traced
    forward is not bit-identical to the eager one. The traced module shares the model's weights."""
    import torch

    try:
        example = model.preprocess(PROBE[:2])
        names = tuple(k for k, v in example.items() if torch.is_tensor(v))
        extras = {k: v for k, v in example.items() if not torch.is_tensor(v)}  # e.g. modality

        class _Forward(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: Any) -> Any:
                return self.model({**extras, **dict(zip(names, tensors, strict=True))})["sentence_embedding"]

        with warnings.catch_warnings(), torch.no_grad():
            # TracerWarnings name the Python branches frozen into the trace (checked below), and
            # torch.jit is deprecated from torch 2.x on though still shipped; an ImportError or
            # RuntimeError in a later torch falls back to eager.
            warnings.simplefilter("ignore")
            module = torch.jit.trace(
                _Forward().eval(), tuple(example[n] for n in names), strict=False, check_trace=False
            )
        traced = TracedEncoder(module, names)
        batches = [PROBE, *([t] for t in PROBE), PROBE[:3]]
        with torch.inference_mode():
            for texts in batches:
                features = model.preprocess(texts)
                if not torch.equal(traced(features), model(features)["sentence_embedding"]):
                    log.warning("the traced encoder differs from the eager one; encoding eagerly")
                    return None
        return traced
    except Exception as exc:  # tracing is an optimisation: never fail a load over it
        log.warning("could not trace the encoder (%s: %s); encoding eagerly", type(exc).__name__, exc)
        return None
