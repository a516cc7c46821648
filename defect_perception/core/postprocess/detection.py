"""Detection head: boxes decoded in the graph ([N, K, 4] x1,y1,x2,y2 model pixels) and
per-class scores ([N, K, C]); here: score filter, class-wise NMS, boxes mapped back to
published-image pixels, and the verdict.

Verdict: `reject` when a detection scores >= `reject`; `review` when the best one lies
in `review_band` [lo, hi]; else `pass`. Split into `candidates` / `nms` / `finalize` so
tiling can pool the candidates of every tile and run NMS once across tiles.
"""
from __future__ import annotations

import numpy as np

from defect_perception.core.postprocess import OutputError, require

MAX_DETECTIONS = 300


def postprocess(outputs: dict[str, np.ndarray], card: dict, meta: dict) -> dict:
    boxes, scores, labels = candidates(outputs, card, meta)
    return finalize(boxes, scores, labels, card)


def candidates(outputs: dict[str, np.ndarray], card: dict, meta: dict):
    """(boxes [M,4] in published-image pixels, scores [M], class indices [M]) above the
    score threshold, before NMS."""
    boxes = require(outputs, "boxes", 3)[0]
    scores = require(outputs, "scores", 3)[0]
    ncls = len(card["classes"])
    if boxes.shape[-1] != 4 or scores.shape[0] != boxes.shape[0]:
        raise OutputError(f"model outputs 'boxes' {boxes.shape} and 'scores' {scores.shape} do not "
                          "match ([K, 4] and [K, C])")
    if scores.shape[1] != ncls:
        raise OutputError(f"model output 'scores' has {scores.shape[1]} classes, the card lists {ncls}")
    th = card.get("thresholds") or {}
    score_t = float(th.get("score", 0.25))
    cls = scores.argmax(axis=1)
    best = scores[np.arange(scores.shape[0]), cls]
    keep = best >= score_t
    boxes, best, cls = boxes[keep], best[keep], cls[keep]
    tf = meta.get("transform")
    if tf is not None and len(boxes):
        boxes = tf.boxes_to_source(boxes)
    return boxes.reshape(-1, 4), best, cls


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float,
        max_det: int = MAX_DETECTIONS) -> np.ndarray:
    """Class-wise greedy NMS (boxes of different classes never suppress each other).
    Returns kept indices, best first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    shift = labels.astype(np.float32)[:, None] * (float(boxes.max()) + 1.0)
    b = boxes + shift
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        ov = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[ov <= iou]
    return np.asarray(keep, np.int64)


def finalize(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, card: dict) -> dict:
    th = card.get("thresholds") or {}
    keep = nms(boxes, scores, labels, float(th.get("nms_iou", 0.45)),
               int(card.get("max_detections", MAX_DETECTIONS)))
    classes = card["classes"]
    dets = [{"box": [round(float(v), 2) for v in boxes[i]], "label": classes[int(labels[i])],
             "score": float(scores[i])} for i in keep]
    reject_t = float(th.get("reject", 0.5))
    band = th.get("review_band")
    top = dets[0]["score"] if dets else 0.0
    reason = None
    if top >= reject_t:
        verdict = "reject"
    elif dets and band and len(band) == 2 and float(band[0]) <= top <= float(band[1]):
        verdict, reason = "review", "best detection score in review band"
    else:
        verdict = "pass"
    label = dets[0]["label"] if dets else None
    hierarchy = [{"level": "defect", "label": "defect" if dets else "normal",
                  "score": top if dets else 1.0}]
    if dets:
        tree = card.get("category_tree") or {}
        chain, seen = [label], {label}
        while (p := tree.get(chain[-1])) is not None and p not in seen:
            chain.append(p)
            seen.add(p)
        hierarchy += [{"level": "type" if i == 0 else "group", "label": n, "score": top}
                      for i, n in enumerate(chain) if n != "defect"][::-1]
    return {"verdict": verdict, "label": label, "score": top, "hierarchy": hierarchy,
            "detections": dets, "anomaly_score": None, "reason": reason}
