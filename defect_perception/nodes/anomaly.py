"""Anomaly node: the teacher-student anomaly model (trained on good parts only) on every frame.

Queue/backpressure, fail-safe results, live thresholds, model hot-swap and diagnostics come
from `vision_node.VisionNode`; this module adds what is specific to anomaly maps:
- `anomaly/heatmap` (sensor_msgs/Image 32FC1, per-pixel score in published-image pixels, same
  header stamp as the input frame), published only while someone subscribes;
- `anomaly/overlay` (bgr8): the frame with the heatmap blended in, regions and verdict drawn,
  only while subscribed;
- live parameters `image_threshold`, `review_lo`, `review_hi` (-1 = model card value).
Run: `anomaly --ros-args --params-file config/line.yaml -r __ns:=/line`.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
from std_msgs.msg import Header

from defect_perception.nodes.base import ParamSpec, run_nodes
from defect_perception.nodes.frame_io import FramePublisher
from defect_perception.nodes.vision_node import ThresholdParam, VisionNode

_SCORE_RANGE = (-1.0, 1.0e6)


class AnomalyNode(VisionNode):
    NODE_NAME = "anomaly"
    SOURCE = "anomaly"
    INPUT_TOPIC = "camera/image_raw"
    RESULT_TOPIC = "anomaly/result"
    OVERLAY_TOPIC = "anomaly/overlay"
    HEATMAP_TOPIC = "anomaly/heatmap"
    DEFAULT_MODEL = "models/deeppcb-anomaly"
    TASKS = ("anomaly",)
    THRESHOLD_PARAMS = (
        ThresholdParam("image_threshold", "image", None,
                       "Reject at/above this image anomaly score (model units, see the card's calibration); "
                       "-1 = model card value.", _SCORE_RANGE),
        ThresholdParam("review_lo", "review_band", 0,
                       "Lower edge of the review band in anomaly-score units; -1 = model card value.",
                       _SCORE_RANGE),
        ThresholdParam("review_hi", "review_band", 1,
                       "Upper edge of the review band in anomaly-score units; -1 = model card value.",
                       _SCORE_RANGE),
    )

    @classmethod
    def extra_specs(cls) -> list[ParamSpec]:
        return [ParamSpec("publish_heatmap", True, "Publish anomaly/heatmap (32FC1) while subscribed.")]

    def create_outputs(self) -> None:
        self.heatmap_pub = FramePublisher(self, self.HEATMAP_TOPIC, depth=2)

    def publish_extras(self, header: Header, frame: np.ndarray, result: dict, extras: dict) -> None:
        amap = extras.get("map")
        if amap is None or not self.p["publish_heatmap"] or self.heatmap_pub.subscription_count() == 0:
            return
        self.heatmap_pub.publish(header, np.ascontiguousarray(amap, np.float32), "32FC1")
        self.diag.stats.incr("heatmaps")

    def draw_overlay(self, frame: np.ndarray, result: dict, extras: dict) -> np.ndarray:
        """Frame with the map blended in (colour scale: 0 .. 2x the image threshold)."""
        img = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else np.ascontiguousarray(frame)
        amap = extras.get("map")
        model = self.model
        if amap is not None and amap.shape[:2] == img.shape[:2] and model is not None:
            thr = float(model.thresholds.get("image", 0.0)) or float(amap.max()) or 1.0
            level = np.clip(amap / (2.0 * thr) * 255.0, 0, 255).astype(np.uint8)
            colour = cv2.applyColorMap(level, cv2.COLORMAP_JET)
            img = cv2.addWeighted(img, 0.6, colour, 0.4, 0.0)
        return super().draw_overlay(img, result, extras)


NODE_CLASS = AnomalyNode


def main(args: list[str] | None = None) -> int:
    return run_nodes([AnomalyNode], args)


if __name__ == "__main__":
    sys.exit(main())
