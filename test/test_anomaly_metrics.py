"""Threshold calibration and anomaly metrics (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from defect_perception.training.anomaly.data import box_mask
from defect_perception.training.anomaly.metrics import (
    aupro,
    auroc,
    calibrate_threshold,
    mean_iou,
    rates_at,
    roc_curve,
)


@pytest.mark.parametrize("target", [0.01, 0.05])
def test_calibration_hits_target_false_reject_rate_on_fresh_good_images(target):
    rng = np.random.default_rng(1)
    calib = rng.gamma(4.0, 1.0, 3000)                 # good-image scores (skewed, like the maps)
    thr = calibrate_threshold(calib, target)
    assert (calib >= thr).mean() <= target             # never above target where it was calibrated
    fresh = rng.gamma(4.0, 1.0, 50_000)                # new good parts from the same process
    frr = (fresh >= thr).mean()
    # binomial spread of a quantile estimated from 3000 samples: well within +-40 % of the target
    assert abs(frr - target) < 0.4 * target, frr


def test_calibration_small_sets_are_conservative():
    assert calibrate_threshold(np.array([1.0, 2.0, 3.0]), 0.01) > 3.0   # no good image rejected
    s = np.arange(200, dtype=float)
    thr = calibrate_threshold(s, 0.01)                                   # 2 of 200 may be rejected
    assert (s >= thr).sum() == 2


def test_auroc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 10, 300).astype(float)    # many ties
    labels = rng.random(300) < 0.4
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    pairwise = wins / (pos.size * neg.size)
    assert auroc(scores, labels) == pytest.approx(pairwise, abs=1e-9)
    fpr, tpr, _ = roc_curve(scores, labels)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    with pytest.raises(ValueError, match="both"):
        auroc(scores, np.zeros(300))


def test_rates_aupro_and_miou_on_known_maps():
    masks = np.stack([box_mask(np.array([[10, 10, 20, 20]]), (40, 40), 40), np.zeros((40, 40), np.uint8)])
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=0.02)
    assert mean_iou(perfect, masks, 0.5) == pytest.approx(1.0)
    inverted = 1.0 - perfect
    assert aupro(inverted, masks) < 0.05
    half = perfect.copy()
    half[0, 10:20, 15:20] = 0                            # half of the region missed
    assert mean_iou(half, masks, 0.5) == pytest.approx(0.5)
    r = rates_at(np.array([0.1, 0.9, 0.2, 0.8]), np.array([0, 0, 1, 1]), 0.5)
    assert r == {"false_reject_rate": 0.5, "escape_rate": 0.5}
