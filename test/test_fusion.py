"""Decision fusion: policy, deadlines, fail-safe, duplicates, out-of-order, malformed input."""
from __future__ import annotations

import json
import random

import pytest

from defect_perception.core.fusion import Fuser, FusionConfig, FusionConfigError, window_from_conveyor
from defect_perception.core.result import make_result, validate_result

MS = 1_000_000
T0 = 1_763_800_000_000_000_000


def res(source: str, stamp: int, verdict: str, **kw) -> dict:
    kw.setdefault("label", {"pass": "normal", "reject": "short", "review": "open"}[verdict])
    kw.setdefault("score", 0.9)
    return make_result(stamp_ns=stamp, frame_id="camera", source=source, verdict=verdict,
                       model={"name": f"{source}-model", "sha256": "ab" * 32}, **kw)


@pytest.mark.parametrize("insp,anom,expected", [
    ("pass", "pass", "pass"), ("reject", "pass", "reject"), ("pass", "reject", "reject"),
    ("review", "pass", "review"), ("pass", "review", "review"), ("reject", "review", "reject"),
])
def test_policy_any_reject_then_any_review(insp, anom, expected):
    f = Fuser(FusionConfig(window_ms=100))
    assert f.on_result("inspector", res("inspector", T0, insp), T0) is None  # waits for anomaly
    d = f.on_result("anomaly", res("anomaly", T0, anom, anomaly_score=0.3), T0 + MS)
    assert d is not None and d.action == expected and not d.fail_safe
    out = validate_result(d.to_result({"decision": 0.2}))
    assert out["source"] == "sorter" and out["verdict"] == expected and out["anomaly_score"] == 0.3
    assert out["reason"] and out["latency_ms"]["decision"] == 0.2


def test_configurable_policy_review_as_and_two_source_reject():
    f = Fuser(FusionConfig(review_as="reject"))
    f.on_result("inspector", res("inspector", T0, "review"), T0)
    assert f.on_result("anomaly", res("anomaly", T0, "pass"), T0).action == "reject"
    f = Fuser(FusionConfig(reject_min_sources=2))
    f.on_result("inspector", res("inspector", T0, "reject"), T0)
    d = f.on_result("anomaly", res("anomaly", T0, "pass"), T0)
    assert d.action == "review" and "inspector: reject short" in d.reason
    f = Fuser(FusionConfig(sources=("inspector",)))  # anomaly switched off
    assert f.on_result("inspector", res("inspector", T0, "pass"), T0).action == "pass"
    assert f.on_result("anomaly", res("anomaly", T0 + 1, "reject"), T0) is None
    assert f.counters["ignored_source"] == 1 and f.pending == 0


def test_missing_result_gets_fail_safe_at_deadline_exactly_once():
    f = Fuser(FusionConfig(window_ms=50))
    f.on_part(T0, T0)  # learnt from camera_info; no result will ever come
    f.on_result("inspector", res("inspector", T0 + 10 * MS, "pass"), T0 + 10 * MS)
    assert f.poll(T0 + 49 * MS) == []
    first = f.poll(T0 + 50 * MS)
    assert [d.stamp_ns for d in first] == [T0]
    d = first[0]
    assert d.action == "reject" and d.fail_safe and d.reason_code == "missing_result"
    assert "inspector result missing" in d.reason and "anomaly result missing" in d.reason
    assert d.to_result()["label"] == "fail-safe"
    second = f.poll(T0 + 60 * MS)
    assert [d.stamp_ns for d in second] == [T0 + 10 * MS]
    assert second[0].action == "reject" and second[0].missing == ["anomaly"]
    assert f.poll(T0 + 1000 * MS) == [] and f.pending == 0
    # a late result after the decision changes nothing and is counted
    assert f.on_result("anomaly", res("anomaly", T0, "pass"), T0 + 2000 * MS) is None
    assert f.counters["late_after_decision"] == 1 and f.counters["decisions"] == 2


@pytest.mark.parametrize("fail_safe,expected", [("review", "review"), ("stop-line", "stop-line")])
def test_fail_safe_choice_never_softens_a_reject(fail_safe, expected):
    f = Fuser(FusionConfig(window_ms=10, fail_safe=fail_safe))
    f.on_result("inspector", res("inspector", T0, "pass"), T0)
    d = f.poll(T0 + 10 * MS)[0]
    assert d.action == expected and d.verdict == ("reject" if expected == "stop-line" else "review")
    f.on_result("inspector", res("inspector", T0 + 1, "reject"), T0)
    d = f.poll(T0 + 11 * MS)[0]
    assert d.action == ("reject" if fail_safe == "review" else "stop-line")
    assert "anomaly result missing" in d.reason


