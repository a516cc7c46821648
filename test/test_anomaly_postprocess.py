"""Anomaly runtime postprocessing and load_model() on a real (generated) ONNX anomaly model."""
from __future__ import annotations

import numpy as np
import pytest
from test_anomaly_helpers import make_anomaly_onnx

from defect_perception import load_model
from defect_perception.core.postprocess import OutputError
from defect_perception.core.postprocess.anomaly import decide, postprocess, regions
from defect_perception.core.preprocess import Preprocessor
from defect_perception.core.result import validate_result


def test_verdicts_follow_threshold_and_review_band():
    th = {"image": 2.0, "review_band": [1.5, 2.0]}
    assert decide(2.0, th)[0] == "reject"
    assert decide(1.7, th) == ("review", "anomaly score in review band")
    assert decide(1.2, th)[0] == "pass"
    assert decide(1.7, {"image": 2.0})[0] == "pass"
    with pytest.raises(OutputError, match="thresholds.image"):
        decide(1.0, {})


def test_map_comes_back_at_published_resolution_with_regions_in_image_pixels():
    pre = Preprocessor({"size": [32, 32], "color": "gray", "mean": [0.5], "std": [0.5], "scale": 255.0})
    frame = np.zeros((64, 128), np.uint8)
    _, tf = pre(frame)
    amap = np.zeros((1, 1, 32, 32), np.float32)
    amap[0, 0, 8:12, 16:20] = 3.0                          # model pixels x 16..20, y 8..12
    out = postprocess({"map": amap, "score": np.array([3.0], np.float32)},
                      {"thresholds": {"image": 1.0}}, {"transform": tf, "image_size": (64, 128)})
    assert out["verdict"] == "reject" and out["label"] == "anomaly"
    assert out["map"].shape == (64, 128) and out["map"].dtype == np.float32
    (box,) = [d["box"] for d in out["detections"]]
    assert box == pytest.approx([64.0, 16.0, 80.0, 24.0], abs=0.5)   # x scaled by 4, y by 2
    y, x = np.unravel_index(np.argmax(out["map"]), out["map"].shape)
    assert 64 <= x < 80 and 16 <= y < 24
    assert out["score"] == pytest.approx(3.0) and out["anomaly_score"] == pytest.approx(3.0)


def test_bad_outputs_raise_naming_the_output():
    card = {"thresholds": {"image": 1.0}}
    with pytest.raises(OutputError, match="'map'"):
        postprocess({"map": np.full((1, 1, 4, 4), np.nan, np.float32), "score": np.zeros(1)}, card, {})
    with pytest.raises(OutputError, match="'score' is missing"):
        postprocess({"map": np.zeros((1, 1, 4, 4), np.float32)}, card, {})


def test_regions_are_sorted_by_peak():
    m = np.zeros((20, 20), np.float32)
    m[1:3, 1:3] = 2.0
    m[10:15, 10:15] = 5.0
    r = regions(m, 1.0)
    assert [p for _, p in r] == [5.0, 2.0]
    assert regions(m, 1.0, max_regions=1)[0][1] == 5.0


def test_load_model_runs_anomaly_model_end_to_end(tmp_path):
    model = load_model(make_anomaly_onnx(tmp_path / "toy", review_band=[0.3, 0.5]), backend="onnxruntime",
                       source="anomaly")
    blank = np.zeros((48, 60), np.uint8)
    blob = blank.copy()
    blob[20:30, 40:52] = 255
    for img, verdict in ((blank, "pass"), (blob, "reject"), (np.full((48, 60), 175, np.uint8), "review")):
        result, extras = model.run(img, stamp_ns=7, frame_id="cam")
        validate_result(result)
        assert result["verdict"] == verdict and result["source"] == "anomaly"
        assert extras["map"].shape == img.shape
    result, extras = model.run(blob)
    y, x = np.unravel_index(np.argmax(extras["map"]), extras["map"].shape)
    assert 20 <= y < 30 and 40 <= x < 52
    model.set_thresholds(image=1.5)      # live threshold: nothing reaches 1.5 (map <= 1)
    assert model(blob)["verdict"] == "pass"
    model.close()
