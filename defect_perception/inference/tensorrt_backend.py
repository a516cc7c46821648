"""TensorRT backend (optional extra `[tensorrt]`), written on NVIDIA's polygraphy over the
TensorRT 10 Python API: polygraphy parses the ONNX file, builds the engine (FP32/FP16,
INT8 with entropy calibration from a folder of images), keeps device buffers allocated
across calls (`TrtRunner`) and copies outputs back, which keeps our own untested surface
small. Everything is imported lazily; on machines without TensorRT `status()` says why.

Engines are cached by `engine_cache` (ONNX sha256, GPU, TensorRT version, precision);
every build is checked against ONNX Runtime (`verify.compare`) and the figures logged.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from defect_perception.core.model_card import sha256_file
from defect_perception.inference import engine_cache, verify
from defect_perception.inference.errors import BackendUnavailable, ModelLoadError

log = logging.getLogger("defect_perception.tensorrt")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def gpu_info() -> tuple[dict | None, str]:
    """({'name', 'compute_capability'} of CUDA device 0, reason) or (None, why not)."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
    except ImportError as e:
        return None, f"cuda-python not installed, cannot query the GPU ({e})"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return None, f"no CUDA GPU ({cudart.cudaGetErrorName(err)[1].decode() if int(err) else 'count 0'})"
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None, "cudaGetDeviceProperties failed"
    raw = props.name
    name = raw.decode(errors="replace").strip("\x00 ") if isinstance(raw, bytes) else str(raw)
    return {"name": name, "compute_capability": f"{props.major}{props.minor}"}, f"GPU {name}"


