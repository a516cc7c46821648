"""Replay images from a rosbag2 folder (sqlite3 or mcap), read with `rosbags` (no ROS tools).

One image topic is replayed (sensor_msgs/Image or CompressedImage). Frames keep the header
stamps they were recorded with, so a replay reproduces the original part keys; with
`restamp` the camera stamps them at publish time instead. When replaying in a loop the
original stamps are shifted by the recording's length per pass so part keys stay unique.
Labels are read from `<image topic's namespace>/label` (std_msgs/String JSON with
`stamp_ns`, `label`, `defect_types`) when the bag has that topic.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from defect_perception.core.image_conv import ImageConversionError, image_to_numpy
from defect_perception.sources.base import EndOfStream, Frame, FrameSource, Label, SourceError, register
from defect_perception.sources.convert import from_opencv

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
_TYPESTORE = None


def typestore():
    global _TYPESTORE
    if _TYPESTORE is None:
        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


def open_bag(uri: str | Path) -> Reader:
    """Open a rosbag2 folder (or the folder of a given .mcap/.db3 file); errors name the path."""
    path = Path(uri).expanduser()
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        path = path.parent
    if not path.exists():
        raise SourceError(f"rosbag source: bag {path} does not exist")
    if not (path / "metadata.yaml").is_file():
        raise SourceError(f"rosbag source: {path} is not a rosbag2 folder (no metadata.yaml)")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as e:  # rosbags raises several types for a broken bag
        raise SourceError(f"rosbag source: cannot read bag {path}: {e}") from None
    return reader


def stamp_of(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


@register("rosbag")
class RosbagSource(FrameSource):
    finite = True

    def __init__(self, uri: str, topic: str = "", restamp: bool = False, label_topic: str = "auto",
                 **_ignored):
        self.path = Path(uri).expanduser()
        self.reader = open_bag(self.path)
        images = {c.topic: c for c in self.reader.connections if c.msgtype in IMAGE_TYPES}
        available = ", ".join(f"{c.topic} [{c.msgtype}]" for c in self.reader.connections) or "none"
        if not topic:
            if len(images) != 1:
                self.reader.close()
                raise SourceError(f"rosbag source: bag {self.path} has {len(images)} image topics;"
                                  f" set the topic parameter (topics: {available})")
            topic = next(iter(images))
        if topic not in images:
            self.reader.close()
            raise SourceError(f"rosbag source: topic {topic} not found as an image topic in bag"
                              f" {self.path} (topics: {available})")
        self.topic = topic
        self.conn = images[topic]
        self.restamp = bool(restamp)
        self.labels = self._read_labels(label_topic)
        self.count = self.conn.msgcount
        self._max_stamp = 0
        self._first_stamp = 0
        self._pass = 0
        self.bad = 0
        self._times: list[int] = []
        self._iter = None
        self.rewind()
        self._pass = 0

    def _read_labels(self, label_topic: str) -> dict[int, Label]:
        if label_topic == "auto":
            label_topic = self.topic.rsplit("/", 1)[0] + "/label"
        conns = [c for c in self.reader.connections
                 if c.topic == label_topic and c.msgtype == "std_msgs/msg/String"]
        labels: dict[int, Label] = {}
        if not conns:  # (an empty connection list would mean "all topics" to rosbags)
            return labels
        for conn, _t, raw in self.reader.messages(connections=conns):
            try:
                d = json.loads(typestore().deserialize_cdr(raw, conn.msgtype).data)
                labels[int(d["stamp_ns"])] = Label(str(d["label"]), list(d.get("defect_types") or []))
            except (ValueError, KeyError, TypeError) as e:
                raise SourceError(f"rosbag source: bad label message on {label_topic} in {self.path}:"
                                  f" {e}") from None
        return labels

    def rewind(self) -> None:
        if self._iter is not None:  # next pass: shift stamps by the recording's length
            self._pass += 1
        self._iter = self.reader.messages(connections=[self.conn])
        self._index = 0

    def read(self) -> Frame:
        try:
            conn, t_ns, raw = next(self._iter)
        except StopIteration:
            raise EndOfStream(str(self.path)) from None
        i = self._index
        self._index += 1
        if self._pass == 0:
            self._times.append(t_ns)
        msg = typestore().deserialize_cdr(raw, conn.msgtype)
        stamp = stamp_of(msg)
        label = self.labels.get(stamp)
        if self._pass == 0:
            self._max_stamp = max(self._max_stamp, stamp)
            if i == 0:
                self._first_stamp = stamp
        out_stamp = None if (self.restamp or stamp == 0) else stamp + self._pass * self._loop_shift()
        name = f"{self.path}:{self.topic}#{i}"
        try:
            if conn.msgtype.endswith("CompressedImage"):
                arr = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
                if arr is None:
                    raise ImageConversionError(f"{name}: cannot decode {msg.format!r} image")
                arr, enc = from_opencv(arr)
            else:
                arr, enc = image_to_numpy(msg, context=name), msg.encoding
        except (ImageConversionError, ValueError) as e:
            self.bad += 1
            return Frame(None, getattr(msg, "encoding", "mono8") or "mono8", out_stamp, label, i, name,
                         t_ns, error=str(e))
        return Frame(arr, enc, out_stamp, label, i, name, t_ns)

    def _loop_shift(self) -> int:
        gaps = np.diff(self._times) if len(self._times) > 1 else np.array([1_000_000_000])
        return int(self._max_stamp - self._first_stamp + max(1, int(np.median(gaps))))

    def describe(self) -> str:
        lab = f", {len(self.labels)} labels" if self.labels else ""
        return f"rosbag {self.path} topic {self.topic} ({self.count} frames{lab})"

    def counters(self) -> dict[str, int]:
        return {"bad_frames": self.bad}

    def close(self) -> None:
        self.reader.close()
