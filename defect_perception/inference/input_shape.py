"""The network input shape a model card implies, checked against the ONNX input, so a card
written for another export is refused at load instead of failing on the first frame."""
from __future__ import annotations

from pathlib import Path

from defect_perception.inference.errors import ModelLoadError


def input_chw(card: dict, onnx_shape: list | None = None, onnx_path: str | Path = "",
              input_name: str | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the network input as the runtime feeds it (`Preprocessor.shape`: 1 channel
    gray, 2 gray + aligned template (`input.template`), 3 colour). When the ONNX input shape
    is given, it must be NCHW and its fixed dimensions must agree (dynamic ones pass)."""
    from defect_perception.core.preprocess import Preprocessor

    inp = card["input"]
    chw = Preprocessor(inp).shape
    if onnx_shape is None:
        return chw
    what_input = f"input {input_name!r}" if input_name else "input"
    shape = list(onnx_shape)
    if len(shape) != 4:
        raise ModelLoadError(f"{onnx_path}: {what_input} has shape {shape}, expected NCHW")
    for dim, want, what in zip(shape[1:], chw, ("channels", "height", "width"), strict=True):
        if isinstance(dim, int) and dim > 0 and dim != want:
            raise ModelLoadError(
                f"{onnx_path}: {what_input} shape {shape} does not match the card ({card.get('_dir', '?')}"
                f"/model.json: input.size {inp['size']}, color {inp.get('color', 'bgr')}"
                f"{', template' if inp.get('template') else ''} -> [N, {chw[0]}, {chw[1]}, {chw[2]}]; "
                f"{what} differs)")
    return chw
