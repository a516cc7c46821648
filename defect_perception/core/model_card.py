"""Model card (`models/<name>/model.json`): everything the runtime needs to use
`model.onnx` without the training code. Written by training tools, read by the runtime.

Card fields (schema defect_perception/model_card/1):
  name, task (classification|detection|anomaly), file (default model.onnx),
  input: {name, size [H, W], color bgr|rgb|gray, layout NCHW, scale (pixel divisor, 255),
          mean [..], std [..], resize stretch|letterbox}
  outputs: [{name, meaning}], classes [..], pass_classes [..] (labels that mean a good part),
  category_tree: {child: parent} (optional), thresholds: {...task specific...},
  tiling: {tile, overlap} (optional), metrics: {split, ...}, parameters, provenance {...}.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CARD_SCHEMA = "defect_perception/model_card/1"
TASKS = ("classification", "detection", "anomaly")
RESIZE_MODES = ("stretch", "letterbox")
COLORS = ("bgr", "rgb", "gray")


class ModelCardError(ValueError):
    """A model directory or card that the runtime cannot use; the message names the file and field."""


def _require(cond: bool, path: Path, field: str, msg: str) -> None:
    if not cond:
        raise ModelCardError(f"{path}: field '{field}' {msg}")


def validate_card(card: dict[str, Any], path: Path | str = "model.json") -> dict[str, Any]:
    path = Path(path)
    _require(isinstance(card, dict), path, "<root>", "must be a JSON object")
    for key in ("name", "task", "input", "outputs"):
        _require(key in card, path, key, "is missing")
    _require(card["task"] in TASKS, path, "task", f"is {card['task']!r}, expected one of {TASKS}")
    inp = card["input"]
    _require(isinstance(inp, dict), path, "input", "must be an object")
    size = inp.get("size")
    _require(isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size),
             path, "input.size", f"must be [height, width] positive integers, got {size!r}")
    _require(inp.get("color", "bgr") in COLORS, path, "input.color", f"must be one of {COLORS}")
    _require(inp.get("resize", "stretch") in RESIZE_MODES, path, "input.resize",
             f"must be one of {RESIZE_MODES}")
    ch = 1 if inp.get("color") == "gray" else 3
    for k in ("mean", "std"):
        v = inp.get(k, [0.0] * ch if k == "mean" else [1.0] * ch)
        _require(isinstance(v, list) and len(v) in (1, ch), path, f"input.{k}",
                 f"must be a list of 1 or {ch} numbers")
    _require(all(s != 0 for s in inp.get("std", [1.0])), path, "input.std", "must not contain 0")
    _require(isinstance(card["outputs"], list) and card["outputs"], path, "outputs",
             "must be a non-empty list of {name, meaning}")
    if card["task"] in ("classification", "detection"):
        _require(isinstance(card.get("classes"), list) and card["classes"], path, "classes",
                 "must list the class names")
    tree = card.get("category_tree")
    if tree is not None:
        _require(isinstance(tree, dict), path, "category_tree", "must map child -> parent")
    return card


def load_card(model_dir: str | Path) -> dict[str, Any]:
    """Read and validate `<dir>/model.json`; the returned card carries `_dir` and
    `_onnx` (absolute path of the ONNX file, checked to exist)."""
    model_dir = Path(model_dir)
    card_path = model_dir / "model.json" if model_dir.is_dir() or not model_dir.suffix else model_dir
    if not card_path.is_file():
        raise ModelCardError(f"{card_path}: model card not found (expected model.json in {model_dir})")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelCardError(f"{card_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    validate_card(card, card_path)
    onnx_path = card_path.parent / card.get("file", "model.onnx")
    if not onnx_path.is_file():
        raise ModelCardError(f"{onnx_path}: ONNX file named by {card_path} is missing")
    card["_dir"] = str(card_path.parent.resolve())
    card["_onnx"] = str(onnx_path.resolve())
    return card


def write_card(model_dir: str | Path, card: dict[str, Any]) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    card = {k: v for k, v in card.items() if not k.startswith("_")}
    card.setdefault("schema", CARD_SCHEMA)
    card.setdefault("file", "model.onnx")
    validate_card(card, model_dir / "model.json")
    out = model_dir / "model.json"
    out.write_text(json.dumps(card, indent=2) + "\n")
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
