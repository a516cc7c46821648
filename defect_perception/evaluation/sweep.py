"""Threshold sweep from stored raw scores: how escape and false-reject rates move when a
source's reject threshold moves, without running inference again. Each source's result is
reduced to one defect score (higher = more defective); a part is rejected when its score
>= threshold."""
from __future__ import annotations

import numpy as np

GOOD_LABELS = {"pass", "good", "ok", "normal", "none", "background"}
CARD_THRESHOLD_KEYS = {"anomaly": ("image",), "classification": ("reject",), "detection": ("reject", "score")}


def defect_score(result: dict, card: dict | None = None) -> float | None:
    """The defect score carried by one result: anomaly_score when present, else the top
    level of the hierarchy (p(defect), or 1 - p(good) when it names a pass class), else the
    best detection score (0 for a detector that found nothing), else `score` read through
    the verdict. `card` (optional) gives the pass classes and the task."""
    card = card or {}
    good = GOOD_LABELS | {str(x).lower() for x in card.get("pass_classes") or []}
    if card.get("task") == "detection" and result.get("anomaly_score") is None:
        return max((float(d["score"]) for d in result.get("detections") or []), default=0.0)
    if result.get("anomaly_score") is not None:
        return float(result["anomaly_score"])
    hier = result.get("hierarchy") or []
    if hier:
        top = hier[0]
        s = float(top["score"])
        return 1.0 - s if str(top["label"]).lower() in good else s
    if result.get("detections"):
        return max(float(d["score"]) for d in result["detections"])
    if result.get("score") is None:
        return None
    s = float(result["score"])
    label = str(result.get("label") or "").lower()
    if label in good or (not label and result.get("verdict") == "pass"):
        return 1.0 - s
    return s


def raw_scores(parts: list[dict], cards: dict[str, dict] | None = None) -> dict[str, list[dict]]:
    """source -> [{index, score, truth}] for labelled parts with a result from that source."""
    out: dict[str, list[dict]] = {}
    for p in parts:
        label = (p.get("truth") or {}).get("label")
        for src, res in (p.get("results") or {}).items():
            s = defect_score(res, (cards or {}).get(src))
            if s is not None and label is not None:
                out.setdefault(src, []).append({"index": p["index"], "score": s, "truth": label})
    return dict(sorted(out.items()))


def rates_at(scores: np.ndarray, bad: np.ndarray, t: float) -> tuple[float | None, float | None]:
    rej = scores >= t
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    esc = float((~rej & bad).sum() / n_bad) if n_bad else None
    frr = float((rej & ~bad).sum() / n_good) if n_good else None
    return esc, frr


def sweep(rows: list[dict], operating: float | None = None) -> dict:
    """Escape and false-reject rate for every distinct threshold (plus one above the max);
    `operating` is the threshold in use (from the model card), marked on the curve."""
    scores = np.asarray([r["score"] for r in rows], float)
    bad = np.asarray([r["truth"] == "reject" for r in rows], bool)
    ts = np.unique(scores)
    ts = np.append(ts, ts[-1] + 1e-6 if ts.size else 1.0)
    curve = [(float(t), *rates_at(scores, bad, t)) for t in ts]
    out = {"n": len(rows), "n_defective": int(bad.sum()), "n_good": int((~bad).sum()),
           "thresholds": [c[0] for c in curve], "escape": [c[1] for c in curve],
           "false_reject": [c[2] for c in curve], "operating": None, "zero_escape": None}
    if operating is not None:
        esc, frr = rates_at(scores, bad, operating)
        out["operating"] = {"threshold": float(operating), "escape": esc, "false_reject": frr}
    zero = [c for c in curve if c[1] == 0.0]
    if zero:  # the highest threshold that still lets no defective part through, on THIS data
        t, esc, frr = max(zero, key=lambda c: c[0])
        out["zero_escape"] = {"threshold": t, "escape": esc, "false_reject": frr}
    return out


def card_threshold(card: dict | None) -> float | None:
    if not card:
        return None
    th = card.get("thresholds") or {}
    for key in CARD_THRESHOLD_KEYS.get(card.get("task"), ()):
        if isinstance(th.get(key), (int, float)):
            return float(th[key])
    return None


def sweep_all(parts: list[dict], cards: dict[str, dict] | None = None) -> dict:
    cards = cards or {}
    return {src: sweep(rows, card_threshold(cards.get(src)))
            for src, rows in raw_scores(parts, cards).items()}
