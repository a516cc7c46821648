"""defect_perception: inline visual inspection for ROS 2.

`load_model(path)` is the one runtime entry point (no ROS, no torch):
    model = load_model("models/deeppcb-student"); result = model(image)
"""
__version__ = "0.1.0"


def load_model(path, **kwargs):
    """Load `models/<name>/` (model.json + model.onnx) with the best available backend."""
    from defect_perception.inference.model import load_model as _load

    return _load(path, **kwargs)
