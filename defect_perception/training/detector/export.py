"""ONNX export (box decode in the graph, NMS left to the runtime) and the model card."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defect_perception.inference.onnxruntime_backend import cpu_session as ort_session

from ..deeppcb import DEFECT_TYPES
from .model import DetectExport, YoloDetector, count_params


def export_onnx(model: YoloDetector, path: str | Path, opset: int = 17) -> Path:
    """`input` [N, C, S, S] float32 (pixels / 255) -> `boxes` [N, K, 4] x1y1x2y2 in input
    pixels, `scores` [N, K, C] objectness x class probability; batch is dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = DetectExport(model).eval()
    s = model.cfg.img_size
    x = torch.zeros(1, model.cfg.in_channels, s, s)
    torch.onnx.export(
        net,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["boxes", "scores"],
        dynamic_axes={"input": {0: "N"}, "boxes": {0: "N"}, "scores": {0: "N"}},
        opset_version=opset,
        dynamo=False,
    )
    return path




def ort_latency(
    path: str | Path, shape: tuple[int, ...], runs: int = 100, warmup: int = 10, threads: int = 1
) -> dict[str, float]:
    """Batch-1 ONNX Runtime CPU latency percentiles in ms."""
    sess = ort_session(path, threads)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {"input": x})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        t.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p99_ms": float(np.percentile(t, 99)),
        "runs": runs,
        "threads": threads,
    }


def ort_latency_many(
    paths: dict[str, Path],
    shapes: dict[str, tuple[int, ...]],
    rounds: int = 5,
    runs: int = 30,
    threads: int = 1,
) -> dict[str, dict[str, float]]:
    """Latency of several models measured round-robin (rounds x runs each), so load from
    other processes on a shared machine hits every model alike."""
    sess = {k: ort_session(p, threads) for k, p in paths.items()}
    rng = np.random.default_rng(0)
    xs = {k: rng.random(shapes[k], dtype=np.float32) for k in paths}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for k, s in sess.items():
        for _ in range(10):
            s.run(None, {"input": xs[k]})
    for _ in range(rounds):
        for k, s in sess.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, {"input": xs[k]})
                times[k].append((time.perf_counter() - t0) * 1000)
    return {
        k: {
            "p50_ms": float(np.percentile(t, 50)),
            "p99_ms": float(np.percentile(t, 99)),
            "runs": len(t),
            "threads": threads,
        }
        for k, t in times.items()
    }


def gflops(model: YoloDetector) -> float:
    """GFLOPs of one forward pass at the model input size (2 x multiply-accumulates)."""
    import torch_pruning as tp

    s = model.cfg.img_size
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, model.cfg.in_channels, s, s))
    return 2 * float(macs) / 1e9


def git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def make_card(
    model: YoloDetector,
    name: str,
    threshold: float,
    nms_iou: float,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    s = model.cfg.img_size
    inp: dict[str, Any] = {
        "name": "input",
        "size": [s, s],
        "color": "gray",
        "layout": "NCHW",
        "scale": 255.0,
        "mean": [0.0],
        "std": [1.0],
        "resize": "stretch",
        "interpolation": "area",
    }
    if model.cfg.in_channels == 2:
        inp["template"] = True  # channel 2 = the aligned defect-free template, same preprocessing
    return {
        "name": name,
        "task": "detection",
        "file": "model.onnx",
        "input": inp,
        "outputs": [
            {
                "name": "boxes",
                "meaning": "[N, K, 4] x1, y1, x2, y2 in model-input pixels (decoded in the graph)",
            },
            {
                "name": "scores",
                "meaning": "[N, K, C] objectness x class probability; NMS is done by the runtime",
            },
        ],
        "classes": list(DEFECT_TYPES),
        "pass_classes": [],
        "thresholds": {"score": round(threshold, 4), "nms_iou": nms_iou, "reject": round(threshold, 4)},
        "metrics": metrics,
        "parameters": count_params(model),
        "provenance": {
            "dataset": "DeepPCB (Tang et al. 2019), research use only: an evaluation/demo model;"
            " train production models on your own line's images",
            "git_commit": git_commit(),
            **provenance,
        },
    }
