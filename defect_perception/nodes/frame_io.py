"""Frame publish/subscribe used by every node that moves images.

Wrapping the Image topic here keeps the transport decision in one place: the camera
publishes through `FramePublisher`, the inspector and anomaly nodes receive through
`FrameSubscriber`, so an in-process hand-off (see docs/launch.md) can bypass DDS
serialisation for co-located nodes without touching the nodes themselves.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from defect_perception.core.image_conv import ImageConversionError, fill_image, image_to_numpy

FrameCallback = Callable[[Header, np.ndarray, str], None]
ErrorCallback = Callable[[Header, Exception], None]


def frame_qos(depth: int = 5) -> QoSProfile:
    """Reliable, bounded depth: the contract for camera/image_raw."""
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def stamp_ns(header: Header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def header_from_ns(ns: int, frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return h


class FramePublisher:
    def __init__(self, node: Node, topic: str, depth: int = 5):
        self.node = node
        self.pub = node.create_publisher(Image, topic, frame_qos(depth))
        self.topic = self.pub.topic_name

    def publish(self, header: Header, array: np.ndarray, encoding: str | None = None) -> Image:
        msg = fill_image(Image(header=header), array, encoding)
        self.pub.publish(msg)
        return msg

    def publish_msg(self, msg: Image) -> None:
        """Forward an already-built Image (e.g. read from a bag) unchanged."""
        self.pub.publish(msg)

    def subscription_count(self) -> int:
        return self.pub.get_subscription_count()


class FrameSubscriber:
    """Calls `on_frame(header, array, encoding)` with a zero-copy view of each frame, or
    `on_error(header, exc)` when the message does not describe a valid image, so the caller
    can still emit a (fail-safe) result for that stamp."""

    def __init__(self, node: Node, topic: str, on_frame: FrameCallback, on_error: ErrorCallback,
                 depth: int = 5, callback_group=None):
        self.on_frame, self.on_error = on_frame, on_error
        self.sub = node.create_subscription(Image, topic, self._cb, frame_qos(depth),
                                            callback_group=callback_group)
        self.topic = self.sub.topic_name

    def _cb(self, msg: Image) -> None:
        try:
            arr = image_to_numpy(msg, context=self.topic)
        except ImageConversionError as e:
            self.on_error(msg.header, e)
            return
        self.on_frame(msg.header, arr, msg.encoding)
