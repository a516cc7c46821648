"""Encoding conversion between the camera's output encodings (mono8, mono16, bgr8, rgb8).

The camera converts once, at the source, so every consumer gets the encoding the line is
configured for. mono16 <-> mono8 scales by 257 (full range maps to full range), colour ->
mono uses the ITU-R 601 luma weights (what OpenCV's cvtColor uses).
"""
from __future__ import annotations

import numpy as np

OUTPUT_ENCODINGS = ("mono8", "mono16", "bgr8", "rgb8")
_ALIASES = {"8UC1": "mono8", "16UC1": "mono16", "8UC3": "bgr8"}


def convert(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert an image array from encoding `src` to `dst` (returns `arr` itself when equal)."""
    src = _ALIASES.get(src, src)
    if dst == "passthrough" or src == dst:
        return arr
    if dst not in OUTPUT_ENCODINGS:
        raise ValueError(f"cannot convert to {dst!r} (targets: {', '.join(OUTPUT_ENCODINGS)})")
    if src in ("bgra8", "rgba8"):
        arr, src = arr[..., :3], src[:3] + "8"
    if src == "32FC1":
        arr, src = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "mono8"
    if src not in OUTPUT_ENCODINGS:
        raise ValueError(f"cannot convert from {src!r} (sources: {', '.join(OUTPUT_ENCODINGS)})")
    # colour order first, then depth, then channels
    if src in ("bgr8", "rgb8") and dst in ("bgr8", "rgb8"):
        return np.ascontiguousarray(arr[..., ::-1])
    if src in ("bgr8", "rgb8"):
        b, g, r = (arr[..., 0], arr[..., 1], arr[..., 2]) if src == "bgr8" else \
            (arr[..., 2], arr[..., 1], arr[..., 0])
        mono = (0.114 * b + 0.587 * g + 0.299 * r + 0.5).astype(np.uint8)
        return convert(mono, "mono8", dst)
    # src is mono8 or mono16
    if src == "mono16" and dst != "mono16":
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
        src = "mono8"
    if dst == "mono16":
        return arr.astype(np.uint16) * 257
    if dst == "mono8":
        return arr
    return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))


def from_opencv(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """Name the encoding of an array as OpenCV returns it (imread/VideoCapture), normalising
    what the line does not carry (alpha, 16-bit colour) to bgr8."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        if arr.dtype == np.uint8:
            return arr, "mono8"
        if arr.dtype == np.uint16:
            return arr, "mono16"
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3]
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        if arr.dtype == np.uint8:
            return np.ascontiguousarray(arr), "bgr8"
    raise ValueError(f"unsupported image layout {arr.shape} {arr.dtype}")
