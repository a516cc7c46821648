"""Check one backend's outputs against ONNX Runtime on reference inputs (max abs error,
same argmax). Used after every TensorRT engine build; the figures go into the log."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

ARGMAX_OUTPUTS = {"logits": -1, "scores": -1}


def compare(reference: Callable[[np.ndarray], dict], candidate: Callable[[np.ndarray], dict],
            inputs: list[np.ndarray]) -> dict:
    """Run both on each NCHW input; per output: max abs error, and for class outputs the
    fraction of positions with the same argmax. `ok` is False on any argmax disagreement
    or non-finite candidate value."""
    report: dict = {"inputs": len(inputs), "outputs": {}, "ok": True}
    for x in inputs:
        ref, got = reference(x), candidate(x)
        for name, r in ref.items():
            if name not in got:
                report["ok"] = False
                report["outputs"].setdefault(name, {})["missing"] = True
                continue
            r, g = np.asarray(r, np.float64), np.asarray(got[name], np.float64)
            entry = report["outputs"].setdefault(name, {"max_abs_err": 0.0})
            if r.shape != g.shape or not np.isfinite(g).all():
                entry["bad"] = f"shape {g.shape} vs {r.shape} or non-finite values"
                report["ok"] = False
                continue
            entry["max_abs_err"] = max(entry["max_abs_err"], float(np.abs(r - g).max()) if r.size else 0.0)
            if name in ARGMAX_OUTPUTS and r.size:
                same = float((r.argmax(-1) == g.argmax(-1)).mean())
                entry["argmax_agree"] = min(entry.get("argmax_agree", 1.0), same)
                if same < 1.0:
                    report["ok"] = False
    return report


def summary(report: dict) -> str:
    parts = []
    for name, e in report["outputs"].items():
        s = f"{name}: max_abs_err={e.get('max_abs_err', float('nan')):.3g}"
        if "argmax_agree" in e:
            s += f" argmax_agree={e['argmax_agree']:.3f}"
        if "bad" in e or e.get("missing"):
            s += f" ({e.get('bad', 'missing')})"
        parts.append(s)
    return f"{'OK' if report['ok'] else 'MISMATCH'} over {report['inputs']} input(s): " + "; ".join(parts)
