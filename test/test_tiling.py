"""Tiling: grid coverage, and tiled classifier/detector results merged into frame results."""
from __future__ import annotations

import numpy as np
import pytest

from defect_perception import load_model
from defect_perception.core.result import validate_result
from defect_perception.core.tiling import tile_grid
from defect_perception.inference.testing import make_classifier, make_detector


@pytest.mark.parametrize("h, w, tile, overlap", [(640, 640, 128, 32), (100, 250, 64, 0), (50, 40, 64, 16)])
def test_grid_covers_frame_with_full_tiles(h, w, tile, overlap):
    grid = tile_grid(h, w, tile, overlap)
    covered = np.zeros((h, w), bool)
    for x, y, tw, th in grid:
        assert tw == min(tile, w) and th == min(tile, h)
        assert 0 <= x and x + tw <= w and 0 <= y and y + th <= h
        covered[y:y + th, x:x + tw] = True
    assert covered.all()


def test_grid_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 32, 32)


def test_tiled_classifier_finds_small_defect_and_locates_it(tmp_path):
    m = load_model(make_classifier(tmp_path / "c", tiling={"tile": 32, "overlap": 0}))
    frame = np.zeros((128, 128), np.uint8)
    frame[64:96, 32:64] = 255  # one bright tile = one "defect"
    r, extras = m.run(frame)
    assert r["verdict"] == "reject" and extras["tiles"] == 16 and r["tiles"] == 16
    validate_result(r)
    assert [d["box"] for d in r["detections"]] == [[32.0, 64.0, 64.0, 96.0]]
    m.set_tiling(enabled=False)  # the whole frame shrunk to 32x32: the defect is diluted
    assert m(frame)["verdict"] == "pass"


def test_tiled_detector_shifts_boxes_and_merges_overlaps(tmp_path):
    # one box per tile at (8, 8, 24, 24) model px; tiles of 64 with overlap 32 on a 128x64 frame
    d = make_detector(tmp_path / "d", size=(64, 64), classes=("open",), boxes=((8, 8, 24, 24),),
                      score_weights=((10.0,),), score_bias=((-5.0,),), tiling={"tile": 64, "overlap": 32})
    m = load_model(d)
    r, extras = m.run(np.full((64, 128), 255, np.uint8), roi=[0, 0, 128, 64])
    assert extras["tiles"] == 3
    assert sorted(det["box"][0] for det in r["detections"]) == [8.0, 40.0, 72.0]
    # ROI offset: boxes stay in full-frame pixels
    r2 = m(np.full((100, 200), 255, np.uint8), roi=[50, 20, 64, 64])
    assert [det["box"] for det in r2["detections"]] == [[58.0, 28.0, 74.0, 44.0]]


def test_duplicates_in_tile_overlap_are_removed_by_nms_across_tiles(tmp_path):
    # each tile reports boxes at model x 8 and x 40; tiles at x 0 and 32 both see frame x 40..56
    d = make_detector(tmp_path / "d2", size=(64, 64), classes=("open",),
                      boxes=((8, 8, 24, 24), (40, 8, 56, 24)),
                      score_weights=((10.0,), (10.0,)), score_bias=((-5.0,), (-5.0,)),
                      tiling={"tile": 64, "overlap": 32})
    r, extras = load_model(d).run(np.full((64, 96), 255, np.uint8))
    assert extras["tiles"] == 2
    assert sorted(det["box"][0] for det in r["detections"]) == [8.0, 40.0, 72.0]


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_tile_merge_equals_per_tile_decisions(seed):
    from defect_perception.core.postprocess.classification import decide, merge_tiles, softmax
    from defect_perception.core.tiling import merge_classification

    rng = np.random.default_rng(seed)
    classes = ["normal", "open", "mousebite", "short", "spur"]
    card = {"classes": classes, "pass_classes": ["normal"],
            "category_tree": {"open": "missing", "mousebite": "missing", "short": "extra", "spur": "extra"},
            "thresholds": {"reject": 0.7, "review_band": [0.4, 0.7], "fine_min": 0.3,
                           "per_class": {"spur": 0.25}}}
    grid = tile_grid(256, 256, 64, 16)
    logits = (rng.standard_normal((len(grid), len(classes))) * 2 + [2, 0, 0, 0, 0]).astype(np.float32)
    fast = merge_tiles({"logits": logits}, card, grid)
    slow = merge_classification([decide(softmax(row.astype(np.float64)), card) for row in logits], grid)
    for k in ("verdict", "label", "score", "hierarchy", "detections", "reason"):
        assert fast[k] == slow[k], k
