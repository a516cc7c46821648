"""Classification head: softmax, verdict from p(defect), review band, per-class
thresholds, and coarse-label fallback along the card's category tree.

p(defect) = 1 - sum of p over `pass_classes`. Verdict: `reject` when p(defect) >= reject
(or a defect class reaches its `per_class` threshold); else `review` when p(defect) lies
in `review_band` [lo, hi]; else `pass`. The label walks the category tree from the top
down, taking the likeliest child while its probability (the sum over its fine classes) is
>= `fine_min`; stopping above the fine level means "defective, type unsure": the label is
the coarser node and a `reject` becomes `review` (manual bin), as in hierarchical FMA.
"""
from __future__ import annotations

import numpy as np

from defect_perception.core.postprocess import OutputError, require

DEFAULT_PASS = ("normal", "good", "ok", "pass")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Tree:
    """The category tree prepared once per card (cached on the card dict)."""

    def __init__(self, card: dict):
        self.classes = list(card["classes"])
        self.pass_classes = set(card.get("pass_classes") or [c for c in self.classes if c in DEFAULT_PASS])
        self.parent: dict[str, str] = dict(card.get("category_tree") or {})
        self.levels = card.get("category_levels")
        self.defect_idx = [i for i, c in enumerate(self.classes) if c not in self.pass_classes]
        self.pass_idx = [i for i, c in enumerate(self.classes) if c in self.pass_classes]
        self.chain = {c: self._chain(c) for c in self.classes}  # root..leaf
        nodes: dict[str, list[int]] = {}
        for i in self.defect_idx:
            for n in self.chain[self.classes[i]]:
                nodes.setdefault(n, []).append(i)
        self.members = nodes  # node -> fine-class indices below it (defect side only)
        self.children: dict[str, list[str]] = {}
        for n in nodes:
            p = self.parent.get(n)
            if p is not None:
                self.children.setdefault(p, []).append(n)
        self.roots = [n for n in nodes if self.parent.get(n) is None]
        self.depth = {n: len(self._chain(n)) - 1 for n in nodes}
        # node probabilities in one product: rows = tree nodes, columns = fine classes
        self.node_index = {n: i for i, n in enumerate(nodes)}
        self.membership = np.zeros((len(nodes), len(self.classes)))
        for n, idx in nodes.items():
            self.membership[self.node_index[n], idx] = 1.0

    def _chain(self, c: str) -> list[str]:
        out, seen = [c], {c}
        while (p := self.parent.get(out[-1])) is not None:
            if p in seen:
                raise OutputError(f"category_tree has a cycle through {p!r}")
            out.append(p)
            seen.add(p)
        return out[::-1]

    def level_name(self, node: str) -> str:
        d = self.depth[node]
        if self.levels and d < len(self.levels):
            return str(self.levels[d])
        if node in self.classes:
            return "type"
        return "group" if d else "category"


def _tree(card: dict) -> Tree:
    t = card.get("_tree")
    if t is None or t.classes != list(card["classes"]):
        t = Tree(card)
        card["_tree"] = t
    return t


def postprocess(outputs: dict[str, np.ndarray], card: dict, meta: dict) -> dict:
    logits = require(outputs, "logits", 2)[0]
    tree = _tree(card)
    if logits.shape[0] != len(tree.classes):
        raise OutputError(f"model output 'logits' has {logits.shape[0]} classes, the card lists "
                          f"{len(tree.classes)} ({', '.join(tree.classes)})")
    return decide(softmax(logits.astype(np.float64)), card, tree)


