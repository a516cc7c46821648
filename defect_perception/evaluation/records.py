"""Join what the collector saw on the line (frames, labels, results, decisions, each with
the collector's receive time) with the recording's frames and the ground truth, giving one
`part` dict per recorded frame. Pure data in, data out, so reports can be rebuilt from the
stored `events.json` without re-running the line."""
from __future__ import annotations

from defect_perception.evaluation.labels import Truth, truth_from_obj
from defect_perception.evaluation.recording import Recording


def empty_events() -> dict:
    return {"frames": [], "labels": [], "results": {}, "decisions": [], "status": []}


def _index_of_published(rec: Recording, events: dict) -> dict[int, int]:
    """published stamp -> recording index. The camera's label messages carry the index;
    otherwise a stamp equal to a recorded header stamp; otherwise publication order (the
    camera publishes a recording in order)."""
    by_header = {f.stamp_ns: f.index for f in rec.frames}
    mapping: dict[int, int] = {}
    for lab in events.get("labels", []):
        if lab.get("index") is not None and lab.get("stamp_ns") is not None:
            mapping[int(lab["stamp_ns"])] = int(lab["index"])
    for order, fr in enumerate(events.get("frames", [])):
        s = int(fr["stamp_ns"])
        if s not in mapping:
            mapping[s] = by_header.get(s, order)
    return mapping


def join_parts(rec: Recording, events: dict, sidecar: dict[int, Truth] | None = None
               ) -> tuple[list[dict], dict]:
    """Returns (parts, join) where `join` counts what could not be matched."""
    mapping = _index_of_published(rec, events)
    truth: dict[int, Truth] = dict(rec.labels)
    for lab in events.get("labels", []):
        idx = mapping.get(int(lab.get("stamp_ns", -1)), lab.get("index"))
        if idx is not None and idx not in truth and "label" in lab:
            truth[int(idx)] = truth_from_obj(lab, "camera/label")
    if sidecar:
        truth.update(sidecar)  # an explicit sidecar wins over labels in the recording
    published = {idx: s for s, idx in mapping.items()}
    seen_t = {int(f["stamp_ns"]): f.get("t") for f in events.get("frames", [])}
    parts = []
    for f in rec.frames:
        stamp = published.get(f.index, f.stamp_ns)
        t = truth.get(f.index)
        parts.append({"index": f.index, "stamp_ns": stamp, "header_stamp_ns": f.stamp_ns,
                      "seen": stamp in seen_t, "truth": t.to_json() if t else None,
                      "decision": None, "results": {}, "e2e_ms": None})
    by_stamp = {p["stamp_ns"]: p for p in parts}
    unmatched_results = 0
    for src, items in sorted(events.get("results", {}).items()):
        for item in items:
            p = by_stamp.get(int(item["result"]["stamp_ns"]))
            if p is None:
                unmatched_results += 1
            else:
                p["results"][src] = item["result"]
    unmatched, duplicates = [], 0
    for item in events.get("decisions", []):
        d = item["decision"]
        p = by_stamp.get(int(d["stamp_ns"]))
        if p is None:
            unmatched.append(int(d["stamp_ns"]))
            continue
        if p["decision"] is not None:
            duplicates += 1
            continue
        p["decision"] = d
        t0 = seen_t.get(p["stamp_ns"])
        if t0 is not None and item.get("t") is not None:
            p["e2e_ms"] = round((item["t"] - t0) * 1000.0, 3)
    join = {"frames": len(parts), "seen": sum(p["seen"] for p in parts),
            "decided": sum(p["decision"] is not None for p in parts),
            "labelled": sum(p["truth"] is not None for p in parts),
            "decisions_received": len(events.get("decisions", [])),
            "unmatched_decisions": len(unmatched), "unmatched_decision_stamps": unmatched[:20],
            "duplicate_decisions": duplicates, "unmatched_results": unmatched_results,
            "undecided_indices": [p["index"] for p in parts if p["decision"] is None][:50]}
    return parts, join
