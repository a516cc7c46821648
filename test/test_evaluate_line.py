"""`defect-perception evaluate-line` end to end: a generated labelled recording through the
real line (camera, inspector with a tiny ONNX model, sorter as separate processes)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from defect_perception.evaluation.testing import SynthFrame, expected_confusion, write_bag

pytestmark = pytest.mark.slow

# bright frames look defective to the tiny classifier; some labels disagree on purpose
FRAMES = [SynthFrame(True, "reject", ["open"]), SynthFrame(False, "pass"),
          SynthFrame(False, "reject", ["short"]), SynthFrame(True, "pass"), SynthFrame(False, "pass"),
          SynthFrame(True, "reject", ["open", "short"]),
          SynthFrame(False, "pass"), SynthFrame(True, "reject", ["spur"])]


def write_config(path: Path, model: Path) -> Path:
    path.write_text(f"""camera:
  ros__parameters:
    frame_id: camera
inspector:
  ros__parameters:
    model: {model}
sorter:
  ros__parameters:
    sources: [inspector]
""")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from defect_perception.inference.testing import make_classifier

    d = tmp_path_factory.mktemp("evaluate_line")
    make_classifier(d / "model")
    # tens of ms of real convolution work per frame: a deliberately slow inspector
    make_classifier(d / "slow_model", name="slow-classifier", size=(192, 192), slow_convs=6)
    return {"dir": d, "bag": write_bag(d / "bag", FRAMES),
            "config": write_config(d / "line.yaml", d / "model"),
            "slow_config": write_config(d / "slow.yaml", d / "slow_model")}


def evaluate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "defect_perception.cli", "evaluate-line", "--quiet",
           "--nodes", "camera,inspector,sorter", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def verdicts(report_dir: Path) -> dict[int, str]:
    parts = json.loads((report_dir / "parts.json").read_text())
    return {p["header_stamp_ns"]: (p["decision"] or {}).get("verdict") for p in parts}


def test_labelled_recording_through_slowed_line_gives_expected_confusion_and_replays_identically(setup):
    """Two ack-paced replays with a deliberately slow inspector (queue depth 1, so unpaced
    frames would be skipped): every frame decided by the model, the expected confusion
    matrix, and the same decision for every part both times."""
    d = setup["dir"]
    runs = []
    for name, extra in (("run_a", ["--sweep"]), ("run_b", [])):
        proc = evaluate("--bag", str(setup["bag"]), "--config", str(setup["slow_config"]), "--report",
                        str(d / name), "-p", "inspector.queue_depth=1", *extra)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs.append(json.loads((d / name / "report.json").read_text()))
    a, b = runs
    counts = a["counts"]
    assert a["complete"] and counts["frames"] == counts["seen"] == counts["decided"] == len(FRAMES)
    assert a["confusion"] == expected_confusion(FRAMES)
    assert a["failsafe"]["count"] == 0
    infer = a["latency_ms"]["inspector.infer"]
    assert infer["n"] == len(FRAMES) and infer["p50"] > 5.0  # the inspector really was slow
    assert a["models"]["inspector"][0]["name"] == "slow-classifier"
    assert {g["index"] for g in a["gallery"]["escapes"]} == {i for i, f in enumerate(FRAMES)
                                                              if f.label == "reject" and not f.bright}
    assert a["sweep"]["inspector"]["operating"]["threshold"] == 0.5
    # determinism: same recording, same models -> the same decision for every part
    assert verdicts(d / "run_a") == verdicts(d / "run_b")
    assert a["meta"]["config_hash"] == b["meta"]["config_hash"] and len(a["meta"]["config_hash"]) == 64
    assert a["meta"]["software"]["package"]
    # compare: nothing flipped between the two replays
    proc = subprocess.run([sys.executable, "-m", "defect_perception.cli", "evaluate-line", "--compare",
                           str(d / "run_a"), str(d / "run_b"), "--report", str(d / "cmp")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((d / "cmp" / "compare.json").read_text())["flipped"] == []


def test_bad_inputs_give_clear_errors_and_no_complete_report(setup, tmp_path, capsys):
    from defect_perception.cli import main

    base = ["evaluate-line", "--nodes", "camera,inspector,sorter", "--config", str(setup["config"])]
    nolabel = write_bag(tmp_path / "other", [SynthFrame(False)], image_topic="/cam/other_image",
                        label_topic=None)
    code = main(base + ["--bag", str(nolabel), "--report", str(tmp_path / "r1"),
                        "-p", "camera.topic=/line/camera/image_raw"])
    assert code == 1 and "no topic '/line/camera/image_raw'" in capsys.readouterr().err
    assert json.loads((tmp_path / "r1" / "report.json").read_text())["complete"] is False

    labels = tmp_path / "labels.csv"
    labels.write_text("stamp_ns,label\n123,reject\n456,pass\n")
    code = main(base + ["--bag", str(setup["bag"]), "--report", str(tmp_path / "r2"),
                        "--labels", str(labels)])
    assert code == 1 and "none of the 2 labels matches a frame" in capsys.readouterr().err
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["complete"] is False

    # a node that cannot start (invalid parameter value): the error names it
    proc = evaluate("--bag", str(setup["bag"]), "--config", str(setup["config"]), "--report",
                    str(tmp_path / "r3"), "-p", "camera.encoding=bogus")
    r3 = json.loads((tmp_path / "r3" / "report.json").read_text())
    assert proc.returncode == 1 and r3["complete"] is False
    assert "node camera" in r3["error"] and "encoding" in r3["error"], r3["error"]
