"""Small labelled recordings for tests and demos (ROS-free, written with `rosbags`).

Each frame is dark (a good-looking part) or carries a large bright patch (a defect the tiny
test classifier of `defect_perception.inference.testing` rejects); its label can disagree
with its looks, which makes escapes and false rejects on purpose."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defect_perception.recording import TS, image_cdr, open_writer, string_cdr


@dataclass
class SynthFrame:
    bright: bool  # looks defective to the tiny classifier
    label: str | None = None  # ground truth: pass | reject | None (unlabelled)
    defect_types: list[str] = field(default_factory=list)


def frame_image(bright: bool, index: int, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    h, w = size
    rng = np.random.default_rng(index)
    img = rng.integers(5, 30, size=(h, w), dtype=np.uint8)
    if bright:
        img[h // 8: h - h // 8, w // 8: w - w // 8] = 235
    return img


def write_bag(path: str | Path, frames: list[SynthFrame], *, image_topic: str = "/line/camera/image_raw",
              label_topic: str | None = "/line/camera/label", t0_ns: int = 1_700_000_000_000_000_000,
              period_ns: int = 100_000_000, storage: str = "mcap", size: tuple[int, int] = (96, 128)) -> Path:
    """Write frames (mono8) and, when `label_topic`, one label message per labelled frame."""
    writer = open_writer(path, storage=storage)
    try:
        img_conn = writer.add_connection(image_topic, "sensor_msgs/msg/Image", typestore=TS)
        lab_conn = (writer.add_connection(label_topic, "std_msgs/msg/String", typestore=TS)
                    if label_topic else None)
        for i, f in enumerate(frames):
            stamp = t0_ns + i * period_ns
            writer.write(img_conn, stamp, image_cdr(frame_image(f.bright, i, size), "mono8", stamp))
            if lab_conn is not None and f.label is not None:
                writer.write(lab_conn, stamp, string_cdr(json.dumps(
                    {"stamp_ns": stamp, "label": f.label, "defect_types": f.defect_types})))
    finally:
        writer.close()
    return Path(path)


def expected_confusion(frames: list[SynthFrame]) -> dict:
    """The confusion matrix a line that rejects exactly the bright frames must produce."""
    out = {t: {"pass": 0, "reject": 0, "review": 0} for t in ("pass", "reject", "unlabelled")}
    for f in frames:
        out[f.label or "unlabelled"]["reject" if f.bright else "pass"] += 1
    return out
