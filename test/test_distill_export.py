"""Export parity (ONNX Runtime vs torch) for the real student architectures, and the
shipped DeepPCB student through the runtime."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_perception.training.classification import models
from defect_perception.training.classification.export import PARITY_TOL, export_onnx, output_names, parity

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "deeppcb-student"


def test_simkd_student_exports_as_one_graph(tmp_path):
    """EfficientNet-Lite0 trunk + projector + reused Lite0 teacher classifier, 32 px."""
    torch.manual_seed(0)
    teacher = models.build("tf_efficientnet_lite0", 7)
    student = models.SimKDStudent(models.build("tf_efficientnet_lite0", 7), teacher, hidden=16)
    assert torch.equal(student.head.classifier.weight, teacher.classifier.weight)
    assert not any(p.requires_grad for p in student.head.parameters())      # frozen reused head
    path = export_onnx(student, tmp_path / "m.onnx", 32)
    assert parity(student, path, 32, n=2) <= PARITY_TOL


def test_hierarchical_export_has_level_outputs(tmp_path):
    tree = {"open": "missing_copper", "short": "extra_copper", "missing_copper": "defect",
            "extra_copper": "defect"}
    levels = models.tree_levels(["normal", "open", "short"], tree)
    model = models.HierarchicalModel(models.build("tiny_cnn", 3), levels)
    assert output_names(model) == ["logits", "logits_level1", "logits_level0"]
    path = export_onnx(model, tmp_path / "h.onnx", 16)
    assert parity(model, path, 16) <= PARITY_TOL


@pytest.mark.skipif(not (SHIPPED / "model.json").is_file(), reason="no shipped student yet (bench --ship)")
def test_shipped_student_runs_on_a_deeppcb_frame(deeppcb):
    import cv2

    from defect_perception import load_model
    from defect_perception.core.model_card import load_card
    from defect_perception.training.deeppcb import read_split

    card = load_card(SHIPPED)
    assert card["task"] == "classification" and card["pass_classes"] == ["normal"]
    assert card["metrics"]["split"].startswith("DeepPCB test")
    assert "research" in json.dumps(card["provenance"])
    assert card["tiling"]["tile"] > card["tiling"]["overlap"] >= 0
    assert (SHIPPED / "model.onnx").stat().st_size < 30e6
    model = load_model(SHIPPED, backend="onnxruntime", threads=1)
    sample = read_split(deeppcb, "test")[0]
    result = model(cv2.imread(str(sample.test_path), cv2.IMREAD_GRAYSCALE))
    assert result["verdict"] in ("pass", "review", "reject") and result["tiles"] == len(
        __import__("defect_perception.core.tiling", fromlist=["x"]).tile_grid(
            640, 640, card["tiling"]["tile"], card["tiling"]["overlap"]))
    assert np.isfinite(result["score"])