def test_duplicates_and_out_of_order_and_malformed():
    f = Fuser(FusionConfig(window_ms=100))
    stamps = [T0 + i * 50 * MS for i in range(20)]
    events = [(s, src) for s in stamps for src in ("inspector", "anomaly", "inspector")]  # one duplicate each
    random.Random(3).shuffle(events)
    decided = []
    for s, src in events:
        d = f.on_result(src, res(src, s, "pass"), s)
        if d is not None:
            decided.append(d.stamp_ns)
    assert sorted(decided) == stamps and len(decided) == len(set(decided))
    assert f.counters["duplicates"] + f.counters["late_after_decision"] == 20

    # malformed with a recoverable stamp: that source failed -> fail-safe now, with the topic's error
    f = Fuser(FusionConfig(window_ms=100))
    f.on_result("inspector", res("inspector", T0, "pass"), T0)
    bad = json.dumps({"stamp_ns": T0, "verdict": "maybe"})
    d = f.on_malformed("anomaly", bad, "/line/anomaly/result: result field verdict: 'maybe'", T0)
    assert d.action == "reject" and d.reason_code == "malformed_result" and "/line/anomaly/result" in d.reason
    # unrecoverable garbage: counted; the part (known from the camera) is decided at the deadline
    f.on_part(T0 + 1, T0)
    assert f.on_malformed("inspector", "{not json", "malformed JSON", T0) is None
    f.on_result("anomaly", res("anomaly", T0 + 1, "pass"), T0)
    (d,) = f.poll(T0 + 200 * MS)
    assert d.stamp_ns == T0 + 1 and d.action == "reject" and f.counters["malformed"] == 2


def test_deadline_from_arrival_and_conveyor():
    old = T0 - 3600 * 10**9  # a replayed bag: stamps an hour old
    for base in ("arrival", "auto"):
        f = Fuser(FusionConfig(window_ms=20, deadline_base=base))
        f.on_part(old, T0)
        f.on_part(T0 + MS, T0)  # a live stamp
        assert f.poll(T0 + 19 * MS) == []
        assert len(f.poll(T0 + 20 * MS)) == (2 if base == "arrival" else 1)  # auto: live stamp keeps its own
        assert len(f.poll(T0 + 21 * MS)) == (0 if base == "arrival" else 1)
    assert f.counters["replayed_stamps"] == 1
    f = Fuser(FusionConfig(window_ms=20, deadline_base="stamp"))
    f.on_part(old, T0)
    assert len(f.poll(T0)) == 1  # strict: an old stamp is past its deadline at once
    assert window_from_conveyor(500.0, 400.0, 50.0) == pytest.approx(750.0)
    with pytest.raises(FusionConfigError, match="shorter than the actuation margin"):
        window_from_conveyor(1000.0, 10.0, 50.0)
    with pytest.raises(FusionConfigError, match="fail_safe='drop'"):
        FusionConfig(fail_safe="drop")
    with pytest.raises(FusionConfigError, match="reject_min_sources=2"):
        FusionConfig(sources=("inspector",), reject_min_sources=2)


def test_flush_decides_everything_pending():
    f = Fuser(FusionConfig(window_ms=1000))
    for i in range(5):
        f.on_part(T0 + i, T0)
    out = f.flush()
    assert [d.stamp_ns for d in out] == [T0 + i for i in range(5)] and f.pending == 0
    assert all(d.fail_safe and d.action == "reject" for d in out)


def test_fail_safe_decision_carries_fail_safe_label_not_the_present_sources():
    """`REJECT FAIL-SAFE  normal 0.147` read as if "normal" decided: a decision the fail-safe
    made has label "fail-safe" and no score; the sources' own values stay in the audit details."""
    f = Fuser(FusionConfig(window_ms=10))
    f.on_result("anomaly", res("anomaly", T0, "pass", label="normal", score=0.147, anomaly_score=0.147), T0)
    (d,) = f.poll(T0 + 10 * MS)
    assert d.action == "reject" and d.decided_by_fail_safe
    out = validate_result(d.to_result())
    assert out["label"] == "fail-safe" and out["score"] is None
    assert out["reason"].startswith("fail-safe reject: inspector result missing")
    assert out["anomaly_score"] == 0.147  # the anomaly model's own number, under its own name
    audit = d.sources_summary()
    assert audit["anomaly"]["label"] == "normal" and audit["anomaly"]["score"] == 0.147
    assert audit["inspector"] == {"missing": True}

    # a source that rejected too: fail-safe label, but the reason still names the source's finding
    box = {"box": [1.0, 2.0, 3.0, 4.0], "label": "short", "score": 0.8}
    f.on_result("inspector", res("inspector", T0 + 1, "reject", detections=[box]), T0)
    (d,) = f.poll(T0 + 11 * MS)
    out = d.to_result()
    assert out["label"] == "fail-safe" and out["score"] is None and out["detections"] == [box]
    assert "anomaly result missing" in out["reason"] and "also inspector: reject short 0.900" in out["reason"]

    # a source's reject that is more severe than the fail-safe decides: its label stays
    f = Fuser(FusionConfig(window_ms=10, fail_safe="review"))
    f.on_result("inspector", res("inspector", T0, "reject"), T0)
    (d,) = f.poll(T0 + 10 * MS)
    out = d.to_result()
    assert d.fail_safe and not d.decided_by_fail_safe
    assert out["label"] == "short" and out["score"] == 0.9 and "also anomaly result missing" in out["reason"]
