"""Detector evaluation (numpy only, so it also scores ONNX Runtime outputs).

- mAP@0.5, COCO style: per class, detections sorted by score, greedy one-to-one matching
  at IoU >= 0.5, precision made monotone, 101-point interpolation; mean over classes that
  have ground truth.
- DeepPCB criterion (Tang et al. 2019): at the operating score threshold a detection is
  correct when IoU > 0.33 with a ground-truth box of the same class; precision = correct
  detections / detections, recall = ground-truth boxes found / ground-truth boxes.
- Board false-alarm rate: share of defect-free template images with any detection at or
  above the reject threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defect_perception.core.figures import pyplot, save_figure


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of x1y1x2y2 boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_keep: int = 1 << 30) -> np.ndarray:
    """Greedy NMS; returns kept indices sorted by score."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order) and len(keep) < max_keep:
        i = order[0]
        keep.append(i)
        if len(order) == 1:
            break
        ious = box_iou(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou]
    return np.asarray(keep, np.int64)


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_thr: float = 0.001,
    nms_iou: float = 0.5,
    max_det: int = 100,
    max_candidates: int = 2000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: boxes [K, 4], scores [K, C] -> (boxes, scores, classes): each anchor votes
    for its best class, score filter, class-wise NMS. The rule the runtime applies
    (core/postprocess/detection.py), so offline numbers are what the line sees."""
    c_all = scores.argmax(1)
    best = scores[np.arange(len(scores)), c_all]
    k = np.nonzero(best > score_thr)[0]
    c = c_all[k]
    if len(k) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    if len(k) > max_candidates:
        top = np.argpartition(-scores[k, c], max_candidates)[:max_candidates]
        k, c = k[top], c[top]
    b, s = boxes[k], scores[k, c]
    offset = c[:, None].astype(np.float64) * (
        boxes.max() + 1.0
    )  # batched NMS: classes never suppress each other
    keep = nms(b + offset, s, nms_iou, max_det)
    return b[keep].astype(np.float32), s[keep].astype(np.float32), c[keep].astype(np.int64)


@dataclass
class Detections:
    """Per image lists: boxes [n, 4], scores [n], classes [n] (in original image pixels)."""

    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    classes: list[np.ndarray] = field(default_factory=list)


def ap_101(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point interpolated average precision."""
    if len(recall) == 0:
        return 0.0
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    pts = np.linspace(0, 1, 101)
    idx = np.searchsorted(mrec, pts, side="left")
    return float(np.mean([mpre[i] if i < len(mpre) else 0.0 for i in idx]))


def pr_curve(
    dets: Detections, gt_boxes: list[np.ndarray], gt_classes: list[np.ndarray], cls: int, iou_thr: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(recall, precision, scores) along the sorted detections of one class; n_gt."""
    records = []
    n_gt = 0
    for img, (b, s, c) in enumerate(zip(dets.boxes, dets.scores, dets.classes, strict=False)):
        g = gt_boxes[img][gt_classes[img] == cls]
        n_gt += len(g)
        m = c == cls
        for bb, ss in zip(b[m], s[m], strict=False):
            records.append((float(ss), img, bb))
    records.sort(key=lambda r: -r[0])
    used = {i: np.zeros(int((gt_classes[i] == cls).sum()), bool) for i in range(len(gt_boxes))}
    tp = np.zeros(len(records))
    for k, (_, img, bb) in enumerate(records):
        g = gt_boxes[img][gt_classes[img] == cls]
        if len(g):
            ious = box_iou(bb[None], g)[0]
            ious[used[img]] = -1
            j = int(np.argmax(ious))
            if ious[j] >= iou_thr:
                used[img][j] = True
                tp[k] = 1
    ctp = np.cumsum(tp)
    recall = ctp / max(n_gt, 1)
    precision = ctp / np.arange(1, len(records) + 1) if records else np.zeros(0)
    return recall, precision, np.array([r[0] for r in records]), n_gt


def map50(
    dets: Detections, gt_boxes: list[np.ndarray], gt_classes: list[np.ndarray], class_names: list[str]
) -> dict:
    per = {}
    for c, name in enumerate(class_names):
        r, p, _, n_gt = pr_curve(dets, gt_boxes, gt_classes, c)
        if n_gt:
            per[name] = ap_101(r, p)
    return {"map50": float(np.mean(list(per.values()))) if per else 0.0, "ap50": per}


def deeppcb_criterion(
    dets: Detections,
    gt_boxes: list[np.ndarray],
    gt_classes: list[np.ndarray],
    class_names: list[str],
    score_thr: float,
    iou_thr: float = 0.33,
) -> dict:
    """Precision / recall / F-score, overall and per class, at a score threshold."""
    tot = {"det": 0, "correct": 0, "gt": 0, "found": 0}
    per = {n: dict(tot) for n in class_names}
    for b, s, c, gb, gc in zip(dets.boxes, dets.scores, dets.classes, gt_boxes, gt_classes, strict=False):
        m = s >= score_thr
        b, c = b[m], c[m]
        ious = box_iou(b, gb) if len(b) and len(gb) else np.zeros((len(b), len(gb)))
        same = c[:, None] == gc[None, :]
        hit = (ious > iou_thr) & same
        for k, name in enumerate(class_names):
            d = per[name]
            d["det"] += int((c == k).sum())
            d["correct"] += int(hit[c == k].any(1).sum()) if len(gb) else 0
            d["gt"] += int((gc == k).sum())
            d["found"] += int(hit[:, gc == k].any(0).sum()) if len(b) else 0
    out = {}
    for name, d in list(per.items()) + [("all", None)]:
        if d is None:
            d = {k: sum(per[n][k] for n in class_names) for k in tot}
        p = d["correct"] / d["det"] if d["det"] else 0.0
        r = d["found"] / d["gt"] if d["gt"] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[name] = {"precision": p, "recall": r, "f_score": f, **d}
    return out


def best_f_threshold(
    dets: Detections, gt_boxes, gt_classes, class_names, grid: np.ndarray | None = None
) -> tuple[float, float]:
    """Score threshold maximising the DeepPCB F-score (use on validation data only)."""
    grid = np.round(np.arange(0.05, 0.96, 0.025), 3) if grid is None else grid
    best = (0.5, -1.0)
    for t in grid:
        f = deeppcb_criterion(dets, gt_boxes, gt_classes, class_names, float(t))["all"]["f_score"]
        if f > best[1]:
            best = (float(t), f)
    return best


def false_alarm_rate(dets: Detections, threshold: float) -> float:
    """Share of (defect-free) images with any detection scored >= threshold."""
    if not dets.scores:
        return 0.0
    return float(np.mean([bool((s >= threshold).any()) for s in dets.scores]))


def plot_pr(
    dets: Detections, gt_boxes, gt_classes, class_names: list[str], path: str | Path, title: str = ""
) -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 5))
    for c, name in enumerate(class_names):
        r, p, _, n_gt = pr_curve(dets, gt_boxes, gt_classes, c)
        if n_gt:
            ax.plot(r, p, label=f"{name} AP50={ap_101(r, p):.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or "PR curves (IoU 0.5)")
    return save_figure(fig, path, dpi=110)
