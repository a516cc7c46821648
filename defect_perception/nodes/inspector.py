"""Inspector node: the distilled classifier / detector on every frame.

All behaviour (queue, fail-safe, live thresholds, hot swap, overlay, diagnostics) lives in
`vision_node.VisionNode`; this module only names the node and its topics.
Run: `inspector --ros-args --params-file config/line.yaml -r __ns:=/line`.
"""
from __future__ import annotations

import sys

from defect_perception.nodes.base import run_nodes
from defect_perception.nodes.vision_node import VisionNode


class InspectorNode(VisionNode):
    NODE_NAME = "inspector"
    SOURCE = "inspector"
    INPUT_TOPIC = "camera/image_raw"
    RESULT_TOPIC = "inspector/result"
    OVERLAY_TOPIC = "inspector/overlay"
    DEFAULT_MODEL = "models/deeppcb-student"
    TASKS = ("classification", "detection")


NODE_CLASS = InspectorNode


def main(args: list[str] | None = None) -> int:
    return run_nodes([InspectorNode], args)


if __name__ == "__main__":
    sys.exit(main())
