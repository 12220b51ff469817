"""How finely the embedder may pad texts on this machine and keep each text's vector the same
whatever texts share its forward pass.

Texts are padded to a multiple of some tokens and a forward pass holds texts of one padded
width, so each of its matrix products has ``rows × width`` rows, a multiple of that padding and
at least ``MIN_FORWARD_TOKENS`` (models/embedder.py). A text's rows come out the same in every
batch only if the matrix library computes a row the same way for each such number of rows. On
one thread MKL did on some machines and not on others, so finer padding, which wastes fewer
tokens and runs faster (docs/performance-log.md), is used only where this machine allows it.

:func:`padding_multiple` therefore asks this machine: the finest of ``CANDIDATES`` under which
a row of each of the model's linear layers is bit-identical for every number of rows that
padding can give, tried once per process and layer shape.

>>> import torch
>>> padding_multiple([torch.nn.Linear(24, 40)]) in CANDIDATES
True
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from streamscore.models.encode_pool import torch_threads

CANDIDATES = (4, 8)  # finer padding means more forwards per small batch: 4 cost nothing at half load
MIN_ROWS = 16  # MIN_FORWARD_TOKENS in models/embedder.py
_PROBED_ROWS = (*range(MIN_ROWS, 161), 256, 512, 1024)

_known: dict[tuple[tuple[int, int], ...], int] = {}
_lock = threading.Lock()


def padding_multiple(linears: Iterable[Any]) -> int:
    """The finest of ``CANDIDATES`` for which every one of ``linears`` (``torch.nn.Linear``)
    gives each row the same result for any number of rows that is a multiple of it and at least
    ``MIN_ROWS``, on one thread; the coarsest when none does."""
    layers = {(m.in_features, m.out_features): m for m in linears}
    shapes = tuple(sorted(layers))
    with _lock:
        if shapes not in _known:
            _known[shapes] = next(
                (p for p in CANDIDATES if all(_row_invariant(layers[s], p) for s in shapes)), CANDIDATES[-1]
            )
        return _known[shapes]


def _row_invariant(layer: Any, multiple: int) -> bool:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBED_ROWS[-1], layer.in_features, generator=gen)
    with torch_threads(1), torch.inference_mode():
        counts = [m for m in _PROBED_ROWS if m % multiple == 0]
        first = layer(x[: counts[0]])[[0, MIN_ROWS - 1]]
        return all(torch.equal(layer(x[:m])[[0, MIN_ROWS - 1]], first) for m in counts[1:])
