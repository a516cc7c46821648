"""Anchor boxes from K-means++ on ground-truth (w, h) with distance 1 - IoU.

IoU between two sizes is computed as if the boxes shared a centre, so large and small
boxes are compared by shape overlap rather than by Euclidean size (small boxes would
otherwise be lumped together).
"""

from __future__ import annotations

import numpy as np


def wh_iou(wh: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """IoU [N, K] of centre-aligned boxes of sizes wh [N, 2] and centers [K, 2]."""
    inter = np.minimum(wh[:, None, 0], centers[None, :, 0]) * np.minimum(wh[:, None, 1], centers[None, :, 1])
    union = wh[:, None].prod(2) + centers[None].prod(2) - inter
    return inter / np.maximum(union, 1e-12)


def kmeanspp_anchors(wh: np.ndarray, k: int = 9, seed: int = 0, iters: int = 300) -> np.ndarray:
    """k anchors [k, 2] sorted by area; K-means++ seeding (D^2 sampling on 1-IoU), then
    Lloyd iterations with the median as the cluster centre (robust to outlier sizes)."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]
    if len(wh) < k:
        raise ValueError(f"K-means++ anchors: need at least k={k} boxes with positive size, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centers = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = (1 - wh_iou(wh, np.asarray(centers))).min(1) ** 2
        centers.append(wh[rng.choice(len(wh), p=d / d.sum())] if d.sum() > 0 else wh[rng.integers(len(wh))])
    centers = np.asarray(centers)
    assign = None
    for _ in range(iters):
        new_assign = (1 - wh_iou(wh, centers)).argmin(1)
        if assign is not None and (new_assign == assign).all():
            break
        assign = new_assign
        for j in range(k):
            if (assign == j).any():
                centers[j] = np.median(wh[assign == j], 0)
    return centers[np.argsort(centers.prod(1))]


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Average IoU of each box with its best anchor (how well the anchors fit the data)."""
    return float(wh_iou(np.asarray(wh, np.float64), np.asarray(anchors, np.float64)).max(1).mean())
