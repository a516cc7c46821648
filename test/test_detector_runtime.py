"""The runtime (`load_model`, no torch at run time) accepts the detector's ONNX + card and
returns contract results on a real DeepPCB board; the shipped model loads and runs."""

import json
from pathlib import Path

import cv2
import pytest
import torch

from defect_perception import load_model
from defect_perception.training.deeppcb import DEFECT_TYPES, read_split
from defect_perception.training.detector.export import export_onnx, make_card
from defect_perception.training.detector.model import DetectorConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SHIPPED = Path(__file__).resolve().parents[1] / "models" / "deeppcb-detector"


def _board(deeppcb):
    s = read_split(deeppcb, "test")[0]
    return cv2.imread(str(s.test_path), cv2.IMREAD_GRAYSCALE)


def test_runtime_runs_exported_detector(tmp_path, deeppcb):
    torch.manual_seed(0)
    model = build(DetectorConfig(width=0.125, depth=(1, 1, 1, 1), img_size=64)).eval()
    export_onnx(model, tmp_path / "model.onnx")
    card = make_card(model, "tiny-detector", 0.01, 0.5, {"split": "none"}, {})
    (tmp_path / "model.json").write_text(json.dumps(card))
    rt = load_model(tmp_path, backend="onnxruntime")
    res = rt(_board(deeppcb))
    assert res["verdict"] in ("pass", "reject", "review")
    for d in res["detections"]:
        assert d["label"] in DEFECT_TYPES
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 640  # published-image pixels (640 px board)


@pytest.mark.skipif(not (SHIPPED / "model.json").is_file(), reason="no shipped detector in models/")
def test_shipped_detector_loads_and_runs(deeppcb):
    rt = load_model(SHIPPED, backend="onnxruntime")
    card = json.loads((SHIPPED / "model.json").read_text())
    assert card["task"] == "detection" and card["classes"] == DEFECT_TYPES
    assert "split" in card["metrics"] and (SHIPPED / "model.onnx").stat().st_size <= 8e6
    res = rt(_board(deeppcb))
    assert res["verdict"] in ("pass", "reject", "review")


@pytest.mark.skipif(not (SHIPPED / "template" / "model.json").is_file(), reason="no template model shipped")
def test_shipped_template_detector_needs_and_uses_the_template(deeppcb):
    s = read_split(deeppcb, "test")[0]
    board = cv2.imread(str(s.test_path), cv2.IMREAD_GRAYSCALE)
    rt = load_model(SHIPPED / "template", backend="onnxruntime")
    with pytest.raises(ValueError, match="template"):
        rt(board)  # no template given: a clear error (the node turns it into a fail-safe result)
    res = rt(board, template=cv2.imread(str(s.temp_path), cv2.IMREAD_GRAYSCALE))
    assert res["verdict"] in ("pass", "reject", "review") and res["detections"]
