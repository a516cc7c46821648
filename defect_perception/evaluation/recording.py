"""Read what the evaluation needs from a rosbag2 recording, without ROS: the image topic's
frames (order, header stamps), labels carried in the recording, and single frames for the
gallery. Uses the `rosbags` library (sqlite3 and mcap storages)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defect_perception.evaluation import EvaluationError
from defect_perception.evaluation.labels import Truth, truth_from_obj

IMAGE_TYPE = "sensor_msgs/msg/Image"
STRING_TYPE = "std_msgs/msg/String"


@dataclass
class Frame:
    index: int
    stamp_ns: int  # header stamp: the part key on the line
    encoding: str
    width: int
    height: int


@dataclass
class Recording:
    path: Path
    image_topic: str
    frames: list[Frame]
    label_topic: str | None = None
    labels: dict[int, Truth] = field(default_factory=dict)
    topics: dict[str, str] = field(default_factory=dict)  # topic -> msgtype

    @property
    def stamps(self) -> list[int]:
        return [f.stamp_ns for f in self.frames]


def _reader(path: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not path.exists():
        raise EvaluationError(f"recording {path} does not exist")
    if not path.is_dir() or not (path / "metadata.yaml").is_file():
        raise EvaluationError(f"recording {path} is not a rosbag2 folder (no metadata.yaml)")
    try:
        return AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
    except Exception as e:  # rosbags raises several reader error types
        raise EvaluationError(f"recording {path}: cannot open ({e})") from None


def _stamp(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def pick_image_topic(topics: dict[str, str], wanted: str | None, path: Path) -> str:
    """The image topic to replay: `wanted` if given (matched with or without namespace),
    else the only Image topic, else the one ending in image_raw."""
    images = sorted(t for t, ty in topics.items() if ty == IMAGE_TYPE)
    if wanted:
        cands = [t for t in topics if t == wanted or t.endswith("/" + wanted.lstrip("/"))]
        if not cands:
            raise EvaluationError(
                f"recording {path} has no topic {wanted!r} (image topics: {images or 'none'}; "
                f"all topics: {sorted(topics) or 'none'})")
        if topics[cands[0]] != IMAGE_TYPE:
            raise EvaluationError(f"recording {path}: topic {cands[0]} is {topics[cands[0]]}, "
                                  f"not {IMAGE_TYPE}")
        return cands[0]
    if not images:
        raise EvaluationError(f"recording {path} has no {IMAGE_TYPE} topic "
                              f"(topics: {sorted(topics) or 'none'})")
    if len(images) == 1:
        return images[0]
    raw = [t for t in images if t.endswith("image_raw")]
    if len(raw) == 1:
        return raw[0]
    raise EvaluationError(f"recording {path} has several image topics {images}; choose one "
                          f"with the camera's 'topic' parameter")


def open_recording(path: str | Path, image_topic: str | None = None,
                   label_topic: str | None = None) -> Recording:
    """Index the recording: every frame of the image topic in recorded order, plus labels
    from a String topic named *label* / *labels* (JSON objects with `label`, and `index`
    or `stamp_ns`; rows without either are matched by order)."""
    path = Path(path)
    with _reader(path) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        topic = pick_image_topic(topics, image_topic, path)
        conns = [c for c in reader.connections if c.topic == topic]
        frames = []
        for conn, _t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            frames.append(Frame(len(frames), _stamp(msg.header), msg.encoding, int(msg.width),
                                int(msg.height)))
        if not frames:
            raise EvaluationError(f"recording {path}: image topic {topic} has no messages")
        if label_topic is None:
            strings = sorted(t for t, ty in topics.items() if ty == STRING_TYPE
                             and t.rstrip("/").split("/")[-1] in ("label", "labels"))
            label_topic = strings[0] if strings else None
        labels: dict[int, Truth] = {}
        if label_topic is not None:
            if label_topic not in topics:
                raise EvaluationError(f"recording {path} has no label topic {label_topic!r}")
            lconns = [c for c in reader.connections if c.topic == label_topic]
            by_stamp = {f.stamp_ns: f.index for f in frames}
            for n, (conn, _t, raw) in enumerate(reader.messages(connections=lconns)):
                where = f"recording {path} topic {label_topic} message {n}"
                text = reader.deserialize(raw, conn.msgtype).data
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise EvaluationError(f"{where}: not valid JSON ({e.msg})") from None
                idx = obj.get("index")
                if idx is None and obj.get("stamp_ns") is not None:
                    idx = by_stamp.get(int(obj["stamp_ns"]))
                if idx is None and "index" not in obj and "stamp_ns" not in obj:
                    idx = n
                if idx is not None and 0 <= int(idx) < len(frames):
                    labels[int(idx)] = truth_from_obj(obj, where)
            if not labels:
                raise EvaluationError(f"recording {path}: labels on {label_topic} match no frame "
                                      f"of {topic}")
    return Recording(path, topic, frames, label_topic if labels else None, labels, topics)


def read_frames(path: str | Path, topic: str, indices: set[int]) -> dict[int, np.ndarray]:
    """Decode the frames at `indices` of `topic` (for the gallery) as bgr8 arrays."""
    from defect_perception.core.image_conv import ImageConversionError, image_to_numpy, to_bgr8

    out: dict[int, np.ndarray] = {}
    if not indices:
        return out
    last = max(indices)
    with _reader(Path(path)) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for i, (conn, _t, raw) in enumerate(reader.messages(connections=conns)):
            if i in indices:
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    arr = image_to_numpy(msg, context=f"{path}:{topic}#{i}")
                    out[i] = np.ascontiguousarray(to_bgr8(arr, msg.encoding))
                except ImageConversionError:
                    out[i] = np.zeros((64, 64, 3), np.uint8)  # corrupt frame: shown as black
            if i >= last:
                break
    return out
