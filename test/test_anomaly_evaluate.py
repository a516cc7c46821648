"""`defect-perception evaluate-anomaly` on a tiny generated DeepPCB-layout folder with a real
(generated) ONNX anomaly model whose map is known: defects are where the boxes are."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from test_anomaly_helpers import make_anomaly_onnx

from defect_perception.cli import main as cli
from defect_perception.core.model_card import load_card


@pytest.fixture()
def fake_deeppcb(tmp_path):
    root = tmp_path / "deeppcb"
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        name = f"0000{i}000"
        (root / "group0/00000").mkdir(parents=True, exist_ok=True)
        (root / "group0/00000_not").mkdir(parents=True, exist_ok=True)
        temp = np.zeros((96, 96), np.uint8)
        cv2.line(temp, (0, 20 + 8 * i), (96, 20 + 8 * i), 90, 3)      # dark trace: map stays 0
        test = temp.copy()
        x, y = (int(v) for v in rng.integers(10, 70, 2))
        test[y:y + 16, x:x + 16] = 255                                   # the "defect"
        cv2.imwrite(str(root / f"group0/00000/{name}_temp.jpg"), temp)
        cv2.imwrite(str(root / f"group0/00000/{name}_test.jpg"), test)
        (root / f"group0/00000_not/{name}.txt").write_text(f"{x} {y} {x + 16} {y + 16} 5\n")
        lines.append(f"group0/00000/{name}.jpg group0/00000_not/{name}.txt")
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    (root / "trainval.txt").write_text(lines[0] + "\n")
    return root


def test_evaluate_reports_metrics_plots_and_updates_card(tmp_path, fake_deeppcb, capsys):
    model = make_anomaly_onnx(tmp_path / "toy", size=48, threshold=0.5)
    out = tmp_path / "eval"
    rc = cli(["evaluate-anomaly", "--model", str(model), "--deeppcb", str(fake_deeppcb), "--out", str(out),
              "--update-card", "--no-progress", "--threads", "1"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["image_auroc"] == pytest.approx(1.0)
    assert m["false_reject_rate"] == 0.0 and m["escape_rate"] == 0.0
    assert m["pixel_auroc"] > 0.95 and m["aupro_30"] > 0.9 and m["miou_at_threshold"] > 0.5
    assert m["good_images"] == 6 and m["defective_images"] == 6 and "DeepPCB test" in m["split"]
    for png in ("roc.png", "score_hist.png", "heatmaps.png"):
        assert cv2.imread(str(out / png)) is not None, png
    card = load_card(model)
    assert card["metrics"]["image_auroc"] == pytest.approx(1.0)
    assert "image_auroc" in capsys.readouterr().out


def test_evaluate_names_a_missing_dataset(tmp_path, capsys):
    model = make_anomaly_onnx(tmp_path / "toy")
    rc = cli(["evaluate-anomaly", "--model", str(model), "--deeppcb", str(tmp_path / "nope"), "--no-latency"])
    assert rc == 2
    assert "nope/test.txt" in capsys.readouterr().out
