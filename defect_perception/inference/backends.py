"""Backend choice: `auto` takes TensorRT when the package and a CUDA GPU are present,
else ONNX Runtime; an explicit request that cannot be met is an error, never a silent
fallback. `auto` also falls back to ONNX Runtime (logged) when the model's TensorRT engine
was refused by its parity check: ONNX Runtime runs the checked ONNX model. Returns the
backend and the reason, which the node logs and shows in diagnostics."""
from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from pathlib import Path

from defect_perception.inference.engine_cache import EngineRejected
from defect_perception.inference.errors import BackendUnavailable

BACKENDS = ("auto", "tensorrt", "onnxruntime")
log = logging.getLogger("defect_perception.inference")


def check_name(name: str) -> str | None:
    """Refusal reason for an unknown backend name (with a suggestion), else None."""
    if name in BACKENDS:
        return None
    close = difflib.get_close_matches(name, BACKENDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown backend {name!r} (available: {', '.join(BACKENDS)}{hint})"


def create(requested: str, onnx_path: str | Path, card: dict, threads: int = 0, precision: str = "fp16",
           log_fn: Callable[[str], None] = log.info):
    """(backend, reason). Raises BackendUnavailable / ModelLoadError with the cause."""
    bad = check_name(requested)
    if bad:
        raise BackendUnavailable(bad)
    from defect_perception.inference import tensorrt_backend

    if requested in ("auto", "tensorrt"):
        ok, why = tensorrt_backend.status()
        if ok and requested == "tensorrt":
            return tensorrt_backend.TensorRTBackend(onnx_path, card, precision=precision, log_fn=log_fn), why
        if ok:
            try:
                be = tensorrt_backend.TensorRTBackend(onnx_path, card, precision=precision, log_fn=log_fn)
                return be, f"auto: {why}"
            except EngineRejected as e:  # keep the line inspecting, slower but with a checked model
                why = f"its TensorRT engine was refused ({e})"
                log_fn(f"auto: falling back to ONNX Runtime because {why}")
        elif requested == "tensorrt":
            raise BackendUnavailable(f"backend 'tensorrt' requested but {why}")
        reason = f"auto: ONNX Runtime because {why}"
    else:
        reason = "onnxruntime requested"
    from defect_perception.inference.onnxruntime_backend import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(onnx_path, threads=threads)
    return be, f"{reason} ({be.detail})"
