"""TensorRT backend (optional extra `[tensorrt]`), written on NVIDIA's polygraphy over the
TensorRT 10 Python API: polygraphy parses the ONNX file, builds the engine (FP32/FP16,
INT8 with entropy calibration from a folder of images), keeps device buffers allocated
across calls (`TrtRunner`) and copies outputs back, which keeps our own untested surface
small. Everything is imported lazily; on machines without TensorRT `status()` says why.

Engines are cached by `engine_cache` (ONNX sha256, GPU, TensorRT version, precision);
every build is checked against ONNX Runtime (`verify.compare`) and the figures logged. An
engine that disagrees is not cached: the key is recorded as failed and `EngineRejected` is
raised, so neither `build-engine` nor the inspector ever uses it.

The input shape (channels included: 1 gray, 2 gray + aligned template, 3 colour) comes from
the model card as the runtime feeds it, checked against the ONNX input (`input_chw`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from defect_perception.core.model_card import sha256_file
from defect_perception.inference import engine_cache, verify
from defect_perception.inference.engine_cache import EngineRejected
from defect_perception.inference.errors import BackendUnavailable
from defect_perception.inference.input_shape import input_chw

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


def profile_shapes(chw: tuple[int, int, int], max_batch: int, static_batch: int | None = None
                   ) -> dict[str, tuple[int, int, int, int]]:
    """min/opt/max NCHW shapes of the engine's optimisation profile. A fixed ONNX batch
    allows only that batch; otherwise 1..max_batch, optimised for min(max_batch, 4)."""
    c, h, w = chw
    if static_batch:
        return {k: (static_batch, c, h, w) for k in ("min", "opt", "max")}
    b = max(1, int(max_batch))
    return {"min": (1, c, h, w), "opt": (min(b, 4), c, h, w), "max": (b, c, h, w)}


def _template_for(frame: Path) -> Path | None:
    """DeepPCB naming: `<name>_test.<ext>` is aligned with `<name>_temp.<ext>`."""
    if not frame.stem.endswith("_test"):
        return None
    return frame.with_name(frame.stem[:-len("_test")] + "_temp" + frame.suffix)


def calibration_batches(calib_dir: str | Path, card: dict, limit: int = 256):
    """INT8 calibration data: images from a folder, preprocessed exactly like the line does.
    Template models (`input.template`) take pairs `<name>_test.<ext>` (frame) +
    `<name>_temp.<ext>` (its aligned defect-free template), as in DeepPCB."""
    import cv2

    from defect_perception.core.preprocess import Preprocessor

    files = sorted(p for p in Path(calib_dir).rglob("*") if p.suffix.lower() in IMAGE_EXT)
    pre = Preprocessor(card["input"])
    if pre.template:
        pairs = [(f, _template_for(f)) for f in files if _template_for(f) is not None]
        for f, t in pairs:
            if not t.is_file():
                log.warning("calibration: %s has no template %s, skipped", f, t.name)
        pairs = [(f, t) for f, t in pairs if t.is_file()][:limit]
        if not pairs:
            raise FileNotFoundError(f"--calib-dir {calib_dir}: no image pairs <name>_test.<ext> + "
                                    f"<name>_temp.<ext> (the model's card has input.template: it "
                                    f"needs each frame with its aligned defect-free template)")
    else:
        pairs = [(f, None) for f in files[:limit]]
        if not pairs:
            raise FileNotFoundError(f"--calib-dir {calib_dir}: no images ({', '.join(IMAGE_EXT)})")
    name = card["input"].get("name", "input")
    for f, t in pairs:
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE if pre.color == "gray" else cv2.IMREAD_COLOR)
        tpl = cv2.imread(str(t), cv2.IMREAD_GRAYSCALE) if t is not None else None
        if img is None or (t is not None and tpl is None):
            log.warning("calibration: cannot read %s, skipped", f if img is None else t)
            continue
        if tpl is not None:
            if tpl.shape != img.shape:
                log.warning("calibration: %s is %s, its template %s: not aligned, skipped",
                            f, img.shape, tpl.shape)
                continue
            img = np.dstack([img, tpl])
        x, _ = pre(img)
        yield {name: x}


def build_engine(onnx_path: str | Path, card: dict, precision: str = "fp16", calib_dir: str | None = None,
                 workspace_mb: int = 1024, max_batch: int = 16, cache_root: Path | None = None,
                 force: bool = False, log_fn: Callable[[str], None] = log.info) -> tuple[Path, dict]:
    """Build (or reuse) the engine for this ONNX file on this GPU; returns (path, verify report).
    Raises EngineRejected when the new engine disagrees with ONNX Runtime (nothing is cached,
    the key is recorded as failed), or when the cache records such a failure and not `force`."""
    ok, why = status()
    if not ok:
        raise BackendUnavailable(f"cannot build a TensorRT engine here: {why}")
    key = engine_key(onnx_path, precision)
    cached = cached_engine(key, cache_root, force, log_fn, model=Path(onnx_path).parent)
    if cached is not None:
        return cached
    if precision == "int8" and not calib_dir:
        raise ValueError("INT8 needs calibration images: pass --calib-dir DIR")
    # fail on a card/ONNX disagreement here, not in the middle of a TensorRT build
    onnx_shape = onnx_input_shape(onnx_path)
    chw = input_chw(card, onnx_shape, onnx_path)
    import tensorrt as trt
    from polygraphy.backend.trt import (
        Calibrator,
        CreateConfig,
        Profile,
        engine_bytes_from_network,
        network_from_onnx_path,
    )

    name = card["input"].get("name", "input")
    b = onnx_shape[0]
    static = b if isinstance(b, int) and b > 0 else None
    if static and static != max(1, int(max_batch)):  # a fixed ONNX batch allows only that batch
        log_fn(f"ONNX input has a fixed batch of {static}; engine max batch set to {static}")
    shapes = profile_shapes(chw, max_batch, static)
    batch_max = shapes["max"][0]
    profile = Profile().add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    calibrator = None
    if precision == "int8":
        calib = engine_cache.calib_path(key, cache_root)
        if force:  # --force with new --calib-dir images must recalibrate, not reuse the old cache
            calib.unlink(missing_ok=True)
        calibrator = Calibrator(list(calibration_batches(calib_dir, card)), cache=str(calib))
    config = CreateConfig(fp16=precision in ("fp16", "int8"), int8=precision == "int8",
                          calibrator=calibrator, profiles=[profile],
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_mb) << 20})
    t0 = time.monotonic()
    engine_bytes = engine_bytes_from_network(network_from_onnx_path(str(onnx_path)), config=config)
    if engine_bytes is None:
        raise EngineRejected(f"{onnx_path}: TensorRT could not build a {precision} engine (see the TensorRT "
                             "log above); try another precision, or run with backend onnxruntime")
    build_s = time.monotonic() - t0
    runner = _Runner(bytes(engine_bytes))
    try:
        report = check_against_onnxruntime(onnx_path, card, runner.run, calib_dir)
    finally:
        runner.close()
    log_fn(f"engine check vs ONNX Runtime: {verify.summary(report)}")
    info = {"onnx": str(onnx_path), "build_s": round(build_s, 1), "max_batch": batch_max,
            "workspace_mb": workspace_mb, "calib_dir": str(calib_dir) if calib_dir else None}
    return save_checked(key, bytes(engine_bytes), report, onnx_path, cache_root, info, log_fn), report


def cached_engine(key: engine_cache.EngineKey, cache_root: Path | None = None, force: bool = False,
                  log_fn: Callable[[str], None] = log.info, model: str | Path = "MODEL"
                  ) -> tuple[Path, dict] | None:
    """The cache decision before a build: (path, stored verify report) of a usable cached
    engine unless `force`; EngineRejected when the cache records that this key's engine
    failed its ONNX Runtime check and not `force`; None = build. Pure file logic."""
    cached, reason = engine_cache.lookup(key, cache_root)
    if force:
        log_fn(f"building TensorRT {key.precision} engine (rebuild requested; cache: {reason})")
        return None
    if cached is not None:
        log_fn(reason)
        try:
            import json

            report = json.loads(cached.with_suffix(".json").read_text()).get("verify") or {}
        except (OSError, ValueError):
            report = {}
        return cached, report
    failed = engine_cache.failure(key, cache_root)
    if failed:
        raise EngineRejected(f"{failed}. {rebuild_advice(model)}")
    log_fn(f"building TensorRT {key.precision} engine: {reason}")
    return None


def rebuild_advice(model: str | Path = "MODEL") -> str:
    return (f"Rebuild with `defect-perception build-engine {model} --force` and another precision "
            "(--fp16 or --fp32 instead of --int8) or better --calib-dir images, or run the inspector "
            "with backend onnxruntime")


def save_checked(key: engine_cache.EngineKey, engine_bytes: bytes, report: dict, onnx_path,
                 cache_root: Path | None = None, info: dict | None = None,
                 log_fn: Callable[[str], None] = log.info) -> Path:
    """After a build: cache the engine only if it agrees with ONNX Runtime; otherwise record
    the failure (no engine file) and raise EngineRejected naming the figures. Pure file logic."""
    if not report.get("ok"):
        meta = engine_cache.record_failure(key, report, cache_root, {**(info or {}), "onnx": str(onnx_path)})
        raise EngineRejected(
            f"{onnx_path}: the TensorRT {key.precision} engine disagrees with ONNX Runtime "
            f"({verify.summary(report)}); it was not cached and will not be used (failure recorded in "
            f"{meta}). {rebuild_advice(Path(onnx_path).parent)}")
    path = engine_cache.store(key, engine_bytes, cache_root, {**(info or {}), "verify": report})
    log_fn(f"engine written to {path} ({(info or {}).get('build_s', 0):.1f} s)")
    return path


def onnx_input_shape(onnx_path) -> list:
    """The ONNX input's NCHW shape (ints, or names for dynamic dims), read with ONNX Runtime
    (always installed)."""
    from defect_perception.inference.onnxruntime_backend import OnnxRuntimeBackend

    return list(OnnxRuntimeBackend(onnx_path).input_shape)


def onnx_static_batch(onnx_path) -> int | None:
    """The ONNX input's batch dimension when it is a fixed number, else None (dynamic)."""
    b = onnx_input_shape(onnx_path)[0]
    return b if isinstance(b, int) and b > 0 else None


