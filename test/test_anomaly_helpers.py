"""Tiny generated data and models for the anomaly tests (no dataset, no torch).

`make_anomaly_onnx` writes a real ONNX anomaly model with onnx.helper whose outputs are
predictable: map = max(0, normalised pixel) (white = 1, black = 0), score = max of the map.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from defect_perception.core.model_card import write_card


def pcb_image(rng: np.random.Generator, size: int = 64, defect: bool = False) -> tuple[np.ndarray, tuple]:
    """A binary 'PCB-like' uint8 image: traces and pads on an 8 px grid; with `defect`, a
    diagonal copper splash centred at the returned (x, y)."""
    img = np.zeros((size, size), np.uint8)
    grid = np.arange(8, size - 4, 8)
    for _ in range(4):                                   # traces on an 8 px routing grid
        pos = int(rng.choice(grid))
        if rng.random() < 0.5:
            cv2.line(img, (0, pos), (size, pos), 255, 2)
        else:
            cv2.line(img, (pos, 0), (pos, size), 255, 2)
    for _ in range(3):                                   # pads on grid points
        cv2.circle(img, (int(rng.choice(grid)), int(rng.choice(grid))), 3, 255, -1)
    centre = None
    if defect:                     # a diagonal copper splash (no such shape in good parts)
        centre = tuple(int(v) for v in rng.integers(12, size - 12, 2))
        cv2.line(img, (centre[0] - 5, centre[1] - 5), (centre[0] + 5, centre[1] + 5), 255, 3)
    return img, centre


def make_anomaly_onnx(model_dir: Path, size: int = 32, threshold: float = 0.5,
                      review_band: list[float] | None = None, name: str = "toy-anomaly") -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["input"], ["map"]),
             helper.make_node("ReduceMax", ["map"], ["score"], axes=[1, 2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes, "toy_anomaly",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", 1, size, size]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    thresholds = {"image": threshold}
    if review_band:
        thresholds["review_band"] = review_band
    write_card(model_dir, {
        "name": name, "task": "anomaly",
        "input": {"name": "input", "size": [size, size], "color": "gray", "layout": "NCHW", "scale": 255.0,
                  "mean": [0.5], "std": [0.5], "resize": "stretch", "interpolation": "area"},
        "outputs": [{"name": "map", "meaning": "relu(input)"}, {"name": "score", "meaning": "max(map)"}],
        "classes": ["normal", "anomaly"], "pass_classes": ["normal"], "thresholds": thresholds,
        "metrics": {}, "provenance": {"dataset": "generated in tests"}})
    return model_dir
