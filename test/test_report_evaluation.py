"""ROS-free parts of `evaluate-line`: labels, recording index, scoring, sweep, comparison and
the HTML/JSON report (rendered in headless Chromium when it is installed)."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from defect_perception.evaluation import EvaluationError
from defect_perception.evaluation.compare import compare, write_compare
from defect_perception.evaluation.labels import load_sidecar, match_sidecar
from defect_perception.evaluation.metrics import wilson
from defect_perception.evaluation.recording import open_recording
from defect_perception.evaluation.records import empty_events, join_parts
from defect_perception.evaluation.report import build_report, write_report
from defect_perception.evaluation.sweep import sweep
from defect_perception.evaluation.testing import SynthFrame, expected_confusion, write_bag

FRAMES = [SynthFrame(True, "reject", ["open"]), SynthFrame(False, "pass"),
          SynthFrame(False, "reject", ["short"]), SynthFrame(True, "pass"),
          SynthFrame(True, "reject", ["open", "short"]), SynthFrame(False, "pass"),
          SynthFrame(False, "pass"), SynthFrame(True, "reject", ["spur"])]


def fake_line_events(rec, flip: set[int] = frozenset(), drop: set[int] = frozenset()) -> dict:
    """What the collector would record from a line that rejects the bright frames
    (`flip` inverts some decisions, `drop` loses some): the input data of the ROS-free code."""
    ev = empty_events()
    ev["results"]["inspector"] = []
    for f in rec.frames:
        t = f.index * 0.1
        ev["frames"].append({"stamp_ns": f.stamp_ns, "t": t})
        bright = FRAMES[f.index].bright
        p_defect = (0.9 if bright else 0.1) + 0.01 * f.index
        verdict = "reject" if p_defect >= 0.5 else "pass"
        if f.index in flip:
            verdict = "pass" if verdict == "reject" else "reject"
        res = {"schema": "defect_perception/result/1", "stamp_ns": f.stamp_ns, "frame_id": "camera",
               "source": "inspector", "model": {"name": "tiny", "sha256": "ab" * 32}, "verdict": verdict,
               "label": "open" if verdict == "reject" else "normal", "score": max(p_defect, 1 - p_defect),
               "hierarchy": [{"level": "defect", "label": "defect", "score": p_defect}],
               "detections": [{"box": [10, 10, 40, 30], "label": "open", "score": 0.8}] if bright else [],
               "anomaly_score": None, "latency_ms": {"infer": 2.0 + f.index}, "reason": None}
        ev["results"]["inspector"].append({"t": t + 0.01, "result": res})
        if f.index not in drop:
            dec = dict(res, source="sorter", model=None, latency_ms={"inspector.infer": 2.0, "fuse": 0.2},
                       reason="all sources pass" if verdict == "pass" else "inspector reject")
            ev["decisions"].append({"t": t + 0.02, "decision": dec})
    return ev


@pytest.fixture()
def bag(tmp_path) -> Path:
    return write_bag(tmp_path / "bag", FRAMES)


class DataKeys(HTMLParser):
    """Collects the text of every element carrying data-key."""

    def __init__(self):
        super().__init__()
        self.values: dict[str, str] = {}
        self._key = None

    def handle_starttag(self, tag, attrs):
        self._key = dict(attrs).get("data-key", self._key)

    def handle_data(self, data):
        if self._key is not None:
            self.values[self._key] = data
            self._key = None


def lookup(obj, key: str):
    for part in key.split("/"):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def test_wilson_matches_textbook_values():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson(0, 0) == (0.0, 1.0)


def test_recording_index_and_labels(bag):
    rec = open_recording(bag)
    assert rec.image_topic == "/line/camera/image_raw" and len(rec.frames) == len(FRAMES)
    assert [rec.labels[i].label for i in range(len(FRAMES))] == [f.label for f in FRAMES]
    assert rec.labels[4].defect_types == ("open", "short")


def test_recording_without_image_topic_names_the_problem(tmp_path, bag):
    with pytest.raises(EvaluationError, match=r"no topic '/line/cam/image_raw'.*image topics"):
        open_recording(bag, image_topic="/line/cam/image_raw")
    with pytest.raises(EvaluationError, match="does not exist"):
        open_recording(tmp_path / "nope")


def test_sidecar_labels_by_index_and_stamp(tmp_path, bag):
    rec = open_recording(bag)
    csv = tmp_path / "labels.csv"
    csv.write_text("index,label,defect_types\n0,ng,open;short\n3,ok,\n99,reject,\n")
    truth, unmatched = match_sidecar(load_sidecar(csv), rec.stamps, str(csv))
    assert truth[0].label == "reject" and truth[0].defect_types == ("open", "short")
    assert truth[3].label == "pass" and [e.index for e in unmatched] == [99]
    js = tmp_path / "labels.json"
    js.write_text(json.dumps([{"stamp_ns": rec.stamps[2], "label": "pass"}]))
    truth, _ = match_sidecar(load_sidecar(js), rec.stamps, str(js))
    assert truth == {2: truth[2]} and truth[2].label == "pass"


def test_sidecar_that_matches_no_frame_is_an_error(tmp_path, bag):
    rec = open_recording(bag)
    js = tmp_path / "labels.jsonl"
    js.write_text('{"stamp_ns": 5, "label": "reject"}\n{"index": 500, "label": "pass"}\n')
    with pytest.raises(EvaluationError, match=r"labels.jsonl: none of the 2 labels matches a frame"):
        match_sidecar(load_sidecar(js), rec.stamps, str(js))
    bad = tmp_path / "bad.csv"
    bad.write_text("index,label\n0,maybe\n")
    with pytest.raises(EvaluationError, match=r"bad.csv:2: label 'maybe'"):
        load_sidecar(bad)


def test_report_json_matches_html_and_renders(tmp_path, bag):
    rec = open_recording(bag)
    ev = fake_line_events(rec)
    parts, join = join_parts(rec, ev)
    report = build_report({"recording": str(bag), "image_topic": rec.image_topic}, parts, join, do_sweep=True,
                          cards={"inspector": {"task": "classification", "thresholds": {"reject": 0.5}}})
    page = write_report(tmp_path / "out", report, parts, ev, (str(bag), rec.image_topic))
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["complete"] and on_disk["confusion"] == expected_confusion(FRAMES)
    n_bad = sum(f.label == "reject" for f in FRAMES)
    escapes = sum(f.label == "reject" and not f.bright for f in FRAMES)
    assert on_disk["rates"]["escape"]["k"] == escapes and on_disk["rates"]["escape"]["n"] == n_bad
    assert on_disk["per_type_recall"]["open"]["n"] == 2 and on_disk["per_type_recall"]["short"]["k"] == 1
    assert on_disk["gallery"]["total"]["escapes"] == escapes == len(on_disk["gallery"]["escapes"])
    # every figure the HTML shows is the JSON's figure
    keys = DataKeys()
    keys.feed(page.read_text())
    assert len(keys.values) > 40
    for key, text in keys.values.items():
        want = lookup(on_disk, key)
        if want is None:
            assert text == "-", key
        elif text.endswith("%"):
            assert float(text[:-1]) == pytest.approx(100 * want, abs=0.006), key
        else:
            assert float(text) == pytest.approx(want, rel=1e-3, abs=0.006), key
    for fig in list(on_disk["figures"].values()) + [g["file"] for g in on_disk["gallery"]["escapes"]]:
        assert (tmp_path / "out" / fig).stat().st_size > 1000
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (scripts/install_test_system_deps.sh installs it)")
    shot = tmp_path / "shot.png"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    # both renders at once (two browser processes, separate profiles)
    dom_proc = subprocess.Popen(args + [f"--user-data-dir={tmp_path / 'p1'}", "--virtual-time-budget=3000",
                                        "--dump-dom", page.as_uri()],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    shot_proc = subprocess.Popen(args + [f"--user-data-dir={tmp_path / 'p2'}", "--window-size=1200,1600",
                                         f"--screenshot={shot}", page.as_uri()],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dom, _ = dom_proc.communicate(timeout=60)
    assert shot_proc.wait(timeout=60) == 0
    n_img = len(re.findall(r"<img ", page.read_text()))
    assert f"<title>rendered {n_img}/{n_img} images</title>" in dom  # every plot and thumbnail decoded
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1600, 1200)
    assert img.std() > 20  # text, tables and plots, not a blank page


def test_incomplete_run_is_not_marked_complete(bag, tmp_path):
    rec = open_recording(bag)
    parts, join = join_parts(rec, fake_line_events(rec, drop={2, 5}))
    report = build_report({}, parts, join)
    assert not report["complete"] and "every_frame_decided" in report["error"]
    assert join["undecided_indices"] == [2, 5] and not report["checks"]["seen_equals_decided"]


def test_sweep_from_stored_scores(bag, tmp_path):
    rec = open_recording(bag)
    parts, join = join_parts(rec, fake_line_events(rec))
    write_report(tmp_path / "out", build_report({}, parts, join), parts)
    stored = json.loads((tmp_path / "out" / "parts.json").read_text())  # no inference needed again
    rows = [{"index": p["index"], "score": p["results"]["inspector"]["hierarchy"][0]["score"],
             "truth": p["truth"]["label"]} for p in stored]
    sw = sweep(rows, operating=0.5)
    esc, frr = sw["escape"], sw["false_reject"]
    assert esc == sorted(esc) and frr == sorted(frr, reverse=True)  # raising t: more escapes, fewer rejects
    assert esc[0] == 0.0 and frr[0] == 1.0 and esc[-1] == 1.0 and frr[-1] == 0.0
    bad = np.array([r["truth"] == "reject" for r in rows])
    s = np.array([r["score"] for r in rows])
    assert sw["operating"]["escape"] == pytest.approx(((s < 0.5) & bad).sum() / bad.sum())
    assert sw["operating"]["false_reject"] == pytest.approx(((s >= 0.5) & ~bad).sum() / (~bad).sum())
    assert sw["zero_escape"]["escape"] == 0.0 and not math.isnan(sw["zero_escape"]["threshold"])


def test_compare_lists_flipped_decisions(bag, tmp_path):
    rec = open_recording(bag)
    for name, flip in (("a", set()), ("b", {0, 2})):
        parts, join = join_parts(rec, fake_line_events(rec, flip=flip))
        write_report(tmp_path / name, build_report({"recording": str(bag), "image_topic": rec.image_topic},
                                                   parts, join), parts)
    cmp = compare(tmp_path / "a", tmp_path / "b")
    flips = {f["index"]: f for f in cmp["flipped"]}
    assert set(flips) == {0, 2}
    assert flips[0]["change"] == "broke" and flips[0]["a"] == "reject" and flips[0]["b"] == "pass"
    assert flips[2]["change"] == "fixed"
    page = write_compare(tmp_path / "cmp", cmp)
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["flip_counts"] == {"fixed": 1, "broke": 1, "changed": 0}
    assert all((tmp_path / "cmp" / f["file"]).is_file() for f in saved["flipped"])
    assert "part 0: reject &rarr; pass (broke)" in page.read_text()
    (tmp_path / "a" / "report.json").write_text(json.dumps({"complete": False, "error": "x"}))
    with pytest.raises(EvaluationError, match="not complete"):
        compare(tmp_path / "a", tmp_path / "b")


def test_defect_score_reads_each_result_kind():
    from defect_perception.evaluation.sweep import defect_score

    good = {"verdict": "pass", "label": "ok_board", "score": 0.8,
            "hierarchy": [{"level": "defect", "label": "ok_board", "score": 0.8}], "detections": [],
            "anomaly_score": None}
    assert defect_score(good, {"task": "classification", "pass_classes": ["ok_board"]}) == pytest.approx(0.2)
    bad = dict(good, verdict="reject", label="open", hierarchy=[{"level": "defect", "label": "defect",
                                                                  "score": 0.7}])
    assert defect_score(bad) == pytest.approx(0.7)
    assert defect_score(dict(good, anomaly_score=3.5)) == 3.5
    det = {"verdict": "pass", "label": None, "score": None, "hierarchy": [], "detections": [],
           "anomaly_score": None}
    assert defect_score(det, {"task": "detection"}) == 0.0
    det["detections"] = [{"box": [0, 0, 1, 1], "label": "open", "score": 0.4},
                         {"box": [0, 0, 1, 1], "label": "short", "score": 0.6}]
    assert defect_score(det, {"task": "detection"}) == 0.6


def test_failsafe_decisions_are_listed_with_reasons(bag):
    rec = open_recording(bag)
    ev = fake_line_events(rec)
    res = ev["results"]["inspector"][1]["result"]  # node fallback: nothing inspected
    res.update(verdict="reject", label=None, score=None, hierarchy=[], detections=[],
               reason="bad frame: truncated")
    ev["decisions"][1]["decision"].update(verdict="reject", reason="inspector: reject (bad frame: truncated)")
    ev["decisions"][4]["decision"].update(verdict="reject", label="fail-safe",
                                          reason="fail-safe reject: inspector missing at deadline")
    parts, join = join_parts(rec, ev)
    fs = build_report({}, parts, join)["failsafe"]
    assert fs["count"] == 2 and [p["index"] for p in fs["parts"]] == [1, 4]
    assert fs["by_reason"] == {"inspector: bad frame: truncated": 1,
                               "sorter: fail-safe reject: inspector missing at deadline": 1}
