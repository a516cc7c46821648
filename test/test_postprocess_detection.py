"""Detection postprocessing: score filter, class-wise NMS, boxes back in image pixels."""
from __future__ import annotations

import numpy as np
import pytest

from defect_perception.core.postprocess import OutputError, postprocess
from defect_perception.core.postprocess.detection import nms
from defect_perception.core.preprocess import Preprocessor

CARD = {"task": "detection", "classes": ["open", "short"],
        "thresholds": {"score": 0.3, "nms_iou": 0.5, "reject": 0.6, "review_band": [0.3, 0.6]}}


def outputs(boxes, scores):
    return {"boxes": np.asarray(boxes, np.float32)[None], "scores": np.asarray(scores, np.float32)[None]}


def test_nms_suppresses_overlaps_within_a_class_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, np.zeros(4, int), 0.5).tolist() == [0, 3]


def test_boxes_map_back_through_letterbox():
    pre = Preprocessor({"size": [64, 64], "color": "gray", "resize": "letterbox"})
    _, tf = pre(np.zeros((320, 640), np.uint8))  # scale 0.1, 16 px padding top/bottom
    r = postprocess(outputs([[10, 20, 30, 40]], [[0.9, 0.1]]), CARD, {"transform": tf})
    assert r["detections"][0]["box"] == pytest.approx([100, 40, 300, 240])
    assert (r["verdict"], r["label"]) == ("reject", "open")


def test_verdicts_from_scores():
    none = postprocess(outputs([[0, 0, 5, 5]], [[0.1, 0.2]]), CARD, {})
    assert none["verdict"] == "pass" and none["detections"] == [] and none["label"] is None
    review = postprocess(outputs([[0, 0, 5, 5]], [[0.1, 0.45]]), CARD, {})
    assert review["verdict"] == "review" and review["label"] == "short"


def test_bad_outputs_are_named():
    with pytest.raises(OutputError, match="'scores' contains"):
        postprocess(outputs([[0, 0, 5, 5]], [[np.inf, 0.2]]), CARD, {})
    with pytest.raises(OutputError, match="3 classes"):
        postprocess(outputs([[0, 0, 5, 5]], [[0.1, 0.2, 0.3]]), CARD, {})