def check_against_onnxruntime(onnx_path, card: dict, run: Callable[[np.ndarray], dict],
                              calib_dir: str | None = None, n: int = 4) -> dict:
    """Reference inputs: a few calibration images when given, plus seeded random tensors."""
    from defect_perception.inference.onnxruntime_backend import OnnxRuntimeBackend

    ort = OnnxRuntimeBackend(onnx_path)
    c, h, w = input_chw(card, ort.input_shape, onnx_path)
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


def launch_engine(key: engine_cache.EngineKey, cache_root: Path | None = None,
                  log_fn: Callable[[str], None] = log.info, model: str | Path = "MODEL") -> Path | None:
    """The inspector's cache decision at start-up: the cached engine, or None = build one now.
    A key recorded as failed is refused (EngineRejected) instead of being rebuilt at every
    start; INT8 is never built at start-up (it needs calibration images). Pure file logic."""
    path, reason = engine_cache.lookup(key, cache_root)
    if path is not None:
        log_fn(reason)
        return path
    failed = engine_cache.failure(key, cache_root)
    if failed:
        raise EngineRejected(f"TensorRT {key.precision} engine refused: {failed}. {rebuild_advice(model)}")
    if key.precision == "int8":
        raise EngineRejected(f"no usable INT8 engine ({reason}); INT8 needs calibration images, so it is "
                             f"not built at start-up: run `defect-perception build-engine {model} --int8 "
                             "--calib-dir DIR` on this machine first, or set precision to fp16")
    log_fn(f"no usable engine ({reason}); building one now (run `defect-perception build-engine` "
           "on the target once to avoid this at launch)")
    return None


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, onnx_path: str | Path, card: dict, precision: str = "fp16",
                 cache_root: Path | None = None, max_batch: int = 16,
                 log_fn: Callable[[str], None] = log.info):
        ok, why = status()
        if not ok:
            raise BackendUnavailable(f"TensorRT backend unavailable: {why}")
        key = engine_key(onnx_path, precision)
        path = launch_engine(key, cache_root, log_fn, model=Path(onnx_path).parent)
        if path is None:
            path, _ = build_engine(onnx_path, card, precision, max_batch=max_batch, cache_root=cache_root,
                                   force=True, log_fn=log_fn)
        self._runner = _Runner(Path(path).read_bytes())
        self.input_name = card["input"].get("name", "input")
        self.input_shape = ["N", *input_chw(card)]
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
