"""ONNX export: ONNX Runtime matches torch, outputs follow the contract, the card validates."""

import json

import numpy as np
import pytest
import torch

from defect_perception.core.model_card import load_card
from defect_perception.training.detector.export import export_onnx, make_card, ort_session
from defect_perception.training.detector.model import DetectExport, DetectorConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_onnx_parity_and_card(tmp_path):
    torch.manual_seed(0)
    model = build(DetectorConfig(width=0.125, depth=(1, 1, 1, 1), img_size=64)).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    sess = ort_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores"]
    x = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)  # batch is dynamic
    boxes, scores = sess.run(None, {"input": x})
    with torch.inference_mode():
        tb, ts = DetectExport(model)(torch.from_numpy(x))
    k = 3 * (8 * 8 + 4 * 4 + 2 * 2)
    assert boxes.shape == (3, k, 4) and scores.shape == (3, k, 6)
    assert np.abs(boxes - tb.numpy()).max() < 1e-3
    assert np.abs(scores - ts.numpy()).max() < 1e-5
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (scores >= 0).all() and (scores <= 1).all()
    card = make_card(model, "tiny", 0.4, 0.5, {"split": "none"}, {"note": "test"})
    (tmp_path / "model.json").write_text(json.dumps(card))
    loaded = load_card(tmp_path)
    assert loaded["task"] == "detection" and loaded["thresholds"]["reject"] == 0.4
    assert loaded["input"]["size"] == [64, 64] and loaded["input"]["color"] == "gray"
