"""PNG figures for the report (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from defect_perception.core.figures import pyplot, save_figure
from defect_perception.evaluation.metrics import VERDICTS

plt = pyplot()


def confusion_png(confusion: dict, path: Path) -> Path:
    rows = [t for t in ("pass", "reject", "unlabelled") if sum(confusion.get(t, {}).values())] or ["pass"]
    mat = np.array([[confusion.get(t, {}).get(v, 0) for v in VERDICTS] for t in rows])
    fig, ax = plt.subplots(figsize=(4.6, 1.2 + 0.7 * len(rows)), dpi=100)
    ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(1, mat.max()))
    ax.set_xticks(range(len(VERDICTS)), list(VERDICTS))
    ax.set_xlabel("decision")
    ax.set_yticks(range(len(rows)), [{"pass": "good", "reject": "defective"}.get(r, r) for r in rows])
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(j, i, str(mat[i, j]), ha="center", va="center",
                    color="white" if mat[i, j] > mat.max() / 2 else "black", fontsize=12)
    ax.set_title("Decisions vs labels")
    return save_figure(fig, path)


def latency_png(samples: dict[str, list[float]], path: Path) -> Path:
    names = list(samples)[:12] or ["(no latency data)"]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), dpi=80, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        vals = samples.get(name, [])
        if vals:
            ax.hist(vals, bins=min(40, max(5, len(vals) // 2)), color="#4477aa")
            ax.axvline(float(np.percentile(vals, 50)), color="k", ls="--", lw=1, label="p50")
            ax.axvline(float(np.percentile(vals, 99)), color="r", ls=":", lw=1, label="p99")
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return save_figure(fig, path)


def sweep_png(sweeps: dict[str, dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=100)
    for src, sw in sweeps.items():
        x = [v if v is not None else np.nan for v in sw["false_reject"]]
        y = [v if v is not None else np.nan for v in sw["escape"]]
        (line,) = ax.plot(x, y, marker=".", ms=3, label=f"{src} threshold")
        op = sw.get("operating")
        if op and op["escape"] is not None and op["false_reject"] is not None:
            ax.plot([op["false_reject"]], [op["escape"]], "o", ms=10, mfc="none", color=line.get_color(),
                    label=f"{src} operating point (t={op['threshold']:.3g})")
    ax.set_xlabel("false-reject rate (good parts rejected)")
    ax.set_ylabel("escape rate (defective parts passed)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Threshold sweep (from stored raw scores)")
    return save_figure(fig, path)
