"""Decision fusion: one decision per part from the per-source results, with deadlines.

ROS-free and clock-free: every call takes `now_ns` (the same clock as the capture stamps,
ROS time on the line), so tests drive time explicitly. The sorter node feeds it parts
(from camera_info), results and malformed messages, and calls `poll(now_ns)` often.

Policy (configurable): a source's `review` maps through `review_as`; the part is rejected
when at least `reject_min_sources` sources reject, review when any source says review,
else pass. A source that is missing at the deadline or sent an unusable result triggers
the fail-safe action (`reject`, `review` or `stop-line`); the final action is the most
severe of the policy result and the fail-safe, so a rejecting source is never softened.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from defect_perception.core.result import make_result

ACTIONS = ("pass", "review", "reject", "stop-line")  # in increasing severity
FAIL_SAFE_ACTIONS = ("reject", "review", "stop-line")
SEVERITY = {a: i for i, a in enumerate(ACTIONS)}
# The result contract has three verdicts; stop-line is a reject that also stops the line.
VERDICT_OF = {"pass": "pass", "review": "review", "reject": "reject", "stop-line": "reject"}
# A decision the fail-safe made has these reason codes, the label FAIL_SAFE_LABEL, score null,
# and a reason starting "fail-safe <action>: ".
FAIL_SAFE_CODES = ("missing_result", "malformed_result")
FAIL_SAFE_LABEL = "fail-safe"


class FusionConfigError(ValueError):
    """A fusion setting that cannot work (names the setting and the value)."""


@dataclass
class FusionConfig:
    sources: tuple[str, ...] = ("inspector", "anomaly")
    window_ms: float = 500.0
    fail_safe: str = "reject"
    review_as: str = "review"
    reject_min_sources: int = 1
    # stamp: capture stamp + window; arrival: first seen + window; auto: stamp, unless the stamp is
    # more than max_skew_ms away from now (a replayed recording), then arrival
    deadline_base: str = "auto"
    max_skew_ms: float = 5000.0
    remember: int = 100_000  # decided stamps kept to recognise late/duplicate results

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources)
        if not self.sources:
            raise FusionConfigError("sources is empty: enable at least one of inspector, anomaly")
        if len(set(self.sources)) != len(self.sources):
            raise FusionConfigError(f"sources {list(self.sources)} lists a source twice")
        if self.fail_safe not in FAIL_SAFE_ACTIONS:
            raise FusionConfigError(f"fail_safe={self.fail_safe!r} is not one of {FAIL_SAFE_ACTIONS}")
        if self.review_as not in ("review", "reject", "pass"):
            raise FusionConfigError(f"review_as={self.review_as!r} is not one of review, reject, pass")
        if not 1 <= self.reject_min_sources <= len(self.sources):
            raise FusionConfigError(f"reject_min_sources={self.reject_min_sources} must be 1.."
                                    f"{len(self.sources)} (the number of sources)")
        if not self.window_ms > 0:
            raise FusionConfigError(f"window_ms={self.window_ms} must be > 0")
        if self.deadline_base not in ("auto", "stamp", "arrival"):
            raise FusionConfigError(f"deadline_base={self.deadline_base!r} is not one of "
                                    "auto, stamp, arrival")


def window_from_conveyor(speed_mm_s: float, distance_mm: float, margin_ms: float) -> float:
    """Decision window (ms) so the decision reaches the reject station in time: travel time
    from the camera to the station minus the actuation margin (valve/PLC scan time)."""
    if speed_mm_s <= 0 or distance_mm <= 0:
        raise FusionConfigError(f"conveyor speed {speed_mm_s} mm/s and distance {distance_mm} mm "
                                "must both be > 0")
    window = distance_mm / speed_mm_s * 1000.0 - margin_ms
    if window <= 0:
        raise FusionConfigError(f"travel time {distance_mm / speed_mm_s * 1000:.0f} ms is shorter "
                                f"than the actuation margin {margin_ms} ms: no time to decide")
    return window


@dataclass
class Part:
    stamp_ns: int
    deadline_ns: int
    frame_id: str = "camera"
    results: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Decision:
    """One part's decision. `action` may be stop-line; `verdict` is the contract's verdict."""

    stamp_ns: int
    frame_id: str
    action: str
    reason: str
    reason_code: str  # pass | source_reject | source_review | missing_result | malformed_result
    fail_safe: bool
    results: dict[str, dict]
    errors: dict[str, str]
    missing: list[str]

    @property
    def verdict(self) -> str:
        return VERDICT_OF[self.action]

    @property
    def decided_by_fail_safe(self) -> bool:
        """The fail-safe set the action (not just a note next to a source's reject)."""
        return self.reason_code in FAIL_SAFE_CODES

    def sources_summary(self) -> dict[str, dict]:
        """Per-source scores, models and latencies (for the audit log)."""
        out: dict[str, dict] = {}
        for src, r in self.results.items():
            out[src] = {"verdict": r.get("verdict"), "label": r.get("label"), "score": r.get("score"),
                        "anomaly_score": r.get("anomaly_score"), "model": r.get("model"),
                        "latency_ms": r.get("latency_ms") or {}, "reason": r.get("reason")}
        for src, err in self.errors.items():
            out[src] = {"error": err}
        for src in self.missing:
            out[src] = {"missing": True}
        return out

    def to_result(self, latency_ms: dict[str, float] | None = None) -> dict[str, Any]:
        """The `sorter/decision` JSON (result contract, source "sorter")."""
        lead = _lead_result(self)
        detections: list[dict] = []
        hierarchy: list[dict] = []
        anomaly = None
        lat: dict[str, float] = {}
        for src, r in self.results.items():
            detections.extend(r.get("detections") or [])
            hierarchy = hierarchy or list(r.get("hierarchy") or [])
            if anomaly is None and r.get("anomaly_score") is not None:
                anomaly = r["anomaly_score"]
            for k, v in (r.get("latency_ms") or {}).items():
                lat[f"{src}.{k}"] = v
        lat.update(latency_ms or {})
        if self.decided_by_fail_safe:
            # the label/score of a source that was present would read as the reason for the
            # decision ("REJECT normal 0.147"): the decision carries "fail-safe" and no score;
            # the sources' own labels and scores stay in the audit log (sources_summary)
            label, score = FAIL_SAFE_LABEL, None
        else:
            label = lead.get("label") if lead else None
            score = lead.get("score") if lead else None
        return make_result(
            stamp_ns=self.stamp_ns, frame_id=self.frame_id, source="sorter", verdict=self.verdict,
            model=None, label=label, score=score, hierarchy=hierarchy,
            detections=detections, anomaly_score=anomaly, latency_ms=lat, reason=self.reason)


def _lead_result(d: Decision) -> dict | None:
    """The source result that explains the decision (the most severe one)."""
    best = None
    for r in d.results.values():
        if best is None or SEVERITY.get(r["verdict"], 0) > SEVERITY.get(best["verdict"], 0):
            best = r
    return best


class Fuser:
    """Joins results by stamp and decides each part exactly once."""

    def __init__(self, config: FusionConfig | None = None):
        self.config = config or FusionConfig()
        self._parts: dict[int, Part] = {}
        self._decided: OrderedDict[int, str] = OrderedDict()
        self.counters: dict[str, int] = {k: 0 for k in (
            "parts", "decisions", "fail_safe", "duplicates", "late_after_decision", "malformed",
            "ignored_source", "out_of_order", "replayed_stamps")}
        self._last_camera_stamp = -1

    # ------------------------------------------------------------------ inputs
    @property
    def pending(self) -> int:
        return len(self._parts)

    def on_part(self, stamp_ns: int, now_ns: int, frame_id: str = "camera") -> None:
        """A captured part (from camera_info): it will get a decision by its deadline."""
        if stamp_ns in self._decided:
            return
        if stamp_ns < self._last_camera_stamp:
            self.counters["out_of_order"] += 1
        self._last_camera_stamp = max(self._last_camera_stamp, stamp_ns)
        self._part(stamp_ns, now_ns, frame_id)

    def on_result(self, source: str, result: dict, now_ns: int) -> Decision | None:
        """A parsed, valid result. Returns the decision when this completes the part."""
        if source not in self.config.sources:
            self.counters["ignored_source"] += 1
            return None
        stamp = int(result["stamp_ns"])
        if stamp in self._decided:
            self.counters["late_after_decision"] += 1
            return None
        part = self._part(stamp, now_ns, result.get("frame_id") or "camera")
        if source in part.results or source in part.errors:
            self.counters["duplicates"] += 1
            return None
        part.results[source] = result
        return self._maybe_complete(part)

    def on_malformed(self, source: str, text: str, error: str, now_ns: int) -> Decision | None:
        """A message that failed to parse or validate. If its stamp can be recovered the
        part counts that source as failed (fail-safe); else the part is decided at its
        deadline as missing that result. Either way it is counted, never dropped."""
        self.counters["malformed"] += 1
        stamp = recover_stamp(text)
        if source not in self.config.sources or stamp is None or stamp in self._decided:
            return None
        part = self._part(stamp, now_ns, "camera")
        if source in part.results or source in part.errors:
            self.counters["duplicates"] += 1
            return None
        part.errors[source] = error
        return self._maybe_complete(part)

    def poll(self, now_ns: int) -> list[Decision]:
        """Decide every part whose deadline has passed (fail-safe for what is missing)."""
        due = [p for p in self._parts.values() if p.deadline_ns <= now_ns]
        due.sort(key=lambda p: p.stamp_ns)
        return [self._decide(p) for p in due]

    def flush(self) -> list[Decision]:
        """Decide everything pending now (shutdown): nothing leaves undecided."""
        return [self._decide(p) for p in sorted(self._parts.values(), key=lambda p: p.stamp_ns)]

    # ------------------------------------------------------------------ internals
    def _part(self, stamp_ns: int, now_ns: int, frame_id: str) -> Part:
        part = self._parts.get(stamp_ns)
        if part is None:
            base = stamp_ns
            if self.config.deadline_base == "arrival":
                base = now_ns
            elif (self.config.deadline_base == "auto"
                  and abs(now_ns - stamp_ns) > self.config.max_skew_ms * 1e6):
                base = now_ns
                self.counters["replayed_stamps"] += 1
            part = Part(stamp_ns, base + int(self.config.window_ms * 1e6), frame_id)
            self._parts[stamp_ns] = part
            self.counters["parts"] += 1
        return part

    def _maybe_complete(self, part: Part) -> Decision | None:
        if all(s in part.results or s in part.errors for s in self.config.sources):
            return self._decide(part)
        return None

    def _decide(self, part: Part) -> Decision:
        cfg = self.config
        del self._parts[part.stamp_ns]
        missing = [s for s in cfg.sources if s not in part.results and s not in part.errors]
        rejects, reviews = [], []
        for src in cfg.sources:
            r = part.results.get(src)
            if r is None:
                continue
            v = r["verdict"] if r["verdict"] != "review" else cfg.review_as
            if v == "reject":
                rejects.append(src)
            elif v == "review":
                reviews.append(src)
        if len(rejects) >= cfg.reject_min_sources:
            action, code = "reject", "source_reject"
            reason = "; ".join(_describe(s, part.results[s]) for s in rejects)
        elif rejects or reviews:
            action, code = "review", "source_review"
            reason = "; ".join(_describe(s, part.results[s]) for s in rejects + reviews)
        else:
            action, code, reason = "pass", "pass", "all sources pass"
        fail_safe = bool(missing or part.errors)
        if fail_safe:
            why = [f"{s} result malformed ({part.errors[s]})" for s in part.errors]
            why += [f"{s} result missing at deadline ({cfg.window_ms:.0f} ms window)" for s in missing]
            if SEVERITY[cfg.fail_safe] >= SEVERITY[action]:
                code = "malformed_result" if part.errors else "missing_result"
                # a source that rejected/reviewed as well is still named (its label is replaced)
                reason = f"fail-safe {cfg.fail_safe}: " + "; ".join(why) + (
                    f"; also {reason}" if action != "pass" else "")
                action = cfg.fail_safe
            else:
                reason += "; also " + "; ".join(why)
            self.counters["fail_safe"] += 1
        self.counters["decisions"] += 1
        self._decided[part.stamp_ns] = action
        while len(self._decided) > cfg.remember:
            self._decided.popitem(last=False)
        return Decision(part.stamp_ns, part.frame_id, action, reason, code, fail_safe,
                        dict(part.results), dict(part.errors), missing)


def _describe(source: str, r: dict) -> str:
    bits = [f"{source}: {r['verdict']}"]
    if r.get("label"):
        bits.append(str(r["label"]))
    if r.get("score") is not None:
        bits.append(f"{r['score']:.3f}")
    elif r.get("anomaly_score") is not None:
        bits.append(f"anomaly {r['anomaly_score']:.3f}")
    if r.get("reason"):
        bits.append(f"({r['reason']})")
    return " ".join(bits)


def recover_stamp(text: str) -> int | None:
    """Best-effort stamp from a message that failed validation (valid JSON, bad fields)."""
    try:
        obj = json.loads(text)
    except (ValueError, TypeError):
        return None
    if isinstance(obj, dict):
        s = obj.get("stamp_ns")
        if isinstance(s, int) and not isinstance(s, bool) and s >= 0:
            return s
    return None
