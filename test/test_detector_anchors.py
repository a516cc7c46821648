"""K-means++ anchors with the 1 - IoU distance recover planted box-size clusters."""

import numpy as np
import pytest

from defect_perception.training.detector.anchors import kmeanspp_anchors, mean_best_iou, wh_iou


def test_recovers_planted_clusters():
    rng = np.random.default_rng(3)
    centers = np.array([[8, 8], [30, 12], [12, 30], [60, 60], [120, 40], [200, 200]], float)
    wh = np.concatenate([c * rng.normal(1.0, 0.04, (200, 2)) for c in centers])
    anchors = kmeanspp_anchors(wh, k=6, seed=0)
    # every planted size has an anchor that overlaps it almost perfectly, and vice versa
    assert wh_iou(centers, anchors).max(1).min() > 0.9
    assert wh_iou(anchors, centers).max(1).min() > 0.9
    assert np.all(np.diff(anchors.prod(1)) > 0)  # sorted by area
    assert mean_best_iou(wh, anchors) > 0.85


def test_too_few_boxes_is_an_error():
    with pytest.raises(ValueError, match="at least k=9"):
        kmeanspp_anchors(np.ones((3, 2)), k=9)
