"""Tiling for small defects on large frames (ROS-free, torch-free).

DeepPCB defects are 20-60 px on 640 px frames: shrinking the whole frame to a
classifier's input loses them, so the frame is cut into overlapping tiles that run as
one batch and are merged back into one frame result:
- classification: the frame verdict is the worst tile's; each non-pass tile becomes a
  detection whose box is the tile, so the operator sees where the problem is;
- detection: tile boxes are shifted back to frame pixels (done by each tile's
  Transform) and NMS runs again across tiles, removing duplicates in the overlaps.
"""
from __future__ import annotations

import numpy as np

_SEVERITY = {"pass": 0, "review": 1, "reject": 2}


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles (x, y, w, h) covering the frame; the last row/column is aligned to the edge
    so every tile is full size (frames smaller than a tile give one clipped tile)."""
    if tile <= 0:
        raise ValueError(f"tile size must be > 0, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    return [(x, y, min(tile, width), min(tile, height))
            for y in _starts(height, tile, overlap) for x in _starts(width, tile, overlap)]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def crops(image: np.ndarray, grid: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    return [image[y:y + h, x:x + w] for x, y, w, h in grid]


def merge_classification(tile_results: list[dict], grid: list[tuple[int, int, int, int]],
                         offset: tuple[int, int] = (0, 0)) -> dict:
    """Frame result from per-tile classification results (worst tile wins; ties by score)."""
    worst = max(range(len(tile_results)), key=lambda i: (
        _SEVERITY[tile_results[i]["verdict"]], _defect_score(tile_results[i])))
    out = dict(tile_results[worst])
    dets = []
    for (x, y, w, h), r in zip(grid, tile_results, strict=False):
        if r["verdict"] != "pass":
            x0, y0 = x + offset[0], y + offset[1]
            dets.append({"box": [float(x0), float(y0), float(x0 + w), float(y0 + h)],
                         "label": r["label"] or "defect", "score": float(r["score"] or 0.0)})
    out["detections"] = sorted(dets, key=lambda d: -d["score"])
    out["tiles"] = len(grid)
    return out


def _defect_score(r: dict) -> float:
    """p(defect) carried by the classification postprocess (extra key), else the label score."""
    if r.get("p_defect") is not None:
        return float(r["p_defect"])
    return float(r.get("score") or 0.0)
