"""Teacher-student anomaly training on tiny generated PCB-like images, through the real CLI:
good parts only in, a model that separates painted defects out; ONNX export parity."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_anomaly_helpers import pcb_image  # noqa: E402

from defect_perception import load_model  # noqa: E402
from defect_perception.cli import main as cli  # noqa: E402
from defect_perception.core.model_card import load_card  # noqa: E402
from defect_perception.core.result import validate_result  # noqa: E402
from defect_perception.training.anomaly.config import ConfigError, load_config  # noqa: E402
from defect_perception.training.anomaly.data import preprocess  # noqa: E402
from defect_perception.training.anomaly.export import PARITY_RTOL, parity  # noqa: E402
from defect_perception.training.anomaly.metrics import auroc  # noqa: E402
from defect_perception.training.anomaly.train import load_checkpoint  # noqa: E402

SIZE = 64
TINY = {"size": SIZE, "student_width": 8, "steps": 100, "stage1_steps": 40, "batch": 8, "threads": 1,
        "context_grid": 4, "topk_fraction": 0.01, "target_frr": 0.05, "review_frr": 0.1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("anom")
    rng = np.random.default_rng(0)
    good = root / "good"
    good.mkdir()
    for i in range(64):
        cv2.imwrite(str(good / f"g{i:03d}.png"), pcb_image(rng, SIZE)[0])
    cfg = root / "tiny.yaml"
    cfg.write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))
    rc = cli(["train-anomaly", "--images", str(good), "--config", str(cfg),
              "--model-dir", str(root / "model"),
              "--work-dir", str(root / "run"), "--no-progress"])
    assert rc == 0
    test_rng = np.random.default_rng(123)
    goods = [pcb_image(test_rng, SIZE)[0] for _ in range(20)]
    defects = [pcb_image(test_rng, SIZE, defect=True) for _ in range(20)]
    return root, goods, defects


def test_good_and_painted_defects_are_separated_and_map_peaks_at_defect(trained):
    root, goods, defects = trained
    model = load_model(root / "model", backend="onnxruntime", source="anomaly")
    good_scores = [model(g)["anomaly_score"] for g in goods]
    bad = [model.run(img) for img, _ in defects]
    bad_scores = [r["anomaly_score"] for r, _ in bad]
    assert auroc(np.r_[good_scores, bad_scores], np.r_[np.zeros(20), np.ones(20)]) >= 0.9
    hits = 0
    for (r, extras), (_, (cx, cy)) in zip(bad, defects, strict=False):
        validate_result(r)
        y, x = np.unravel_index(np.argmax(extras["map"]), extras["map"].shape)
        hits += abs(x - cx) <= 8 and abs(y - cy) <= 8
    assert hits >= 16, f"map peak at the defect in only {hits}/20 images"
    model.close()


def test_calibration_meets_target_and_card_is_complete(trained):
    root, goods, _ = trained
    card = load_card(root / "model")
    cal = card["calibration"]
    assert cal["measured_frr"] <= cal["target_frr"] == TINY["target_frr"]
    lo, hi = card["thresholds"]["review_band"]
    assert lo <= hi == card["thresholds"]["image"]
    assert [o["name"] for o in card["outputs"]] == ["map", "score"]
    assert card["provenance"]["training_config"]["steps"] == TINY["steps"]
    info = json.loads((root / "run" / "train_info.json").read_text())
    assert info["threshold"] == card["thresholds"]["image"]
    # fresh good parts: false rejects stay near the 5 % target (20 images: at most 3)
    model = load_model(root / "model", backend="onnxruntime")
    assert sum(model(g)["verdict"] == "reject" for g in goods) <= 3
    model.close()


def test_onnx_matches_torch_within_tolerance_at_batch_2(trained):
    root, goods, defects = trained
    net, _ = load_checkpoint(root / "run" / "anomaly.pt")
    x = np.stack([preprocess(goods[0], SIZE), preprocess(defects[0][0], SIZE)])
    par = parity(net, root / "model" / "model.onnx", x)
    assert par["map_max_rel"] <= PARITY_RTOL and par["score_max_rel"] <= PARITY_RTOL
    assert par["images"] == 2


def test_config_rejects_unknown_keys_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 10\n")
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="multiple of 16"):
        load_config(None, {"size": 100})


def test_checkpoint_is_rescored_without_retraining(trained, tmp_path):
    root, goods, _ = trained
    rc = cli(["train-anomaly", "--images", str(root / "good"),
              "--from-checkpoint", str(root / "run" / "anomaly.pt"),
              "--border", "4", "--target-frr", "0.2", "--model-dir", str(tmp_path / "m2"),
              "--work-dir", str(tmp_path / "run2"), "--no-progress"])
    assert rc == 0
    old, new = load_card(root / "model"), load_card(tmp_path / "m2")
    assert new["provenance"]["training_config"]["border"] == 4
    assert new["calibration"]["target_frr"] == 0.2 and new["calibration"]["measured_frr"] <= 0.2
    assert new["thresholds"]["image"] < old["thresholds"]["image"]      # a looser FRR budget
    model = load_model(tmp_path / "m2", backend="onnxruntime")
    amap = model.run(goods[0])[1]["map"]
    assert np.all(amap[:3] == 0) and np.all(amap[:, -3:] == 0)           # border band ignored
    model.close()
    with pytest.raises(ValueError, match="change the weights"):
        load_checkpoint(root / "run" / "anomaly.pt", {"steps": 5})


def test_crops_keep_real_image_edges_in_the_loss():
    from defect_perception.training.anomaly.config import AnomalyConfig
    from defect_perception.training.anomaly.train import _crop_batch

    cfg = AnomalyConfig(size=64, crop=32)
    x = torch.zeros(2, 1, 64, 64)
    t = [torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 8, 8)]
    seen_edge = False
    for seed in range(20):
        xc, tc, keep = _crop_batch(cfg, [4, 8], x, t, np.random.default_rng(seed))
        assert xc.shape[-1] == 32 and tc[0].shape[-1] == 8 and tc[1].shape[-1] == 4
        ys = keep[0][2]
        seen_edge |= ys.start == 0 or ys.stop == 8
        assert (ys.stop - ys.start) in (4, 6)          # an interior crop edge drops 8 px = 2 cells
    assert seen_edge
