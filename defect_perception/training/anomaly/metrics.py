"""Anomaly metrics and threshold calibration in numpy (+ OpenCV for connected regions).

No scikit-learn here: ROC/AUROC are computed from sorted scores (ties handled by grouping),
AUPRO follows the MVTec AD definition (mean per-region overlap vs. false-positive rate on
good pixels, integrated up to FPR 0.3 and divided by 0.3).
"""
from __future__ import annotations

import cv2
import numpy as np


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FPR, TPR and thresholds (descending) of `score >= threshold` predicting label 1."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("ROC needs both good (0) and defective (1) samples")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]   # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def calibrate_threshold(good_scores: np.ndarray, target_frr: float) -> float:
    """Smallest threshold whose false-reject rate (score >= threshold) on these good scores is
    at most `target_frr`: at most floor(n * target) good images are rejected."""
    s = np.sort(np.asarray(good_scores, np.float64).ravel())[::-1]
    if s.size == 0:
        raise ValueError("threshold calibration needs at least one good score")
    allowed = int(np.floor(s.size * target_frr + 1e-9))
    if allowed >= s.size:
        return float(s[-1])
    return float(np.nextafter(np.float32(s[allowed]), np.float32(np.inf)))


def rates_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """False-reject rate on good parts and escape rate (missed) on defective parts."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    rej = scores >= threshold
    return {"false_reject_rate": float(rej[~labels].mean()) if (~labels).any() else float("nan"),
            "escape_rate": float((~rej[labels]).mean()) if labels.any() else float("nan")}


def pixel_auroc(maps: np.ndarray, masks: np.ndarray, max_pixels: int = 4_000_000, seed: int = 0) -> float:
    """Pixel AUROC over all pixels of all images (uniformly subsampled beyond max_pixels)."""
    s, y = maps.ravel(), masks.ravel()
    if s.size > max_pixels:
        idx = np.random.default_rng(seed).choice(s.size, max_pixels, replace=False)
        s, y = s[idx], y[idx]
    return auroc(s, y)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, steps: int = 200) -> float:
    """Normalised area under the per-region-overlap curve up to `fpr_limit`.

    maps: float [N, H, W]; masks: {0,1} [N, H, W]. Regions are the 8-connected components of each
    ground-truth mask. FPR is measured over every good pixel of every image."""
    maps = np.asarray(maps, np.float32)
    regions = []   # (image index, flat pixel indices)
    for i, m in enumerate(masks):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        for r in range(1, n):
            regions.append((i, np.flatnonzero(lab == r)))
    if not regions:
        raise ValueError("AUPRO needs at least one defective region")
    neg_sorted = np.sort(maps[masks == 0])
    # thresholds: quantiles of the good pixels in the FPR range, just above the highest good pixel
    # (FPR 0), and quantiles of all pixels (covers ties and maps that separate perfectly)
    q = np.linspace(1.0 - fpr_limit, 1.0, steps)
    thr = np.unique(np.r_[np.quantile(neg_sorted, q), np.nextafter(neg_sorted[-1], np.float32(np.inf)),
                          np.quantile(maps, np.linspace(0, 1, steps))])
    flat = maps.reshape(maps.shape[0], -1)
    region_scores = [np.sort(flat[i][idx]) for i, idx in regions]
    fprs, pros = [0.0], [0.0]                       # threshold +inf
    for t in thr:
        fprs.append(1.0 - np.searchsorted(neg_sorted, t, side="left") / neg_sorted.size)
        pros.append(float(np.mean([1.0 - np.searchsorted(rs, t, side="left") / rs.size
                                   for rs in region_scores])))
    fprs, pros = np.asarray(fprs), np.asarray(pros)
    order = np.lexsort((pros, fprs))
    fprs, pros = fprs[order], pros[order]
    inside = fprs <= fpr_limit
    x, y = fprs[inside], pros[inside]
    if (~inside).any():                             # interpolate the curve at exactly fpr_limit
        j = int(np.argmax(~inside))
        f0, f1, p0, p1 = fprs[j - 1], fprs[j], pros[j - 1], pros[j]
        x, y = np.r_[x, fpr_limit], np.r_[y, p0 + (p1 - p0) * (fpr_limit - f0) / max(f1 - f0, 1e-12)]
    return float(np.trapezoid(y, x) / fpr_limit)


def mean_iou(maps: np.ndarray, masks: np.ndarray, threshold: float) -> float:
    """Mean over defective images of IoU(map >= threshold, ground-truth mask)."""
    ious = []
    for m, g in zip(maps, masks, strict=False):
        if not g.any():
            continue
        p = m >= threshold
        g = g.astype(bool)
        ious.append((p & g).sum() / max(1, (p | g).sum()))
    return float(np.mean(ious)) if ious else float("nan")
