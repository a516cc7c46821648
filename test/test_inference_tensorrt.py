"""TensorRT path: engine cache keys, the ORT cross-check, the build-engine command.
The real engine build needs TensorRT + an NVIDIA GPU and is skipped here with the reason."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from defect_perception.inference import engine_cache, tensorrt_backend, verify
from defect_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
from defect_perception.inference.testing import make_classifier

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
