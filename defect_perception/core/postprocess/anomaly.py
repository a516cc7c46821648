"""Anomaly head: image verdict from the calibrated threshold, regions and heatmap.

Card thresholds: `image` (the score at which a part is rejected, calibrated on held-out good
images for a target false-reject rate) and optional `review_band` [lo, hi]. Verdict: `reject`
when score >= image; else `review` when lo <= score <= hi; else `pass`.

Fields: `anomaly_score` is the model's raw image score; `score` is that score divided by the
image threshold (1.0 = at the reject threshold), so operators read one scale whatever the
model. For non-passing parts, connected regions of the map at or above the image threshold
become `detections` (label "anomaly", box in published-image pixels, score = region peak /
threshold), at most `max_regions` (card thresholds, default 20). Extra key `map`: float32
HxW heatmap at the published image's resolution (0 outside an ROI), for anomaly/heatmap.
"""
from __future__ import annotations

import cv2
import numpy as np

from defect_perception.core.postprocess import OutputError, require


def decide(score: float, thresholds: dict) -> tuple[str, str | None]:
    """Verdict and reason for an image score under the card's (possibly live) thresholds."""
    if "image" not in thresholds:
        raise OutputError("anomaly model card has no thresholds.image (run calibration)")
    thr = float(thresholds["image"])
    band = thresholds.get("review_band")
    if score >= thr:
        return "reject", None
    if band and len(band) == 2 and float(band[0]) <= score <= float(band[1]):
        return "review", "anomaly score in review band"
    return "pass", None


def regions(amap: np.ndarray, threshold: float, max_regions: int = 20) -> list[tuple[np.ndarray, float]]:
    """Boxes [x1, y1, x2, y2] (model pixels) and peak values of map regions >= threshold."""
    mask = (amap >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for r in range(1, n):
        x, y, w, h = stats[r, :4]
        peak = float(amap[y:y + h, x:x + w][labels[y:y + h, x:x + w] == r].max())
        out.append((np.array([x, y, x + w, y + h], np.float32), peak))
    out.sort(key=lambda t: -t[1])
    return out[:max_regions]


def heatmap_to_image(amap: np.ndarray, meta: dict) -> np.ndarray:
    """Model-resolution map -> float32 map of the published image (ROI offset applied)."""
    tf = meta.get("transform")
    if tf is None:
        return np.ascontiguousarray(amap, np.float32)
    crop = tf.map_to_source(amap)
    size = tuple(meta.get("image_size") or tf.image_size or crop.shape)
    ox, oy = int(round(tf.offset_x)), int(round(tf.offset_y))
    if (ox, oy) == (0, 0) and crop.shape[:2] == tuple(size[:2]):
        return np.ascontiguousarray(crop, np.float32)
    full = np.zeros(size[:2], np.float32)
    h, w = crop.shape[:2]
    full[oy:oy + h, ox:ox + w] = crop[: size[0] - oy, : size[1] - ox]
    return full


def postprocess(outputs: dict[str, np.ndarray], card: dict, meta: dict) -> dict:
    amap = require(outputs, "map", 4)
    score_arr = require(outputs, "score")
    if amap.shape[:2] != (1, 1):
        raise OutputError(f"model output 'map' has shape {amap.shape}, expected [1, 1, H, W]")
    if score_arr.size != 1:
        raise OutputError(f"model output 'score' has shape {score_arr.shape}, expected [1]")
    amap = amap[0, 0]
    score = float(score_arr.reshape(-1)[0])
    th = card.get("thresholds") or {}
    verdict, reason = decide(score, th)
    thr = float(th["image"])
    norm = thr if thr > 0 else 1.0
    detections = []
    if verdict != "pass":
        tf = meta.get("transform")
        for box, peak in regions(amap, thr, int(th.get("max_regions", 20))):
            b = tf.boxes_to_source(box[None])[0] if tf is not None else box
            detections.append({"box": [round(float(v), 1) for v in b], "label": "anomaly",
                               "score": round(peak / norm, 4)})
    label = "normal" if verdict == "pass" else "anomaly"
    return {"verdict": verdict, "label": label, "score": score / norm,
            "hierarchy": [{"level": "anomaly", "label": label, "score": score / norm}],
            "detections": detections, "anomaly_score": score, "reason": reason,
            "map": heatmap_to_image(amap, meta)}
