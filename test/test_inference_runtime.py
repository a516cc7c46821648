"""load_model / Model on ONNX Runtime: preprocessing, parity, batch path, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from defect_perception import load_model
from defect_perception.core.model_card import ModelCardError
from defect_perception.core.preprocess import InputError, Preprocessor
from defect_perception.core.result import validate_result
from defect_perception.inference import BackendUnavailable, ModelLoadError
from defect_perception.inference.testing import make_classifier


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory):
    return make_classifier(tmp_path_factory.mktemp("m") / "cls")


def test_preprocess_matches_the_card_formula():
    card_in = {"size": [4, 6], "color": "rgb", "scale": 255.0, "mean": [0.1, 0.2, 0.3],
               "std": [0.5, 0.25, 0.2], "resize": "stretch"}
    img = np.random.default_rng(1).integers(0, 256, (8, 12, 3), np.uint8)
    x, tf = Preprocessor(card_in)(img)
    ref = cv2.resize(img, (6, 4), interpolation=cv2.INTER_LINEAR)[..., ::-1].astype(np.float32) / 255.0
    ref = ((ref - [0.1, 0.2, 0.3]) / [0.5, 0.25, 0.2]).transpose(2, 0, 1)[None]
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x, ref, atol=1e-5)
    assert (tf.scale_x, tf.scale_y) == (0.5, 0.5)


def test_letterbox_keeps_aspect_and_maps_back():
    pre = Preprocessor({"size": [32, 32], "color": "gray", "resize": "letterbox", "pad_value": 0})
    x, tf = pre(np.full((20, 40), 255, np.uint8))
    assert x.shape == (1, 1, 32, 32)
    assert x[0, 0, 8:24].min() == pytest.approx(1.0) and x[0, 0, :8].max() == 0.0
    np.testing.assert_allclose(tf.boxes_to_source(np.array([[0, 8, 32, 24]])), [[0, 0, 40, 20]])
    assert tf.map_to_source(np.ones((32, 32), np.float32)).shape == (20, 40)


def test_model_result_is_valid_contract_json(cls_dir, deeppcb):
    model = load_model(cls_dir, backend="onnxruntime")
    assert model.backend_name == "onnxruntime" and "onnxruntime requested" in model.backend_reason
    assert len(model.sha256) == 64 and model.card["name"] == "tiny-classifier"
    img = cv2.imread(str(next(deeppcb.glob("group*/*/*_test.jpg"))), cv2.IMREAD_GRAYSCALE)
    r = model(img, stamp_ns=42, frame_id="cam")
    validate_result(json.loads(json.dumps(r)))
    assert (r["stamp_ns"], r["frame_id"], r["model"]["name"]) == (42, "cam", "tiny-classifier")
    assert set(r["latency_ms"]) == {"preprocess", "infer", "postprocess"}


def test_bgr_and_mono_give_same_answer_for_gray_model(cls_dir):
    model = load_model(cls_dir)
    mono = np.full((50, 70), 140, np.uint8)
    a, b = model(mono), model(np.dstack([mono] * 3))
    assert a["verdict"] == b["verdict"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_batch_path_equals_single_calls_and_fixed_batch_is_chunked(tmp_path):
    imgs = [np.full((40, 40), v, np.uint8) for v in (0, 90, 180, 255)]
    for fixed in (False, True):
        model = load_model(make_classifier(tmp_path / f"b{fixed}", fixed_batch=fixed))
        assert model.backend.max_batch == (1 if fixed else 0)
        batch = model.run_batch(imgs)
        for img, r in zip(imgs, batch, strict=True):
            assert r["score"] == pytest.approx(model(img)["score"], abs=1e-6)


def test_threshold_overrides_and_restore(cls_dir):
    model = load_model(cls_dir)
    frame = np.full((32, 32), 128, np.uint8)
    assert model(frame)["verdict"] == "reject"
    assert model.set_thresholds(reject=0.95)["reject"] == 0.95
    assert model(frame)["verdict"] == "pass"
    model.set_thresholds(reject=None)
    assert model.thresholds == {"reject": 0.5} and model(frame)["verdict"] == "reject"


def test_errors_name_the_file_and_field(tmp_path, cls_dir):
    with pytest.raises(ModelCardError, match="model card not found"):
        load_model(tmp_path / "missing")
    d = make_classifier(tmp_path / "noonnx")
    (d / "model.onnx").unlink()
    with pytest.raises(ModelCardError, match=r"model.onnx: ONNX file named by .* is missing"):
        load_model(d)
    d = make_classifier(tmp_path / "corrupt")
    (d / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelLoadError, match="corrupt/model.onnx: ONNX Runtime cannot load"):
        load_model(d)
    d = make_classifier(tmp_path / "shape", size=(32, 32), onnx_size=(64, 64))
    with pytest.raises(ModelLoadError, match=r"does not match the card .*height differs"):
        load_model(d)
    d = make_classifier(tmp_path / "color", color="gray")
    card = json.loads((d / "model.json").read_text())
    card["input"]["color"] = "bgr"
    (d / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="channels differs"):
        load_model(d)
    with pytest.raises(BackendUnavailable, match="did you mean 'tensorrt'"):
        load_model(cls_dir, backend="tensort")
    with pytest.raises(InputError, match="outside the 32x32 frame"):
        load_model(cls_dir)(np.zeros((32, 32), np.uint8), roi=[20, 20, 20, 20])
    with pytest.raises(InputError, match="not HxW"):
        load_model(cls_dir)(np.zeros((32, 32, 4), np.uint8))


def test_explicit_tensorrt_request_fails_loudly_when_absent(cls_dir):
    from defect_perception.inference import tensorrt_backend

    ok, why = tensorrt_backend.status()
    if ok:
        pytest.skip("TensorRT is available here; the absent-TensorRT path cannot be exercised")
    with pytest.raises(BackendUnavailable, match="backend 'tensorrt' requested but"):
        load_model(cls_dir, backend="tensorrt")
    model = load_model(cls_dir, backend="auto")
    assert model.backend_name == "onnxruntime" and why in model.backend_reason


def test_runtime_imports_neither_torch_nor_rclpy(cls_dir):
    code = ("import sys, numpy as np\n"
            "from defect_perception import load_model\n"
            f"m = load_model({str(cls_dir)!r}); m(np.zeros((8, 8), np.uint8))\n"
            "bad = [k for k in ('torch', 'rclpy', 'onnx') if k in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_benchmark_smoke(cls_dir, deeppcb, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "bench/inspector.py", "--model", str(cls_dir), "--frames", "5", "--no-write",
           "--json", str(out)]
    from pathlib import Path

    res = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["frames"] == 5
    assert set(r["stages"]) == {"receive", "preprocess", "infer", "postprocess", "publish"}
    assert "| infer |" in res.stdout


def test_preprocess_results_are_not_overwritten_by_the_next_call():
    pre = Preprocessor({"size": [8, 8], "color": "gray"})
    a, _ = pre(np.zeros((8, 8), np.uint8))
    b, _ = pre(np.full((8, 8), 255, np.uint8))
    assert a.max() == 0.0 and b.min() == 1.0
    t1, _ = pre.tiles(np.zeros((16, 16), np.uint8), [(0, 0, 8, 8), (8, 8, 8, 8)])
    pre.tiles(np.full((16, 16), 255, np.uint8), [(0, 0, 8, 8), (8, 8, 8, 8)])
    assert t1.max() == 0.0


def test_template_models_get_frame_and_aligned_template(tmp_path):
    from defect_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
    from defect_perception.inference.testing import make_detector

    d = make_detector(tmp_path / "tpl", size=(64, 64), template=True)
    frame, tpl = np.full((64, 64), 200, np.uint8), np.full((64, 64), 40, np.uint8)
    with pytest.raises(InputError, match="needs the aligned defect-free template"):
        load_model(d)(frame)
    model = load_model(d, template=tpl)
    r = model(np.dstack([frame] * 3))  # a bgr frame is converted to gray like the template
    x = np.stack([frame, tpl])[None].astype(np.float32) / 255.0
    ref = OnnxRuntimeBackend(d / "model.onnx").run(x)
    assert r["score"] == pytest.approx(float(ref["scores"][0].max()), abs=1e-6)
    assert model(frame, template=frame)["score"] != pytest.approx(r["score"])  # the template matters
    with pytest.raises(InputError, match="must be aligned and the same size"):
        model(np.zeros((64, 80), np.uint8))
    d2 = make_detector(tmp_path / "tpl2", size=(64, 64), template=True, tiling={"tile": 64, "overlap": 0})
    tiled = load_model(d2, template=np.zeros((64, 128), np.uint8))
    r2, extras = tiled.run(np.zeros((64, 128), np.uint8))
    assert extras["tiles"] == 2
    assert sorted(det["box"][0] for det in r2["detections"]) == [8.0, 30.0, 72.0, 94.0]
    bad = load_model(d)
    with pytest.raises(InputError, match="not a readable image"):
        bad.set_template(tmp_path / "missing.png")


def test_warm_up_runs_the_real_path_and_leaves_results_unchanged(tmp_path):
    """Warm-up at load runs the full tiled path on a blank frame of the line's size (or one
    network input without a size, or for a template model without its template)."""
    from defect_perception.inference.testing import make_detector

    m = load_model(make_classifier(tmp_path / "c", tiling={"tile": 32, "overlap": 0}))
    frame = np.full((96, 64), 200, np.uint8)
    before = m(frame)
    assert m.warm_up((64, 96)) > 0 and m.warm_up() > 0
    after = m(frame)
    assert after["verdict"] == before["verdict"] and after["score"] == before["score"]
    assert after["tiles"] == 6
    tpl = load_model(make_detector(tmp_path / "t", template=True))
    assert tpl.warm_up((64, 64)) > 0  # no template set yet: falls back to one network input
    with pytest.raises(InputError, match="template"):
        tpl(np.zeros((64, 64), np.uint8))
