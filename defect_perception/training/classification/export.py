"""ONNX export + model card for the line (contract: ARCHITECTURE.md "Model artifacts").

The graph takes `input` float32 NCHW (dynamic batch) and returns `logits` [N, C] over the
fine classes. A SimKD student exports as one graph: student trunk + projector + the reused
teacher classifier. A hierarchical model also returns `logits_level<d>` (d = 0 is the root
level) for its coarser heads; the runtime needs only `logits` (it sums children itself).
Export is checked against torch with ONNX Runtime (max |diff| of logits <= `tol`).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import nn

from defect_perception.training.classification import models

PARITY_TOL = 1e-4          # max |logit difference| ONNX Runtime vs torch (float32)


class _Export(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.levels = isinstance(model, models.HierarchicalModel)

    def forward(self, x: torch.Tensor):
        if self.levels:
            return tuple(self.model.forward_levels(x)[::-1])   # fine first
        return self.model(x)


def output_names(model: nn.Module) -> list[str]:
    if isinstance(model, models.HierarchicalModel):
        return ["logits"] + [f"logits_level{d}" for d in reversed(range(len(model.heads)))]
    return ["logits"]


def export_onnx(model: nn.Module, path: str | Path, size: int, opset: int = 17) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    names = output_names(model)
    x = torch.zeros(1, 3, size, size)
    torch.onnx.export(_Export(model), (x,), str(path), dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=names,
                      dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}})
    return path


def parity(model: nn.Module, onnx_path: str | Path, size: int, n: int = 4, seed: int = 0) -> float:
    """Max |logits(torch) - logits(ONNX Runtime)| on random inputs."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    return float(np.abs(ref - got).max())


def git_commit(repo: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def make_card(name: str, ckpt: dict, model: nn.Module, metrics: dict | None = None,
              thresholds: dict | None = None, provenance: dict | None = None) -> dict:
    inp = ckpt["input"]
    classes = list(ckpt["classes"])
    outputs = [{"name": "logits", "meaning": f"fine-class logits [N, {len(classes)}] over `classes`"}]
    for o in output_names(model)[1:]:
        outputs.append({"name": o, "meaning": "coarse-level logits of the hierarchical head "
                                              "(level0 = root); informative only"})
    card = {
        "name": name, "task": "classification", "file": "model.onnx",
        "input": {"name": "input", "size": [inp["size"], inp["size"]], "color": inp["color"],
                  "layout": "NCHW",
                  "scale": 255.0, "mean": list(inp["mean"]), "std": list(inp["std"]), "resize": "stretch"},
        "outputs": outputs, "classes": classes,
        "pass_classes": [c for c in classes if c in ("normal", "good", "ok", "pass")] or classes[:1],
        "thresholds": thresholds or {"reject": 0.5, "review_band": [0.2, 0.5], "fine_min": 0.5},
        "tiling": {"tile": int(inp["tile"]), "overlap": int(inp["overlap"])},
        "parameters": models.param_count(model),
        "architecture": ckpt["arch"],
        "metrics": metrics or {},
        "provenance": provenance or {},
    }
    if ckpt.get("tree"):
        card["category_tree"] = dict(ckpt["tree"])
    return card


def write_model_dir(model: nn.Module, ckpt: dict, out_dir: str | Path, name: str | None = None,
                    metrics: dict | None = None, thresholds: dict | None = None,
                    provenance: dict | None = None, tol: float = PARITY_TOL) -> dict:
    """model.onnx + model.json in out_dir; raises when ONNX Runtime disagrees with torch."""
    from defect_perception.core.model_card import sha256_file, write_card

    out_dir = Path(out_dir)
    onnx_path = export_onnx(model, out_dir / "model.onnx", int(ckpt["input"]["size"]))
    diff = parity(model, onnx_path, int(ckpt["input"]["size"]))
    if diff > tol:
        raise RuntimeError(f"{onnx_path}: ONNX Runtime logits differ from torch by {diff:.2e} (> {tol:g})")
    prov = {"git_commit": git_commit(), "training_config": ckpt.get("config", {}),
            "onnx_parity_max_abs_diff": diff, **(provenance or {})}
    card = make_card(name or out_dir.name, ckpt, model, metrics, thresholds, prov)
    card["sha256"] = sha256_file(onnx_path)
    write_card(out_dir, card)
    return card
