"""Inference runtime: backends (ONNX Runtime, TensorRT) behind one small interface, and
`load_model()` which wires card -> preprocess -> backend -> postprocess. No torch, no ROS."""
from defect_perception.inference.errors import BackendUnavailable, InferenceError, ModelLoadError

__all__ = ["BackendUnavailable", "InferenceError", "ModelLoadError", "load_model"]


def load_model(path, **kwargs):
    from defect_perception.inference.model import load_model as _load

    return _load(path, **kwargs)
