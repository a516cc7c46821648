"""Classifier evaluation: accuracy, precision, recall, F1 (per class, macro, defect-vs-normal),
confusion matrix (+ PNG), per-level accuracy over the category tree, accuracy vs review rate
(low-confidence fine labels fall back to the coarse level), params, FLOPs, and ONNX Runtime
CPU latency (batch 1, median / p99).

Metrics take probabilities, so the same code scores a torch checkpoint and an ONNX file.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from defect_perception.core.figures import pyplot, save_figure
from defect_perception.inference.onnxruntime_backend import cpu_session as ort_session
from defect_perception.training.classification.data import TileSet, to_input

REVIEW_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def tree_levels(classes: list[str], tree: dict[str, str]) -> list[list[str]]:
    from defect_perception.training.classification.models import tree_levels as _tl

    return _tl(classes, tree)


def metrics(y: np.ndarray, probs: np.ndarray, classes: list[str], tree: dict[str, str] | None = None,
            pass_classes: tuple[str, ...] = ("normal",), review_grid=REVIEW_GRID) -> dict:
    y = np.asarray(y)
    pred = probs.argmax(1)
    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y, pred), 1)
    per_class = {}
    for i, c in enumerate(classes):
        p, r, f = _prf(cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i])
        per_class[c] = {"precision": p, "recall": r, "f1": f, "support": int(cm[i, :].sum())}
    present = [c for c in classes if per_class[c]["support"] > 0]
    out = {"n": int(len(y)), "accuracy": float((pred == y).mean()) if len(y) else 0.0,
           "macro_precision": float(np.mean([per_class[c]["precision"] for c in present])),
           "macro_recall": float(np.mean([per_class[c]["recall"] for c in present])),
           "macro_f1": float(np.mean([per_class[c]["f1"] for c in present])),
           "per_class": per_class, "confusion": cm.tolist(), "classes": list(classes)}
    pass_idx = [i for i, c in enumerate(classes) if c in pass_classes]
    if pass_idx:
        p_def = 1.0 - probs[:, pass_idx].sum(1)
        is_def = ~np.isin(y, pass_idx)
        says_def = p_def >= 0.5
        p, r, f = _prf((is_def & says_def).sum(), (~is_def & says_def).sum(), (is_def & ~says_def).sum())
        out["defect"] = {"accuracy": float((is_def == says_def).mean()), "precision": p, "recall": r, "f1": f}
    if tree:
        levels = tree_levels(classes, tree)
        per_level = []
        for d, lv in enumerate(levels):
            labels = sorted(set(lv), key=lv.index)
            member = np.array([[1.0 if lv[i] == lbl else 0.0 for lbl in labels] for i in range(n)])
            lp = probs @ member
            ly = np.array([labels.index(lv[i]) for i in y])
            per_level.append({"level": d, "labels": labels, "accuracy": float((lp.argmax(1) == ly).mean())})
        out["per_level"] = per_level
        # review curve: fine label only when confident, else the parent level (manual review bin)
        conf = probs.max(1)
        parent = levels[-2] if len(levels) > 1 else levels[-1]
        plabels = sorted(set(parent), key=parent.index)
        pp = probs @ np.array([[1.0 if parent[i] == lbl else 0.0 for lbl in plabels] for i in range(n)])
        p_ok = pp.argmax(1) == np.array([plabels.index(parent[i]) for i in y])
        curve = []
        for t in review_grid:
            ok = conf >= t
            curve.append({"fine_min": t, "review_rate": float(1 - ok.mean()),
                          "accuracy_accepted": float((pred[ok] == y[ok]).mean()) if ok.any() else 1.0,
                          "coarse_accuracy_reviewed": float(p_ok[~ok].mean()) if (~ok).any() else None})
        out["review_curve"] = curve
    return out


def confusion_png(m: dict, path: Path, title: str = "") -> Path:
    plt = pyplot()

    cm = np.asarray(m["confusion"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    classes = m["classes"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.6 + 0.75 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {m['accuracy'] * 100:.1f}% (n={m['n']})")
    return save_figure(fig, path)


# ---------------------------------------------------------------- ONNX Runtime


def onnx_probs(onnx_path: str | Path, ts: TileSet, mean, std, batch: int = 64,
               threads: int = 1) -> np.ndarray:
    sess = ort_session(onnx_path, threads)
    out = []
    for i in range(0, len(ts), batch):
        x = to_input(ts.images[i:i + batch], mean, std)
        z = sess.run(["logits"], {"input": x})[0].astype(np.float64)
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        out.append(e / e.sum(1, keepdims=True))
    return np.concatenate(out)


def ort_latency(sessions: dict[str, object], size: int, runs: int = 200, rounds: int = 5,
                warmup: int = 10) -> dict[str, dict]:
    """Batch-1 latency (ms) of several ONNX Runtime sessions, interleaved in rounds so every
    model sees the same machine load (this CPU is shared)."""
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, {"input": x})
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(per_round):
                t = time.perf_counter()
                s.run(None, {"input": x})
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"median_ms": float(np.median(v)), "p99_ms": float(np.percentile(v, 99)), "runs": len(v)}
            for k, v in times.items()}


def flops(model, size: int) -> int:
    """Multiply-accumulates of one forward at size x size (conv + linear layers)."""
    import torch
    from torch import nn

    total = [0]

    def conv_hook(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def lin_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train(was)
    for h in hooks:
        h.remove()
    return int(total[0])


def frame_eval(model_dir: str | Path, frames: list[tuple[Path, int]], progress: bool = False) -> dict:
    """Whole-frame pass/reject through the runtime (`load_model`: tiling, thresholds, worst
    tile wins), exactly as the line decides. frames: (path, 1 = defective / 0 = good)."""
    import cv2

    from defect_perception import load_model

    model = load_model(model_dir, backend="onnxruntime", threads=1)
    counts = {1: {"pass": 0, "review": 0, "reject": 0}, 0: {"pass": 0, "review": 0, "reject": 0}}
    it = frames
    if progress:
        from tqdm import tqdm
        it = tqdm(frames, desc="frames", unit="frame")
    for path, y in it:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{path}: unreadable or corrupt image")
        counts[y][model(img)["verdict"]] += 1
    bad, good = counts[1], counts[0]
    nb, ng = max(1, sum(bad.values())), max(1, sum(good.values()))
    return {"defective_frames": bad, "good_frames": good,
            "miss_rate": bad["pass"] / nb,                       # defective frame passed
            "false_reject_rate": good["reject"] / ng,            # good frame rejected
            "review_rate": (bad["review"] + good["review"]) / (nb + ng),
            "accuracy_reject_vs_pass": (bad["reject"] + good["pass"]) / (nb + ng)}


def frame_defect_scores(model_dir: str | Path,
                        frames: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the largest tile p(defect), computed with the runtime's own preprocessing
    and tile grid (so thresholds calibrated on it mean the same on the line)."""
    import cv2

    from defect_perception.core import tiling
    from defect_perception.core.model_card import load_card
    from defect_perception.core.preprocess import Preprocessor

    card = load_card(model_dir)
    pre = Preprocessor(card["input"])
    sess = ort_session(card["_onnx"])
    pass_idx = [card["classes"].index(c) for c in card["pass_classes"]]
    t = card["tiling"]
    scores, labels = [], []
    for path, y in frames:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{path}: unreadable or corrupt image")
        grid = tiling.tile_grid(img.shape[0], img.shape[1], t["tile"], t["overlap"])
        x, _ = pre.batch(tiling.crops(img, grid), [(gx, gy) for gx, gy, _, _ in grid], img.shape[:2])
        z = sess.run(["logits"], {"input": x})[0].astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        scores.append(float((1.0 - p[:, pass_idx].sum(1)).max()))
        labels.append(y)
    return np.asarray(scores), np.asarray(labels)


def calibrate_frame_thresholds(scores: np.ndarray, labels: np.ndarray, target_frr: float = 0.05) -> dict:
    """Reject threshold so that at most `target_frr` of good calibration frames are rejected
    (never below 0.5); frames between the 2x-FRR quantile and it go to review."""
    good = np.sort(scores[labels == 0])
    if len(good) == 0:
        return {"reject": 0.5, "review_band": [0.2, 0.5], "fine_min": 0.5}
    reject = float(max(0.5, np.quantile(good, 1 - target_frr)))
    lo = float(min(reject, max(0.2, np.quantile(good, max(0.0, 1 - 2 * target_frr)))))
    bad = scores[labels == 1]
    return {"reject": round(reject, 4), "review_band": [round(lo, 4), round(reject, 4)], "fine_min": 0.5,
            "calibration": {"target_false_reject": target_frr, "good_frames": int(len(good)),
                            "defective_frames_caught": float((bad >= reject).mean()) if len(bad) else None}}
