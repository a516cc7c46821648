"""Gallery thumbnails: the recorded frame with the line's view of it drawn on top
(detection boxes, verdict, truth, scores), so an escape or false reject can be judged at a
glance."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

COLORS = {"pass": (60, 170, 60), "reject": (40, 40, 220), "review": (0, 170, 230)}


def overlay(img: np.ndarray, part: dict, max_side: int = 360) -> np.ndarray:
    out = img.copy()
    h, w = out.shape[:2]
    for src, res in sorted((part.get("results") or {}).items()):
        for det in res.get("detections") or []:
            x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
            cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 255), max(1, w // 320))
            cv2.putText(out, f"{det['label']} {det['score']:.2f}", (x1, max(10, y1 - 3)),
                        cv2.FONT_HERSHEY_SIMPLEX, max(0.35, w / 1600), (0, 0, 255), 1, cv2.LINE_AA)
        _ = src
    scale = max_side / max(h, w)  # small frames are enlarged so the banner text stays legible
    if abs(scale - 1.0) > 1e-3:
        out = cv2.resize(out, (round(w * scale), round(h * scale)),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    dec = part.get("decision") or {}
    verdict = dec.get("verdict", "none")
    truth = (part.get("truth") or {}).get("label", "?")
    types = ",".join((part.get("truth") or {}).get("defect_types") or [])
    banner = np.full((34, out.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, f"#{part['index']} decided {verdict} | truth {truth} {types}"[:60], (4, 13),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    scores = " ".join(f"{s}:{_short(r)}" for s, r in sorted((part.get("results") or {}).items()))
    cv2.putText(banner, scores[:70], (4, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    out = np.vstack([banner, out])
    cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), COLORS.get(verdict, (128, 128, 128)), 3)
    return out


def _short(res: dict) -> str:
    if res.get("anomaly_score") is not None:
        return f"{res['verdict']} a={res['anomaly_score']:.3g}"
    s = res.get("score")
    if s is None:
        return str(res.get("verdict"))
    return f"{res.get('verdict')} {res.get('label') or ''} {s:.2f}"


def write_thumb(img: np.ndarray, part: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), overlay(img, part)):
        raise OSError(f"cannot write {path}")
    return path
