"""The embedder runtimes a user can choose (docs/performance.md), as one type.

>>> BACKENDS
('torch', 'onnx', 'onnx-int8')
"""

from __future__ import annotations

from typing import Literal, get_args

Backend = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
