"""A tiny training run on generated boxes: the loss goes down; KD terms behave."""

import numpy as np
import pytest
import torch

from defect_perception.training.detector.anchors import kmeanspp_anchors
from defect_perception.training.detector.data import batches, mosaic, synthetic
from defect_perception.training.detector.loss import YoloLoss, soft_bce
from defect_perception.training.detector.model import DetectorConfig, build
from defect_perception.training.detector.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_mosaic_keeps_boxes_on_their_objects():
    ds = synthetic(4, 64, seed=1, num_classes=1)  # filled bright squares on dark noise
    img, boxes, cls = mosaic(ds, [0, 1, 2, 3], np.random.default_rng(0))
    assert img.shape == (64, 64) and len(boxes) == len(cls)
    for x1, y1, x2, y2 in boxes.astype(int):
        assert img[y1:y2, x1:x2].mean() > 200


def test_tiny_training_reduces_loss(tmp_path):
    torch.manual_seed(0)
    ds = synthetic(32, 64, seed=0)
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in ds.boxes])
    anchors = np.repeat(kmeanspp_anchors(wh, 3), 3, 0) * np.array([[0.7], [1], [1.4]] * 3)
    cfg = DetectorConfig(
        width=0.125, depth=(1, 1, 1, 1), img_size=64, num_classes=2, anchors=anchors.tolist()
    )
    model = build(cfg)
    tc = TrainConfig(
        epochs=5, batch_size=8, lr=1e-2, warmup_iters=1, mosaic_p=0.5, close_mosaic=0, ema=False, threads=1
    )
    _, hist = train(model, ds, tc, tmp_path / "tiny.pt", log=lambda s: None)
    losses = [h["loss"] for h in hist]
    assert losses[-1] < 0.85 * losses[0] and losses[-1] < losses[1], losses
    assert (tmp_path / "tiny.pt").is_file()


def test_kd_loss_terms():
    torch.manual_seed(0)
    z = torch.randn(100)
    assert abs(float(soft_bce(z, z, 2.0))) < 1e-6  # zero when student == teacher
    assert float(soft_bce(z + 1.0, z, 2.0)) > 0
    cfg = DetectorConfig(width=0.125, depth=(1, 1, 1, 1), img_size=64, num_classes=2)
    student, teacher = build(cfg), build(cfg)
    x, t = next(batches(synthetic(4, 64), 4, np.random.default_rng(0), 0.0))
    x, t = torch.from_numpy(x), torch.from_numpy(t)
    crit = YoloLoss(student, kd_margin=0.0)
    loss, parts = crit(student(x), t, teacher(x))
    assert {"kd_obj", "kd_cls", "kd_reg"} <= set(parts) and torch.isfinite(loss)
    loss.backward()
    # teacher-bounded regression: with the student as its own teacher and margin 0 nothing is active
    raw = student(x)
    _, same = crit(raw, t, [r.detach() for r in raw])
    assert same["kd_reg"] == 0.0 and abs(same["kd_obj"]) < 1e-6