def decide(p: np.ndarray, card: dict, tree: Tree | None = None) -> dict:
    tree = tree or _tree(card)
    th = card.get("thresholds") or {}
    reject_t = float(th.get("reject", 0.5))
    band = th.get("review_band")
    fine_min = float(th.get("fine_min", 0.0))
    per_class = th.get("per_class") or {}
    p_defect = float(1.0 - p[tree.pass_idx].sum()) if tree.pass_idx else 1.0
    p_defect = min(max(p_defect, 0.0), 1.0)

    forced = [c for c, t in per_class.items() if c in tree.chain and c not in tree.pass_classes
              and p[tree.classes.index(c)] >= float(t)]
    if p_defect >= reject_t or forced:
        verdict = "reject"
    elif band and len(band) == 2 and float(band[0]) <= p_defect <= float(band[1]):
        verdict = "review"
    else:
        verdict = "pass"

    if verdict == "pass" or not tree.defect_idx:
        best = max(tree.pass_idx, key=lambda i: p[i]) if tree.pass_idx else int(np.argmax(p))
        label = tree.classes[best]
        score = 1.0 - p_defect if tree.pass_idx else float(p[best])
        return {"verdict": verdict, "label": label, "score": score,
                "hierarchy": [{"level": "defect", "label": label, "score": 1.0 - p_defect}],
                "detections": [], "anomaly_score": None, "p_defect": p_defect,
                "reason": "p(defect) in review band" if verdict == "review" else None}

    path = forced_path(tree, p, max(forced, key=lambda c: p[tree.classes.index(c)])) if forced \
        else descend(tree, p, fine_min)
    label, score = path[-1]
    reason = "p(defect) in review band" if verdict == "review" else None
    if label not in tree.classes and verdict == "reject":
        verdict = "review"
        reason = f"fine class not confident (< fine_min {fine_min:g}); coarse label {label!r}"
    hierarchy = [{"level": "defect", "label": "defect", "score": p_defect}]
    # the synthetic or root "defect" node is already the first entry
    hierarchy += [{"level": tree.level_name(n), "label": n, "score": s} for n, s in path
                  if n in tree.depth and not (n == "defect" and tree.depth[n] == 0)]
    return {"verdict": verdict, "label": label, "score": score, "hierarchy": hierarchy,
            "detections": [], "anomaly_score": None, "p_defect": p_defect, "reason": reason}


def descend(tree: Tree, p: np.ndarray, fine_min: float) -> list[tuple[str, float]]:
    """Top-down walk over the defect side of the tree; stops when the likeliest child is
    below fine_min. Without a tree, the top defect class (or 'defect' when unsure)."""
    node_p = tree.membership @ p

    def prob(n: str) -> float:
        return float(node_p[tree.node_index[n]])

    level = tree.roots
    path: list[tuple[str, float]] = []
    while level:
        n = max(level, key=prob)
        if prob(n) < fine_min:
            break
        path.append((n, prob(n)))
        level = tree.children.get(n, [])
    if not path:
        path = [("defect", float(p[tree.defect_idx].sum()))]
    return path


def forced_path(tree: Tree, p: np.ndarray, cls: str) -> list[tuple[str, float]]:
    return [(n, float(p[tree.members[n]].sum())) for n in tree.chain[cls]]


def merge_tiles(outputs: dict[str, np.ndarray], card: dict, grid: list, offset=(0, 0)) -> dict:
    """Frame result from a batch of tile logits [N, C], vectorised: softmax and p(defect)
    for all tiles at once; the full decision (labels, tree) only for non-passing tiles and
    the worst one. Same answer as deciding every tile and taking the worst (core/tiling.py)."""
    from defect_perception.core import tiling

    logits = require(outputs, "logits", 2)
    tree = _tree(card)
    if logits.shape[1] != len(tree.classes):
        raise OutputError(f"model output 'logits' has {logits.shape[1]} classes, the card lists "
                          f"{len(tree.classes)} ({', '.join(tree.classes)})")
    p = softmax(logits.astype(np.float64))
    th = card.get("thresholds") or {}
    p_def = 1.0 - p[:, tree.pass_idx].sum(axis=1) if tree.pass_idx else np.ones(len(p))
    flag = p_def >= float(th.get("reject", 0.5))
    band = th.get("review_band")
    if band and len(band) == 2:
        flag |= (p_def >= float(band[0])) & (p_def <= float(band[1]))
    for c, t in (th.get("per_class") or {}).items():
        if c in tree.classes and c not in tree.pass_classes:
            flag |= p[:, tree.classes.index(c)] >= float(t)
    idx = sorted(set(np.flatnonzero(flag).tolist()) | {int(np.argmax(p_def))})
    results = {i: decide(p[i], card, tree) for i in idx}
    sub_grid = [grid[i] for i in idx]
    return tiling.merge_classification([results[i] for i in idx], sub_grid, offset)
