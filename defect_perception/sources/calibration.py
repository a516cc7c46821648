"""Camera calibration (CameraInfo contents) from a standard ROS camera_calibration YAML
(`camera_info_url`: `file:///path/cam.yaml` or a plain path), or a default pinhole model
when none is given: focal length = image width in pixels, principal point at the centre,
no distortion. The default is honest about being uncalibrated only in the docs; set a real
calibration when measuring in millimetres."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from defect_perception.core.yaml_file import read_yaml_mapping


class CalibrationError(ValueError):
    """A calibration file that cannot be read; the message names the file and field."""


@dataclass
class Calibration:
    width: int
    height: int
    k: list[float]
    d: list[float] = field(default_factory=list)
    r: list[float] = field(default_factory=lambda: [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    p: list[float] = field(default_factory=list)
    distortion_model: str = "plumb_bob"
    camera_name: str = ""
    source: str = "default"

    def __post_init__(self):
        if not self.p:
            k = self.k
            self.p = [k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
        if self.distortion_model == "plumb_bob" and not self.d:
            self.d = [0.0] * 5


def default_calibration(width: int, height: int) -> Calibration:
    f = float(width)
    return Calibration(int(width), int(height), [f, 0.0, width / 2.0, 0.0, f, height / 2.0, 0.0, 0.0, 1.0])


def _matrix(doc: dict, key: str, n: int | None, path: Path) -> list[float]:
    m = doc.get(key)
    if m is None:
        raise CalibrationError(f"calibration {path}: missing field {key!r}")
    data = m.get("data") if isinstance(m, dict) else m
    if not isinstance(data, list) or (n is not None and len(data) != n):
        raise CalibrationError(f"calibration {path}: field {key!r} needs {n} numbers, got {data!r}")
    try:
        return [float(x) for x in data]
    except (TypeError, ValueError):
        raise CalibrationError(f"calibration {path}: field {key!r} has non-numbers: {data!r}") from None


def load_calibration(url: str) -> Calibration:
    """Read a camera_calibration YAML (file:// URL or path)."""
    if url.startswith("package://"):
        raise CalibrationError(f"camera_info_url {url!r}: package:// URLs are not supported; give a path")
    path = Path(url.removeprefix("file://")).expanduser()
    doc = read_yaml_mapping(path, "calibration file", CalibrationError)
    try:
        width, height = int(doc["image_width"]), int(doc["image_height"])
    except (KeyError, TypeError, ValueError):
        raise CalibrationError(f"calibration {path}: needs integer image_width and image_height") from None
    model = str(doc.get("distortion_model", "plumb_bob"))
    d = _matrix(doc, "distortion_coefficients", None, path) if "distortion_coefficients" in doc else []
    r = _matrix(doc, "rectification_matrix", 9, path) if "rectification_matrix" in doc else None
    p = _matrix(doc, "projection_matrix", 12, path) if "projection_matrix" in doc else []
    cal = Calibration(width, height, _matrix(doc, "camera_matrix", 9, path), d, p=p,
                      distortion_model=model, camera_name=str(doc.get("camera_name", "")),
                      source=str(path))
    if r is not None:
        cal.r = r
    return cal
