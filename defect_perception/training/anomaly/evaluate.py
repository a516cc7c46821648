"""Evaluate an exported anomaly model (model.json + model.onnx) the way the line runs it.

Frames go through the runtime's own preprocessing and backend (`load_model(dir)`), so the
numbers are what the anomaly node would produce. No torch needed. Metrics are computed at the
model's input resolution (map output), pixel ground truth = union of the DeepPCB boxes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from defect_perception.core.figures import pyplot, save_figure
from defect_perception.training.anomaly.data import EvalItem, box_mask
from defect_perception.training.anomaly.metrics import (
    aupro,
    auroc,
    mean_iou,
    pixel_auroc,
    rates_at,
    roc_curve,
)
from defect_perception.training.deeppcb import load_gray


def run_model(model, items: list[EvalItem], batch: int = 8, progress: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N, H, W] (model resolution) and scores [N] through the runtime path."""
    from tqdm import tqdm

    maps, scores = [], []
    for i in tqdm(range(0, len(items), batch), desc="evaluate", disable=not progress, leave=False):
        imgs = [load_gray(it.path) for it in items[i:i + batch]]
        x, _ = model.pre.batch(imgs, [(0, 0)] * len(imgs), imgs[0].shape[:2])
        out = model.infer(x)
        maps.append(out["map"][:, 0].astype(np.float32))
        scores.append(out["score"].reshape(-1).astype(np.float32))
    return np.concatenate(maps), np.concatenate(scores)


def latency_ms(model, image: np.ndarray, repeat: int = 30, warmup: int = 5) -> dict[str, float]:
    """Batch-1 end-to-end `model(image)` latency (preprocess + infer + postprocess)."""
    for _ in range(warmup):
        model(image)
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model(image)
        t.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(t, 50)), "p95": float(np.percentile(t, 95)), "runs": repeat}


def compute_metrics(maps: np.ndarray, scores: np.ndarray, items: list[EvalItem], card: dict
                    ) -> dict[str, Any]:
    labels = np.array([it.label for it in items])
    size = maps.shape[-1]
    masks = np.stack([box_mask(it.boxes, it.shape, size) for it in items])
    th = card["thresholds"]
    thr = float(th["image"])
    band = th.get("review_band")
    rates = rates_at(scores, labels, thr)
    review = np.zeros_like(labels, bool)
    if band:
        review = (scores >= float(band[0])) & (scores < thr)
    return {
        "image_auroc": auroc(scores, labels),
        "pixel_auroc": pixel_auroc(maps, masks),
        "aupro_30": aupro(maps, masks, 0.3),
        "miou_at_threshold": mean_iou(maps, masks, thr),
        "threshold": thr,
        **rates,
        "review_rate_good": float(review[labels == 0].mean()),
        "review_rate_defective": float(review[labels == 1].mean()),
        "good_images": int((labels == 0).sum()), "defective_images": int((labels == 1).sum()),
    }


def plots(out_dir: Path, maps: np.ndarray, scores: np.ndarray, items: list[EvalItem], card: dict,
          n_examples: int = 4) -> list[Path]:
    """ROC curve, score histograms and heatmap overlays (PNG). Heatmap colours run from 0 to the
    90th percentile of the defective images' scores (red = at least that)."""
    import cv2
    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = np.array([it.label for it in items])
    thr = float(card["thresholds"]["image"])
    written = []
    fpr, tpr, _ = roc_curve(scores, labels)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUROC {auroc(scores, labels):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate (good parts)")
    ax.set_ylabel("true-positive rate (defective parts)")
    ax.set_title(f"{card['name']}: image ROC")
    ax.legend(loc="lower right")
    written.append(save_figure(fig, out_dir / "roc.png", dpi=120))

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(scores.min(), scores.max(), 40)
    ax.hist(scores[labels == 0], bins, alpha=0.6, label="good (templates)")
    ax.hist(scores[labels == 1], bins, alpha=0.6, label="defective (tested)")
    ax.axvline(thr, color="k", ls="--", label=f"threshold {thr:.3g}")
    ax.set_xlabel("image anomaly score")
    ax.set_ylabel("parts")
    ax.legend(fontsize=8)
    written.append(save_figure(fig, out_dir / "score_hist.png", dpi=120))

    defect_idx = [i for i in range(len(items)) if labels[i] == 1][:n_examples]
    good_idx = [i for i in range(len(items)) if labels[i] == 0][:2]
    tiles = []
    size = maps.shape[-1]
    vmax = float(np.percentile(scores[labels == 1], 90)) if (labels == 1).any() else thr   # colour scale
    for i in good_idx + defect_idx:
        img = cv2.resize(load_gray(items[i].path), (size, size), interpolation=cv2.INTER_AREA)
        level = np.clip(maps[i] / vmax * 255, 0, 255).astype(np.uint8)
        over = cv2.addWeighted(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), 0.55,
                               cv2.applyColorMap(level, cv2.COLORMAP_JET), 0.45, 0)
        h, w = items[i].shape
        for x1, y1, x2, y2 in items[i].boxes:
            p1 = (int(x1 * size / w), int(y1 * size / h))
            p2 = (int(x2 * size / w), int(y2 * size / h))
            cv2.rectangle(over, p1, p2, (255, 255, 255), 1)
        kind, verdict = ('GOOD' if labels[i] == 0 else 'DEFECT'), ('REJ' if scores[i] >= thr else 'ok')
        tag = f"{kind} {scores[i]:.2f} {verdict}"
        cv2.putText(over, tag, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(over)
    if tiles:
        rows = [np.hstack(tiles[k:k + 3] + [np.zeros_like(tiles[0])] * (3 - len(tiles[k:k + 3])))
                for k in range(0, len(tiles), 3)]
        written.append(out_dir / "heatmaps.png")
        cv2.imwrite(str(written[-1]), np.vstack(rows))
    return written
