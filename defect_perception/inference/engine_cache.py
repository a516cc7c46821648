"""TensorRT engine cache outside the repo, keyed by ONNX sha256, GPU, TensorRT version
and precision. An engine is used only when its sidecar (`.json`) matches the current key
and the engine file still has the sha256 recorded at build time; anything else is
rebuilt, and the reason is returned for the log. Pure file logic: no TensorRT import.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from defect_perception.core.model_card import sha256_file

PRECISIONS = ("fp32", "fp16", "int8")


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


def check(engine: Path, key: EngineKey) -> tuple[bool, str]:
    """Is `engine` (with its sidecar) safe to load for `key`? Returns (ok, reason)."""
    engine = Path(engine)
    meta_path = engine.with_suffix(".json")
    if not engine.is_file():
        return False, f"no cached engine {engine.name}"
    if not meta_path.is_file():
        return False, f"{engine}: no metadata {meta_path.name} (foreign or partial engine)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return False, f"{meta_path}: unreadable metadata ({e})"
    for field, want in asdict(key).items():
        got = meta.get("key", {}).get(field)
        if got != want:
            return False, f"{engine.name} was built for {field}={got!r}, this target has {want!r}"
    if meta.get("engine_sha256") != sha256_file(engine):
        return False, f"{engine}: file changed since it was built (sha256 mismatch)"
    return True, f"cached engine {engine} matches (onnx sha, GPU, TensorRT, precision)"


def lookup(key: EngineKey, root: Path | None = None) -> tuple[Path | None, str]:
    engine, _ = paths(key, root)
    ok, reason = check(engine, key)
    return (engine if ok else None), reason


def store(key: EngineKey, engine_bytes: bytes, root: Path | None = None, extra: dict | None = None) -> Path:
    """Write engine + sidecar atomically (a crash never leaves a half engine that looks valid)."""
    engine, meta_path = paths(key, root)
    engine.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=engine.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(engine_bytes)
    os.replace(tmp, engine)
    meta = {"key": asdict(key), "engine_sha256": sha256_file(engine), **(extra or {})}
    fd, tmp = tempfile.mkstemp(dir=engine.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, meta_path)
    return engine
