"""ONNX export + model card for the anomaly model, with a parity check against torch.

The graph holds the whole pipeline after normalisation (teacher, EMA norm, coupling, student,
scale normalisation, blur, image score), so the runtime only resizes/normalises the input and
applies the calibrated threshold from the card.
"""
from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defect_perception.core.model_card import sha256_file, write_card
from defect_perception.training.anomaly.model import AnomalyNet

PARITY_RTOL = 1e-3   # |onnx - torch| <= PARITY_RTOL * max(1, |torch|), map and score


def export_onnx(model: AnomalyNet, path: str | Path, opset: int = 17) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    s = model.cfg.size
    dummy = torch.zeros(1, 1, s, s)
    with warnings.catch_warnings():   # tracer notes about fixed spatial sizes: intended
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), input_names=["input"], output_names=["map", "score"],
                          dynamic_axes={"input": {0: "N"}, "map": {0: "N"}, "score": {0: "N"}},
                          opset_version=opset, dynamo=False)
    return path


def parity(model: AnomalyNet, onnx_path: str | Path, x: np.ndarray) -> dict[str, float]:
    """Max absolute and relative difference between ONNX Runtime and eager torch on `x`."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    om, os_ = sess.run(["map", "score"], {"input": x.astype(np.float32)})
    with torch.no_grad():
        tm, ts = (t.numpy() for t in model(torch.from_numpy(x)))
    scale_m = np.maximum(1.0, np.abs(tm)).astype(np.float64)
    scale_s = np.maximum(1.0, np.abs(ts)).astype(np.float64)
    return {"map_max_abs": float(np.abs(om - tm).max()), "score_max_abs": float(np.abs(os_ - ts).max()),
            "map_max_rel": float((np.abs(om - tm) / scale_m).max()),
            "score_max_rel": float((np.abs(os_ - ts) / scale_s).max()), "rtol": PARITY_RTOL,
            "images": int(len(x))}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def build_card(name: str, model: AnomalyNet, info: dict[str, Any], dataset: str,
               extra_provenance: dict | None = None) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "name": name,
        "task": "anomaly",
        "file": "model.onnx",
        "input": {"name": "input", "size": [cfg.size, cfg.size], "color": "gray", "layout": "NCHW",
                  "scale": 255.0, "mean": [0.5], "std": [0.5], "resize": "stretch", "interpolation": "area"},
        "outputs": [
            {"name": "map", "meaning": "per-pixel anomaly score [N,1,H,W] at input resolution "
                                       "(1.0 = mean level on held-out good images)"},
            {"name": "score", "meaning": f"image anomaly score [N] ({cfg.score} of the map"
                                         + (f", top {cfg.topk_fraction:.2%} pixels"
                                            if cfg.score == "topk" else "")
                                         + ")"},
        ],
        "classes": ["normal", "anomaly"],
        "pass_classes": ["normal"],
        "thresholds": {"image": info["threshold"], "review_band": info["review_band"]},
        "calibration": info["calibration"],
        "metrics": {},
        "parameters": {"total": sum(p.numel() for p in model.parameters()),
                       "student": sum(p.numel() for p in model.student.parameters()),
                       "teacher": sum(p.numel() for p in model.teacher.parameters())},
        "provenance": {"dataset": dataset, "method": f"asymmetric teacher-student ({cfg.variant()})",
                       "training_config": cfg.to_dict(), "git_commit": git_commit(),
                       "train_seconds": info.get("train_seconds"),
                       "scoring_selection": info.get("scoring_selection"),
                       "note": "Trained on DeepPCB (research use only): an evaluation/demo artefact. "
                               "Train production models on your own good parts.",
                       **(extra_provenance or {})},
    }


def export_model_dir(model_dir: str | Path, name: str, model: AnomalyNet, info: dict[str, Any],
                     dataset: str, check_x: np.ndarray) -> dict[str, Any]:
    """Write model.onnx + model.json into model_dir; fails if ONNX Runtime disagrees with torch."""
    model_dir = Path(model_dir)
    onnx_path = export_onnx(model, model_dir / "model.onnx")
    par = parity(model, onnx_path, check_x)
    if par["map_max_rel"] > PARITY_RTOL or par["score_max_rel"] > PARITY_RTOL:
        raise RuntimeError(f"{onnx_path}: ONNX Runtime differs from torch beyond rtol {PARITY_RTOL}: {par}")
    card = build_card(name, model, info, dataset,
                      {"export_parity": par, "onnx_sha256": sha256_file(onnx_path)})
    write_card(model_dir, card)
    return card
