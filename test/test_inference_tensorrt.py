"""TensorRT path: engine cache keys, the ORT cross-check, the build-engine command, the
cache decisions after a failed check, engine input shapes for 2-channel (template) models.
The real engine build needs TensorRT + an NVIDIA GPU and is skipped here with the reason."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from defect_perception.inference import engine_cache, tensorrt_backend, verify
from defect_perception.inference.errors import ModelLoadError
from defect_perception.inference.input_shape import input_chw
from defect_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
from defect_perception.inference.testing import make_classifier, make_detector

TRT_OK, TRT_WHY = tensorrt_backend.status()
KEY = engine_cache.EngineKey("ab" * 32, "Orin (nvgpu)", "87", "10.3.0", "fp16")


def test_status_explains_why_tensorrt_is_unusable():
    assert isinstance(TRT_WHY, str) and TRT_WHY
    if not TRT_OK:
        assert any(w in TRT_WHY for w in ("tensorrt", "polygraphy", "GPU", "cuda"))


def test_cache_hit_only_for_the_same_key_and_bytes(tmp_path):
    path = engine_cache.store(KEY, b"engine-bytes", tmp_path, {"verify": {"ok": True}})
    assert path.name.startswith("abababababababab-orin-nvgpu-sm87-trt10.3.0-fp16")
    assert engine_cache.lookup(KEY, tmp_path)[0] == path
    for field, value in [("trt_version", "10.4.0"), ("gpu", "RTX 4090"), ("precision", "int8")]:
        other = engine_cache.EngineKey(**{**KEY.__dict__, field: value})
        found, reason = engine_cache.lookup(other, tmp_path)
        assert found is None and "no cached engine" in reason
        # the same engine file presented for another target (copied in) is refused with the reason
        foreign = engine_cache.paths(other, tmp_path)[0]
        foreign.write_bytes(path.read_bytes())
        foreign.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
        found, reason = engine_cache.lookup(other, tmp_path)
        assert found is None and f"built for {field}=" in reason


def test_stale_or_partial_engine_is_rebuilt(tmp_path):
    path = engine_cache.store(KEY, b"engine-bytes", tmp_path)
    path.write_bytes(b"engine-bytes-modified")
    assert "sha256 mismatch" in engine_cache.lookup(KEY, tmp_path)[1]
    path.with_suffix(".json").unlink()
    assert "no metadata" in engine_cache.lookup(KEY, tmp_path)[1]
    with pytest.raises(ValueError, match="precision"):
        engine_cache.EngineKey("x", "g", "1", "10", "int4")


def test_cross_check_reports_error_and_argmax(tmp_path):
    d = make_classifier(tmp_path / "m")
    ref = OnnxRuntimeBackend(d / "model.onnx", threads=1)
    other = OnnxRuntimeBackend(d / "model.onnx", threads=2)
    xs = [np.random.default_rng(i).random((2, 1, 32, 32), dtype=np.float32) for i in range(3)]
    rep = verify.compare(ref.run, other.run, xs)
    assert rep["ok"] and rep["outputs"]["logits"]["max_abs_err"] < 1e-5
    assert rep["outputs"]["logits"]["argmax_agree"] == 1.0

    def flipped(x):
        return {"logits": -ref.run(x)["logits"]}
    bad = verify.compare(ref.run, flipped, xs)
    assert not bad["ok"] and bad["outputs"]["logits"]["argmax_agree"] < 1.0
    assert "MISMATCH" in verify.summary(bad) and "max_abs_err" in verify.summary(bad)


def test_build_engine_command_without_tensorrt(tmp_path):
    if TRT_OK:
        pytest.skip("TensorRT present: the real build is covered by test_real_engine_build")
    d = make_classifier(tmp_path / "m")
    cmd = [sys.executable, "-m", "defect_perception.cli", "build-engine", str(d), "--fp16"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "TensorRT is not usable on this machine" in out.stderr
    out = subprocess.run(cmd[:-1] + ["--int8"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--calib-dir" in out.stderr


BAD = {"inputs": 5, "ok": False, "outputs": {"logits": {"max_abs_err": 3.2, "argmax_agree": 0.4}}}


def test_failed_check_leaves_no_usable_engine(tmp_path):
    # a good engine (and an INT8 calibration cache) from an earlier build under the same key
    engine_cache.store(KEY, b"old-good-engine", tmp_path, {"verify": {"ok": True}})
    calib = engine_cache.calib_path(KEY, tmp_path)
    calib.write_bytes(b"calibration-table")
    with pytest.raises(engine_cache.EngineRejected, match=r"MISMATCH.*not cached.*--force") as exc:
        tensorrt_backend.save_checked(KEY, b"bad-engine", BAD, "m/model.onnx", tmp_path)
    assert "argmax_agree=0.400" in str(exc.value)
    engine, meta = engine_cache.paths(KEY, tmp_path)
    assert not engine.exists() and not calib.exists()  # nothing left that can load, no stale calibration
    assert json.loads(meta.read_text())["failed"] is True
    found, reason = engine_cache.lookup(KEY, tmp_path)
    assert found is None and "failed the check against ONNX Runtime" in reason and "MISMATCH" in reason
    assert "MISMATCH" in engine_cache.failure(KEY, tmp_path)
    other = engine_cache.EngineKey(**{**KEY.__dict__, "precision": "fp32"})
    assert engine_cache.failure(other, tmp_path) is None  # another precision is not affected
    # a forced rebuild that passes replaces the failure record
    good = {"inputs": 5, "ok": True, "outputs": {}}
    path = tensorrt_backend.save_checked(KEY, b"good-engine", good, "m/model.onnx", tmp_path)
    assert engine_cache.lookup(KEY, tmp_path)[0] == path and engine_cache.failure(KEY, tmp_path) is None
    with pytest.raises(ValueError, match="record_failure"):
        engine_cache.store(KEY, b"bad-engine", tmp_path, {"verify": BAD})


def test_engine_cached_despite_a_failed_check_is_refused(tmp_path):
    # what earlier versions wrote after a MISMATCH: the engine plus a sidecar with verify.ok false
    engine, meta = engine_cache.paths(KEY, tmp_path)
    engine.write_bytes(b"bad-engine")
    meta.write_text(json.dumps({"key": KEY.__dict__, "engine_sha256": engine_cache.sha256_file(engine),
                                "verify": BAD}))
    found, reason = engine_cache.lookup(KEY, tmp_path)
    assert found is None and "failed the check against ONNX Runtime" in reason
    assert "argmax_agree=0.400" in engine_cache.failure(KEY, tmp_path)


@pytest.fixture()
def fake_gpu(monkeypatch, tmp_path):
    """TensorRT 'present' for the cache decisions only: anything that needs it really fails."""
    monkeypatch.setattr(tensorrt_backend, "status", lambda: (True, "TensorRT 10.3.0 on Orin (sm87)"))
    monkeypatch.setattr(tensorrt_backend, "engine_key", lambda onnx, precision: engine_cache.EngineKey(
        **{**KEY.__dict__, "precision": precision}))
    monkeypatch.setenv("DEFECT_PERCEPTION_ENGINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_build_engine_refuses_a_recorded_failure_unless_forced(fake_gpu, tmp_path, capsys):
    d = make_classifier(tmp_path / "m")
    card = json.loads((d / "model.json").read_text())
    engine_cache.record_failure(KEY, BAD, fake_gpu)
    with pytest.raises(engine_cache.EngineRejected, match=r"failed the check.*--force"):
        tensorrt_backend.build_engine(d / "model.onnx", card, "fp16", cache_root=fake_gpu)
    assert tensorrt_backend.cached_engine(KEY, fake_gpu, force=True) is None  # --force: rebuild
    from defect_perception.cli import main

    assert main(["build-engine", str(d), "--fp16", "--cache-dir", str(fake_gpu)]) == 1
    err = capsys.readouterr().err
    assert "no usable engine" in err and "MISMATCH" in err and "--force" in err
    # a cached engine that passed its check is reused and the command exits 0
    good = {"inputs": 5, "ok": True, "outputs": {}}
    path = engine_cache.store(KEY, b"good-engine", fake_gpu, {"verify": good})
    assert tensorrt_backend.build_engine(d / "model.onnx", card, "fp16", cache_root=fake_gpu)[0] == path
    assert main(["build-engine", str(d), "--fp16", "--cache-dir", str(fake_gpu)]) == 0
    assert f"ready: {path}" in capsys.readouterr().out


def test_inspector_refuses_a_failed_engine_instead_of_rebuilding_it(fake_gpu, tmp_path, monkeypatch):
    d = make_classifier(tmp_path / "m")

    def no_build(*a, **k):
        raise AssertionError("must not rebuild an engine recorded as failed")
    monkeypatch.setattr(tensorrt_backend, "build_engine", no_build)
    engine_cache.record_failure(KEY, BAD, fake_gpu)
    from defect_perception import load_model

    with pytest.raises(engine_cache.EngineRejected, match=r"fp16 engine refused.*MISMATCH.*onnxruntime"):
        load_model(d, backend="tensorrt", precision="fp16")
    with pytest.raises(engine_cache.EngineRejected, match=r"INT8 needs calibration") as exc:
        load_model(d, backend="tensorrt", precision="int8")
    assert f"build-engine {d} --int8 --calib-dir DIR" in str(exc.value)  # names the model folder
    # backend auto keeps the line inspecting: ONNX Runtime runs the checked ONNX model, and says why
    m = load_model(d, backend="auto", precision="fp16")
    assert m.backend_name == "onnxruntime" and "engine was refused" in m.backend_reason
    assert m(np.zeros((32, 32), np.uint8))["verdict"] in ("pass", "reject", "review")


def test_template_model_engine_shapes_use_two_channels(tmp_path):
    d = make_detector(tmp_path / "tpl", template=True, size=(64, 64))
    card = json.loads((d / "model.json").read_text())
    onnx = d / "model.onnx"
    shape = tensorrt_backend.onnx_input_shape(onnx)
    assert input_chw(card, shape, onnx) == (2, 64, 64)
    assert tensorrt_backend.profile_shapes((2, 64, 64), 16) == {
        "min": (1, 2, 64, 64), "opt": (4, 2, 64, 64), "max": (16, 2, 64, 64)}
    assert tensorrt_backend.profile_shapes((2, 64, 64), 16, static_batch=1)["max"] == (1, 2, 64, 64)
    no_tpl = {**card, "input": {k: v for k, v in card["input"].items() if k != "template"}}
    with pytest.raises(ModelLoadError, match=r"channels differs"):
        input_chw(no_tpl, shape, onnx)
    # the post-build cross-check feeds 2-channel inputs (was 1 or 3 and failed in ONNX Runtime)
    ort = OnnxRuntimeBackend(onnx)
    rep = tensorrt_backend.check_against_onnxruntime(onnx, card, ort.run)
    assert rep["ok"] and rep["inputs"] == 4
    # INT8 calibration pairs each frame with its aligned template (DeepPCB naming)
    calib = tmp_path / "calib"
    calib.mkdir()
    with pytest.raises(FileNotFoundError, match=r"_temp.*input.template"):
        list(tensorrt_backend.calibration_batches(calib, card))
    import cv2

    for i in range(3):
        cv2.imwrite(str(calib / f"b{i}_test.png"), np.full((80, 96), 200, np.uint8))
        cv2.imwrite(str(calib / f"b{i}_temp.png"), np.full((80, 96), 10, np.uint8))
    (calib / "b2_temp.png").unlink()  # unpaired frame: skipped with a warning
    batches = [b["input"] for b in tensorrt_backend.calibration_batches(calib, card)]
    assert len(batches) == 2 and all(b.shape == (1, 2, 64, 64) for b in batches)
    assert batches[0][0, 0].mean() > batches[0][0, 1].mean()  # channel 0 frame, channel 1 template
    rep = tensorrt_backend.check_against_onnxruntime(onnx, card, ort.run, calib_dir=calib)
    assert rep["ok"] and rep["inputs"] == 3


@pytest.mark.skipif(not TRT_OK, reason=f"TensorRT unavailable: {TRT_WHY}")
def test_real_engine_build_matches_onnxruntime(tmp_path, monkeypatch):  # runs on a Jetson / NVIDIA host
    monkeypatch.setenv("DEFECT_PERCEPTION_ENGINE_CACHE", str(tmp_path / "c"))
    d = make_classifier(tmp_path / "m")
    card = json.loads((d / "model.json").read_text())
    path, report = tensorrt_backend.build_engine(d / "model.onnx", card, "fp16")
    assert path.is_file() and report["ok"]
    from defect_perception import load_model

    trt_model = load_model(d, backend="tensorrt")
    frame = np.full((32, 32), 200, np.uint8)
    assert trt_model(frame)["verdict"] == load_model(d, backend="onnxruntime")(frame)["verdict"]


@pytest.mark.skipif(not TRT_OK, reason=f"TensorRT unavailable: {TRT_WHY}")
def test_real_template_engine_build_has_two_channels(tmp_path, monkeypatch):  # Jetson / NVIDIA host
    monkeypatch.setenv("DEFECT_PERCEPTION_ENGINE_CACHE", str(tmp_path / "c"))
    d = make_detector(tmp_path / "tpl", template=True, size=(64, 64))
    card = json.loads((d / "model.json").read_text())
    path, report = tensorrt_backend.build_engine(d / "model.onnx", card, "fp16", max_batch=4)
    assert path.is_file() and report["ok"]
    from defect_perception import load_model

    trt_model = load_model(d, backend="tensorrt")
    assert trt_model.backend.input_shape == ["N", 2, 64, 64]
    frame, tpl = np.full((64, 64), 200, np.uint8), np.full((64, 64), 10, np.uint8)
    ort_model = load_model(d, backend="onnxruntime")
    assert trt_model(frame, template=tpl)["verdict"] == ort_model(frame, template=tpl)["verdict"]
