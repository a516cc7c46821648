"""Per-task postprocessing from raw ONNX outputs to result-contract fields.

Each task module (`classification`, `detection`, `anomaly`) exposes
    postprocess(outputs: dict[str, np.ndarray], card: dict, meta: dict) -> dict
- `outputs`: one image's arrays by ONNX output name, batch dimension kept (size 1).
- `card`: the model card; `card["thresholds"]` already holds the live overrides.
- `meta`: {"transform": core.preprocess.Transform (model pixels -> published-image pixels,
  ROI/tile offset included), "image_size": (h, w) of the published image}.
It returns the result fields (verdict, label, score, hierarchy, detections, anomaly_score)
plus optional extra keys (e.g. `map` for anomaly, `p_defect`), which the runtime keeps
out of the JSON and hands to the node's hooks. Bad outputs (NaN, wrong shape) raise
`OutputError` naming the output; the runtime turns that into a fail-safe result.
Modules are imported lazily, so a task module can be dropped in without touching this file.
"""
from __future__ import annotations

import importlib

import numpy as np

TASK_MODULES = {"classification": "classification", "detection": "detection", "anomaly": "anomaly"}


class OutputError(ValueError):
    """Model outputs the postprocessing cannot trust (NaN/inf, wrong shape, missing name)."""


def get(task: str):
    """The postprocess function for a task (imported on first use)."""
    if task not in TASK_MODULES:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASK_MODULES)})")
    module = importlib.import_module(f"{__name__}.{TASK_MODULES[task]}")
    return module.postprocess


def postprocess(outputs: dict[str, np.ndarray], card: dict, meta: dict) -> dict:
    return get(card["task"])(outputs, card, meta)


def require(outputs: dict[str, np.ndarray], name: str, ndim: int | None = None) -> np.ndarray:
    """The named output as float32, checked for presence, rank and finiteness."""
    if name not in outputs:
        raise OutputError(f"model output {name!r} is missing (got: {', '.join(outputs)})")
    arr = np.asarray(outputs[name], dtype=np.float32)
    if ndim is not None and arr.ndim != ndim:
        raise OutputError(f"model output {name!r} has shape {arr.shape}, expected {ndim} dimensions")
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise OutputError(f"model output {name!r} contains {bad} NaN/inf value(s)")
    return arr
