"""Per-part lines and the end-of-run summary the launcher prints (ROS-free, so it is
tested on plain dicts). Input: result/decision JSON dicts (result contract) and the
camera's ground-truth labels (`{"stamp_ns": .., "label": "pass"|"reject", ...}`)."""
from __future__ import annotations

import time
from collections import Counter, OrderedDict
from datetime import datetime, timezone
from typing import Any

VERDICTS = ("pass", "reject", "review")


def is_fail_safe(result: dict[str, Any]) -> bool:
    """The sorter marks fail-safe decisions in `reason` ("fail-safe reject: ...") and the
    label "fail-safe"; a `fail_safe: true` field is honoured too."""
    reason = str(result.get("reason") or "").lower()
    return bool(result.get("fail_safe")) or result.get("label") == "fail-safe" \
        or reason.startswith("fail-safe")


def _stamp_text(stamp_ns: int) -> str:
    t = datetime.fromtimestamp(stamp_ns / 1e9, tz=timezone.utc)
    return t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


class PartTally:
    """Counts decisions per verdict, fail-safes, and agreement with labels when present."""

    def __init__(self, remember: int = 100_000):
        self.verdicts: Counter[str] = Counter()
        self.parts = 0
        self.fail_safe = 0
        self.malformed = 0
        self._decided: OrderedDict[int, str] = OrderedDict()
        self._labels: OrderedDict[int, str] = OrderedDict()
        self._remember = remember
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.last_at: float | None = None

    def on_result(self, result: dict[str, Any]) -> str:
        """Record one decision; returns the line to print for it."""
        stamp = int(result.get("stamp_ns") or 0)
        verdict = str(result.get("verdict") or "?")
        self.parts += 1
        self.verdicts[verdict] += 1
        fs = is_fail_safe(result)
        self.fail_safe += fs
        now = time.monotonic()
        self.first_at = self.first_at or now
        self.last_at = now
        _remember(self._decided, stamp, verdict, self._remember)
        label, score = result.get("label"), result.get("score")
        parts = [] if not label or (fs and label == "fail-safe") else [str(label)]  # FAIL-SAFE says it
        if isinstance(score, (int, float)):
            parts.append(f"{score:.3f}")
        elif isinstance(result.get("anomaly_score"), (int, float)):
            parts.append(f"anomaly={result['anomaly_score']:.3f}")
        what = " ".join(parts) or "-"
        truth = self._labels.get(stamp)
        extra = f"  [truth {truth}]" if truth else ""
        reason = result.get("reason")
        tail = f"  ({reason})" if reason else ""
        return (f"part {self.parts:>4}  {_stamp_text(stamp)}  {verdict.upper():<6}"
                f"{' FAIL-SAFE' if fs else ''}  {what}{tail}{extra}")

    def on_frame(self, stamp_ns: int) -> str:
        """A part seen only as a camera frame (no processing stage is running)."""
        self.parts += 1
        self.verdicts["frame-only"] += 1
        return (f"part {self.parts:>4}  {_stamp_text(stamp_ns)}  frame only "
                "(no inspector/anomaly/sorter running)")

    def on_label(self, label: dict[str, Any]) -> None:
        stamp = label.get("stamp_ns")
        value = label.get("label")
        if isinstance(stamp, int) and isinstance(value, str):
            _remember(self._labels, stamp, value, self._remember)

    def agreement(self) -> tuple[int, int, int] | None:
        """(labelled decided parts, agreeing, sent to review) or None without labels."""
        if not self._labels:
            return None
        n = agree = review = 0
        for stamp, verdict in self._decided.items():
            truth = self._labels.get(stamp)
            if truth is None:
                continue
            n += 1
            if verdict == "review":
                review += 1
            elif verdict == truth:
                agree += 1
        return n, agree, review

    def summary(self) -> list[str]:
        counts = ", ".join(f"{v} {self.verdicts.get(v, 0)}" for v in VERDICTS)
        others = {k: c for k, c in self.verdicts.items() if k not in VERDICTS}
        if others:
            counts += ", " + ", ".join(f"{k} {c}" for k, c in sorted(others.items()))
        lines = [f"parts: {self.parts} ({counts}); fail-safe: {self.fail_safe}"]
        if self.first_at is not None and self.last_at is not None and self.parts > 1 \
                and self.last_at > self.first_at:
            lines.append(f"rate: {(self.parts - 1) / (self.last_at - self.first_at):.2f} parts/s")
        ag = self.agreement()
        if ag is not None and ag[0] == 0:
            lines.append(f"camera labels seen: {len(self._labels)} (no decision to compare them with)")
        elif ag is not None:
            n, agree, review = ag
            decided = n - review
            pct = f"{100.0 * agree / decided:.1f}%" if decided else "n/a"
            lines.append(f"agreement with camera labels: {agree}/{decided} decided parts ({pct}); "
                         f"{review} sent to review; {n} labelled parts")
        if self.malformed:
            lines.append(f"unreadable messages: {self.malformed}")
        return lines


def _remember(d: OrderedDict, key: int, value: str, limit: int) -> None:
    d[key] = value
    if len(d) > limit:
        d.popitem(last=False)
