"""ONNX Runtime backend: CUDA execution provider when present, else CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from defect_perception.inference.errors import BackendUnavailable, ModelLoadError


def available() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return False, f"onnxruntime not installed ({e})"
    return True, f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"


def cpu_session(onnx_path: str | Path, threads: int = 1):
    """A CPU-only session with a fixed thread count: what the offline tools use for parity
    checks and latency tables, so their numbers compare across machines with or without CUDA."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, threads: int = 0, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(f"onnxruntime is not installed ({e})") from None
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        avail = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as e:  # InvalidProtobuf, Fail, NoSuchFile: all mean "cannot use this file"
            msg = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load the model ({msg})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{onnx_path}: expected one input tensor, found "
                                 f"{[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.input_type = inputs[0].type
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_shapes = {o.name: list(o.shape) for o in self.session.get_outputs()}
        b = self.input_shape[0] if self.input_shape else 1
        self.max_batch = b if isinstance(b, int) and b > 0 else 0
        self.providers = self.session.get_providers()
        self.detail = f"providers={','.join(self.providers)} threads={threads or 'default'}"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: batch})
        return dict(zip(self.output_names, outs, strict=False))

    def close(self) -> None:
        self.session = None
