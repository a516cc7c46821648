"""Scores for a replayed shift: confusion matrix, escape / false-reject / review rates with
Wilson 95% intervals, per-defect-type recall, latency percentiles, fail-safe decisions.

Definitions (stated in the report): an *escape* is a defective part decided `pass`; a *false
reject* is a good part decided `reject`; `review` parts go to the manual bin and count as
neither. Per-type recall counts a defective part as caught when it was not passed.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np

VERDICTS = ("pass", "reject", "review")
TRUTHS = ("pass", "reject")
Z95 = 1.959963984540054
REPLAY_INVALID = {"e2e"}
FAILSAFE_RE = re.compile(r"fail-safe|failsafe|fail_safe|timeout|deadline|missing|malformed", re.I)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (0, 1) when n == 0. Unlike the
    normal approximation it stays inside [0, 1] and is sensible for k = 0 (few escapes)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": (k / n) if n else None, "ci95": [lo, hi]}


def is_failsafe(decision: dict) -> bool:
    flag = decision.get("fail_safe", decision.get("failsafe"))
    if isinstance(flag, bool):
        return flag
    if decision.get("label") == "fail-safe":
        return True
    reason = decision.get("reason")
    return bool(reason) and bool(FAILSAFE_RE.search(str(reason)))


def is_fallback(result: dict) -> bool:
    """A source result that inspected nothing (no model, bad frame, model error, skipped
    frame): a reason and no score of any kind. Its verdict is the node's fail-safe verdict."""
    return bool(result.get("reason")) and result.get("score") is None \
        and result.get("anomaly_score") is None and not result.get("detections")


def failsafe_reasons(part: dict) -> list[str]:
    """Why this part's decision was (partly) a fail-safe one: the sorter's fail-safe and each
    source's fallback, as 'who: reason'."""
    results = part.get("results") or {}
    dec = part.get("decision") or {}
    out = []
    if dec and dec.get("source", "sorter") not in results and is_failsafe(dec):
        out.append(f"{dec.get('source', 'sorter')}: {dec.get('reason')}")
    out += [f"{src}: {res.get('reason')}" for src, res in sorted(results.items()) if is_fallback(res)]
    return out


def latency_summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    arr = np.asarray(values, float)
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "max": float(arr.max()), "mean": float(arr.mean())}


def latency_samples(parts: list[dict]) -> dict[str, list[float]]:
    """Per-stage latency samples: `<source>.<stage>` from each result's latency_ms, the
    sorter's own latency_ms entries, and `line.end_to_end` (camera frame seen -> decision seen, by the
    collector's clock)."""
    out: dict[str, list[float]] = defaultdict(list)
    for p in parts:
        for src, res in sorted((p.get("results") or {}).items()):
            for k, v in (res.get("latency_ms") or {}).items():
                if isinstance(v, (int, float)):
                    out[f"{src}.{k}"].append(float(v))
        dec = p.get("decision") or {}
        src = dec.get("source") or "sorter"
        lat = dec.get("latency_ms") if src not in (p.get("results") or {}) else None  # no double count
        if isinstance(lat, dict):
            for k, v in lat.items():
                # dotted keys are the sources' stages (counted above); the sorter's `e2e` runs from
                # the capture stamp, which on a replay is the recording's time: line.end_to_end
                # (collector clock) measures the same path instead
                if isinstance(v, (int, float)) and "." not in k and k not in REPLAY_INVALID:
                    out[f"{src}.{k}"].append(float(v))
        elif isinstance(lat, (int, float)):
            out[f"{src}.total"].append(float(lat))
        if isinstance(p.get("e2e_ms"), (int, float)):
            out["line.end_to_end"].append(float(p["e2e_ms"]))
    return dict(sorted(out.items()))


def score(parts: list[dict]) -> dict:
    """All figures of the report from joined parts (see records.join_parts)."""
    decided = [p for p in parts if p.get("decision")]
    confusion = {t: dict.fromkeys(VERDICTS, 0) for t in (*TRUTHS, "unlabelled")}
    for p in decided:
        t = (p.get("truth") or {}).get("label") or "unlabelled"
        confusion[t][p["decision"]["verdict"]] += 1
    bad, good = confusion["reject"], confusion["pass"]
    n_bad, n_good = sum(bad.values()), sum(good.values())
    n_all = len(decided)
    rates = {
        "escape": rate(bad["pass"], n_bad),
        "false_reject": rate(good["reject"], n_good),
        "review": rate(sum(c["review"] for c in confusion.values()), n_all),
        "accuracy": rate(bad["reject"] + good["pass"], n_bad + n_good),
    }
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p in decided:
        truth = p.get("truth") or {}
        if truth.get("label") == "reject":
            for t in set(truth.get("defect_types") or []):
                per_type[t][1] += 1
                per_type[t][0] += p["decision"]["verdict"] != "pass"
    recall = {t: rate(k, n) for t, (k, n) in sorted(per_type.items())}
    failsafe = [{"index": p["index"], "stamp_ns": p["stamp_ns"], "verdict": p["decision"]["verdict"],
                 "reasons": why} for p in decided if (why := failsafe_reasons(p))]
    reasons = Counter(r[:200] for d in failsafe for r in d["reasons"])
    models: dict[str, dict] = {}
    for p in parts:
        for src, res in (p.get("results") or {}).items():
            m = res.get("model")
            if m:
                models.setdefault(src, {})[m.get("sha256") or "-"] = m.get("name")
    latency = {k: latency_summary(v) for k, v in latency_samples(parts).items()}
    return {
        "confusion": confusion,
        "rates": rates,
        "per_type_recall": recall,
        "failsafe": {"count": len(failsafe), "by_reason": dict(reasons.most_common()), "parts": failsafe},
        "latency_ms": latency,
        "models": {src: [{"name": n, "sha256": s} for s, n in v.items()]
                   for src, v in sorted(models.items())},
    }
