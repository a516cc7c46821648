"""Evaluator against hand-computed cases: mAP@0.5, DeepPCB criterion, false alarms, NMS."""

import numpy as np
import pytest

from defect_perception.training.detector.evaluate import (
    Detections,
    ap_101,
    box_iou,
    deeppcb_criterion,
    false_alarm_rate,
    map50,
    nms,
    postprocess,
)

NAMES = ["a", "b"]


def dets(*imgs):
    d = Detections()
    for rows in imgs:
        r = np.asarray(rows, np.float64).reshape(-1, 6)
        d.boxes.append(r[:, :4])
        d.scores.append(r[:, 4])
        d.classes.append(r[:, 5].astype(int))
    return d


def test_iou_by_hand():
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)


def test_map_perfect_and_half():
    gb = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)]
    gc = [np.array([0, 1])]
    perfect = dets([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1]])
    assert map50(perfect, gb, gc, NAMES)["map50"] == pytest.approx(1.0)
    # class a: one false positive ranked above the true positive -> P = [0, 1/2], R = [0, 1]
    # 101-point AP: interpolated precision is 1/2 at every recall level -> 0.5
    d = dets([[50, 50, 60, 60, 0.95, 0], [0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1]])
    res = map50(d, gb, gc, NAMES)
    assert res["ap50"]["a"] == pytest.approx(0.5) and res["ap50"]["b"] == pytest.approx(1.0)
    assert res["map50"] == pytest.approx(0.75)


def test_ap101_recall_half():
    # precision 1 up to recall 0.5, never more recall: 51 of the 101 points have precision 1
    assert ap_101(np.array([0.5]), np.array([1.0])) == pytest.approx(51 / 101)


def test_deeppcb_criterion_iou_033_same_class():
    gb = [np.array([[0, 0, 10, 10], [100, 100, 110, 110]], float)]
    gc = [np.array([0, 1])]
    d = dets(
        [
            [4, 0, 14, 10, 0.9, 0],  # IoU 6/14 = 0.43 > 0.33, class a: correct
            [100, 100, 110, 110, 0.8, 0],  # right place, wrong class: wrong
            [7, 0, 17, 10, 0.7, 0],  # IoU 3/17 = 0.18: wrong
            [0, 0, 10, 10, 0.1, 0],
        ]
    )  # below the threshold: ignored
    r = deeppcb_criterion(d, gb, gc, NAMES, score_thr=0.5)
    assert r["all"]["precision"] == pytest.approx(1 / 3)
    assert r["all"]["recall"] == pytest.approx(1 / 2)
    assert r["all"]["f_score"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert r["a"]["recall"] == 1.0 and r["b"]["recall"] == 0.0 and r["b"]["det"] == 0


def test_false_alarm_rate():
    d = dets([[0, 0, 5, 5, 0.6, 0]], [], [[0, 0, 5, 5, 0.2, 1]], [])
    assert false_alarm_rate(d, 0.5) == pytest.approx(0.25)
    assert false_alarm_rate(d, 0.1) == pytest.approx(0.5)


def test_nms_and_postprocess():
    b = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    assert nms(b, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    scores = np.array([[0.9, 0.1], [0.05, 0.8], [0.2, 0.1]])  # anchor 1 is class b: not suppressed by a
    bb, ss, cc = postprocess(b, scores, score_thr=0.3, nms_iou=0.5)
    assert cc.tolist() == [0, 1] and ss.tolist() == pytest.approx([0.9, 0.8])
