"""The backend interface: what `Model` needs from ONNX Runtime, TensorRT or anything else."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str                 # "onnxruntime" | "tensorrt"
    input_name: str
    input_shape: list         # ONNX dims, symbolic ones as str/None
    output_names: list[str]
    max_batch: int            # 0 = unbounded (dynamic batch)
    detail: str               # providers / precision / engine path, for logs and diagnostics

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """NCHW float32 batch -> outputs by name (numpy, batch first)."""

    def close(self) -> None:
        ...
