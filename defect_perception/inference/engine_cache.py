"""TensorRT engine cache outside the repo, keyed by ONNX sha256, GPU, TensorRT version
and precision. An engine is used only when its sidecar (`.json`) matches the current key,
the engine file still has the sha256 recorded at build time and its check against ONNX
Runtime passed; anything else is rebuilt or refused, and the reason is returned for the log.

An engine that fails the ONNX Runtime check is never written: `record_failure` deletes any
engine (and INT8 calibration cache) under that key and leaves only the sidecar, marked
`"failed": true` with the figures, so the inspector refuses the key with the reason instead
of rebuilding the same bad engine at every start, and `build-engine` says so until it is
rerun with `--force`. Pure file logic: no TensorRT import.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from defect_perception.core.model_card import sha256_file
from defect_perception.inference.errors import ModelLoadError

PRECISIONS = ("fp32", "fp16", "int8")


class EngineRejected(ModelLoadError):
    """A TensorRT engine that must not be used: it failed its check against ONNX Runtime
    (now or when it was built), or it cannot be built where it is needed. The message says
    which engine, the figures, and what to change."""


def cache_dir() -> Path:
    """$DEFECT_PERCEPTION_ENGINE_CACHE, else $XDG_CACHE_HOME (~/.cache)/defect_perception/engines."""
    env = os.environ.get("DEFECT_PERCEPTION_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "defect_perception" / "engines"


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    gpu: str
    compute_capability: str
    trt_version: str
    precision: str

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")

    @property
    def stem(self) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu).strip("-").lower() or "gpu"
        return (f"{self.onnx_sha256[:16]}-{gpu}-sm{self.compute_capability}-trt{self.trt_version}"
                f"-{self.precision}")


def paths(key: EngineKey, root: Path | None = None) -> tuple[Path, Path]:
    root = Path(root) if root else cache_dir()
    return root / f"{key.stem}.engine", root / f"{key.stem}.json"


def _failure(meta: dict) -> str | None:
    """Why a sidecar's engine must not be used (failed ONNX Runtime check), else None. Also
    catches engines written with `verify.ok: false` by versions that cached them anyway."""
    rep = meta.get("verify")
    if not meta.get("failed") and not (isinstance(rep, dict) and rep.get("ok") is False):
        return None
    figures = meta.get("verify_summary")
    if not figures and isinstance(rep, dict):
        from defect_perception.inference import verify

        try:
            figures = verify.summary(rep)
        except (KeyError, TypeError, ValueError, AttributeError):
            figures = None
    return f"failed the check against ONNX Runtime when it was built ({figures or 'MISMATCH'})"


def check(engine: Path, key: EngineKey) -> tuple[bool, str]:
    """Is `engine` (with its sidecar) safe to load for `key`? Returns (ok, reason)."""
    engine = Path(engine)
    meta_path = engine.with_suffix(".json")
    if not engine.is_file() and not meta_path.is_file():
        return False, f"no cached engine {engine.name}"
    if not meta_path.is_file():
        return False, f"{engine}: no metadata {meta_path.name} (foreign or partial engine)"
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return False, f"{meta_path}: unreadable metadata ({e})"
    for field, want in asdict(key).items():
        got = (meta.get("key") or {}).get(field)
        if got != want:
            return False, f"{engine.name} was built for {field}={got!r}, this target has {want!r}"
    failed = _failure(meta)
    if failed:
        return False, f"{engine.name} {failed}; it is not used ({meta_path})"
    if not engine.is_file():
        return False, f"no cached engine {engine.name}"
    if meta.get("engine_sha256") != sha256_file(engine):
        return False, f"{engine}: file changed since it was built (sha256 mismatch)"
    return True, f"cached engine {engine} matches (onnx sha, GPU, TensorRT, precision; ONNX Runtime check OK)"


def failure(key: EngineKey, root: Path | None = None) -> str | None:
    """The reason when the cache records that `key`'s engine failed its ONNX Runtime check
    (refuse it; only an explicit `build-engine --force` rebuilds it), else None."""
    engine, meta_path = paths(key, root)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or (meta.get("key") or {}) != asdict(key):
        return None
    failed = _failure(meta)
    return f"{engine.name} {failed} ({meta_path})" if failed else None


def lookup(key: EngineKey, root: Path | None = None) -> tuple[Path | None, str]:
    engine, _ = paths(key, root)
    ok, reason = check(engine, key)
    return (engine if ok else None), reason


def calib_path(key: EngineKey, root: Path | None = None) -> Path:
    """INT8 calibration cache of `key` (TensorRT reuses it instead of recalibrating)."""
    return paths(key, root)[0].with_suffix(".calib")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store(key: EngineKey, engine_bytes: bytes, root: Path | None = None, extra: dict | None = None) -> Path:
    """Write engine + sidecar atomically (a crash never leaves a half engine that looks valid).
    Only for engines that passed the ONNX Runtime check: a failed one goes to `record_failure`."""
    rep = (extra or {}).get("verify")
    if isinstance(rep, dict) and rep.get("ok") is False:
        raise ValueError("store(): this engine failed its ONNX Runtime check; use record_failure()")
    engine, meta_path = paths(key, root)
    engine.parent.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # an engine never sits next to another build's sidecar
    _write_atomic(engine, engine_bytes)
    meta = {"key": asdict(key), "engine_sha256": sha256_file(engine), **(extra or {})}
    _write_atomic(meta_path, json.dumps(meta, indent=2).encode())
    return engine


def record_failure(key: EngineKey, report: dict, root: Path | None = None, extra: dict | None = None) -> Path:
    """Remember that `key`'s engine failed the ONNX Runtime check: delete any engine and INT8
    calibration cache under that key (a rebuild with new images must recalibrate) and write
    only the sidecar, `"failed": true` with the figures. Returns the sidecar path."""
    from defect_perception.inference import verify

    engine, meta_path = paths(key, root)
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.unlink(missing_ok=True)
    calib_path(key, root).unlink(missing_ok=True)
    meta = {"key": asdict(key), "failed": True, **(extra or {}), "verify": report,
            "verify_summary": verify.summary(report)}
    _write_atomic(meta_path, json.dumps(meta, indent=2).encode())
    return meta_path