def status() -> tuple[bool, str]:
    """Can the TensorRT backend run here? (ok, reason naming what is missing)."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or OSError when libnvinfer/libnvonnxparser is missing
        return False, f"tensorrt not importable ({type(e).__name__}: {e})"
    try:
        import polygraphy  # noqa: F401
    except ImportError as e:
        return False, f"polygraphy not installed ({e}); pip install 'defect_perception[tensorrt]'"
    gpu, why = gpu_info()
    if gpu is None:
        return False, why
    return True, f"TensorRT {trt.__version__} on {gpu['name']} (sm{gpu['compute_capability']})"


def engine_key(onnx_path: str | Path, precision: str) -> engine_cache.EngineKey:
    import tensorrt as trt

    gpu, why = gpu_info()
    if gpu is None:
        raise BackendUnavailable(f"TensorRT: {why}")
    return engine_cache.EngineKey(sha256_file(onnx_path), gpu["name"], gpu["compute_capability"],
                                  trt.__version__, precision)


def calibration_batches(calib_dir: str | Path, card: dict, limit: int = 256):
    """INT8 calibration data: images from a folder, preprocessed exactly like the line does."""
    import cv2

    from defect_perception.core.preprocess import Preprocessor

    files = sorted(p for p in Path(calib_dir).rglob("*") if p.suffix.lower() in IMAGE_EXT)[:limit]
    if not files:
        raise FileNotFoundError(f"--calib-dir {calib_dir}: no images ({', '.join(IMAGE_EXT)})")
    pre = Preprocessor(card["input"])
    name = card["input"].get("name", "input")
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE if pre.channels == 1 else cv2.IMREAD_COLOR)
        if img is None:
            log.warning("calibration: cannot read %s, skipped", f)
            continue
        x, _ = pre(img)
        yield {name: x}


def build_engine(onnx_path: str | Path, card: dict, precision: str = "fp16", calib_dir: str | None = None,
                 workspace_mb: int = 1024, max_batch: int = 16, cache_root: Path | None = None,
                 force: bool = False, log_fn: Callable[[str], None] = log.info) -> tuple[Path, dict]:
    """Build (or reuse) the engine for this ONNX file on this GPU; returns (path, verify report)."""
    ok, why = status()
    if not ok:
        raise BackendUnavailable(f"cannot build a TensorRT engine here: {why}")
    import tensorrt as trt
    from polygraphy.backend.trt import (
        Calibrator,
        CreateConfig,
        Profile,
        engine_bytes_from_network,
        network_from_onnx_path,
    )

    key = engine_key(onnx_path, precision)
    cached, reason = engine_cache.lookup(key, cache_root)
    if cached is not None and not force:
        log_fn(reason)
        return cached, {}
    log_fn(f"building TensorRT {precision} engine for {onnx_path}: {reason}")
    if precision == "int8" and not calib_dir:
        raise ValueError("INT8 needs calibration images: pass --calib-dir DIR")
    name = card["input"].get("name", "input")
    c = 1 if card["input"].get("color") == "gray" else 3
    h, w = card["input"]["size"]
    batch_max = max(1, int(max_batch))
    static = onnx_static_batch(onnx_path)
    if static:  # an ONNX export with a fixed batch dimension allows only that batch
        if static != batch_max:
            log_fn(f"ONNX input has a fixed batch of {static}; engine max batch set to {static}")
        batch_max = static
    profile = Profile().add(name, min=(1 if not static else static, c, h, w),
                            opt=(static or min(batch_max, 4), c, h, w), max=(batch_max, c, h, w))
    calibrator = None
    if precision == "int8":
        calibrator = Calibrator(list(calibration_batches(calib_dir, card)),
                                cache=str(engine_cache.paths(key, cache_root)[0].with_suffix(".calib")))
    config = CreateConfig(fp16=precision in ("fp16", "int8"), int8=precision == "int8",
                          calibrator=calibrator, profiles=[profile],
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_mb) << 20})
    t0 = time.monotonic()
    engine_bytes = engine_bytes_from_network(network_from_onnx_path(str(onnx_path)), config=config)
    if engine_bytes is None:
        raise ModelLoadError(f"{onnx_path}: TensorRT could not build an engine (see TensorRT log above)")
    build_s = time.monotonic() - t0
    runner = _Runner(bytes(engine_bytes))
    try:
        report = check_against_onnxruntime(onnx_path, card, runner.run, calib_dir)
    finally:
        runner.close()
    log_fn(f"engine check vs ONNX Runtime: {verify.summary(report)}")
    path = engine_cache.store(key, bytes(engine_bytes), cache_root,
                              {"onnx": str(onnx_path), "build_s": round(build_s, 1), "max_batch": batch_max,
                               "workspace_mb": workspace_mb, "verify": report})
    log_fn(f"engine written to {path} ({build_s:.1f} s)")
    if not report["ok"]:
        log_fn("WARNING: TensorRT outputs disagree with ONNX Runtime (argmax); check precision/calibration")
    return path, report


def onnx_static_batch(onnx_path) -> int | None:
    """The ONNX input's batch dimension when it is a fixed number (read with ONNX Runtime,
    which is always installed), else None (dynamic)."""
    from defect_perception.inference.onnxruntime_backend import OnnxRuntimeBackend

    b = OnnxRuntimeBackend(onnx_path).input_shape[0]
    return b if isinstance(b, int) and b > 0 else None


def check_against_onnxruntime(onnx_path, card: dict, run: Callable[[np.ndarray], dict],
                              calib_dir: str | None = None, n: int = 4) -> dict:
    """Reference inputs: a few calibration images when given, plus seeded random tensors."""
    from defect_perception.inference.onnxruntime_backend import OnnxRuntimeBackend

    ort = OnnxRuntimeBackend(onnx_path)
    c = 1 if card["input"].get("color") == "gray" else 3
    h, w = card["input"]["size"]
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, c, h, w)).astype(np.float32) for _ in range(n)]
    if calib_dir:
        inputs = [b[card["input"].get("name", "input")] for _, b in
                  zip(range(n), calibration_batches(calib_dir, card), strict=False)] + inputs[:1]
    return verify.compare(ort.run, run, inputs)


class _Runner:
    """polygraphy TrtRunner kept active: device buffers are allocated once and reused."""

    def __init__(self, engine_bytes: bytes):
        from polygraphy.backend.trt import TrtRunner, engine_from_bytes

        self.engine = engine_from_bytes(engine_bytes)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n).name == "INPUT")
        self.runner = TrtRunner(self.engine)
        self.runner.activate()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.runner.infer({self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        # the runner reuses its host output buffers on the next call: hand out copies
        return {k: np.array(v, copy=True) for k, v in out.items()}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
            self.runner = None


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, onnx_path: str | Path, card: dict, precision: str = "fp16",
                 cache_root: Path | None = None, max_batch: int = 16,
                 log_fn: Callable[[str], None] = log.info):
        ok, why = status()
        if not ok:
            raise BackendUnavailable(f"TensorRT backend unavailable: {why}")
        key = engine_key(onnx_path, precision)
        path, reason = engine_cache.lookup(key, cache_root)
        if path is None:
            log_fn(f"no usable engine ({reason}); building one now (run `defect-perception build-engine` "
                   "on the target once to avoid this at launch)")
            path, _ = build_engine(onnx_path, card, precision, max_batch=max_batch, cache_root=cache_root,
                                   force=True, log_fn=log_fn)
        else:
            log_fn(reason)
        self._runner = _Runner(Path(path).read_bytes())
        self.input_name = card["input"].get("name", "input")
        c = 1 if card["input"].get("color") == "gray" else 3
        self.input_shape = ["N", c, *card["input"]["size"]]
        eng = self._runner.engine
        self.output_names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)
                             if eng.get_tensor_mode(eng.get_tensor_name(i)).name == "OUTPUT"]
        try:  # the engine's optimisation profile fixes the largest batch it accepts
            import json
            self.max_batch = int(json.loads(Path(path).with_suffix(".json").read_text()).get("max_batch", 1))
        except (OSError, ValueError):
            self.max_batch = 1
        self.engine_path = str(path)
        self.detail = f"engine={path} precision={precision}"
        # warm-up: device buffers are allocated here, not on the first frame
        self._runner.run(np.zeros((1, *self.input_shape[1:]), np.float32))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._runner.run(batch)

    def close(self) -> None:
        self._runner.close()
