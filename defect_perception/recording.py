"""ROS-free rosbag2 writing with `rosbags`: used by `make-sample`, `record` and tests.

Bags are rosbag2 version 9 (Kilted) with the ROS2_KILTED typestore, so `ros2 bag info/play`
and the camera's rosbag source read them. mcap bags are chunk-compressed with zstd
(rosbag2's storage compression), which suits the near-binary DeepPCB frames well.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from defect_perception.sources.calibration import Calibration

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
TS = get_typestore(Stores.ROS2_KILTED)


def open_writer(path: str | Path, storage: str = "mcap", compress: bool = True) -> Writer:
    """An opened Writer; the folder must not exist yet (rosbag2 refuses to overwrite)."""
    path = Path(path)
    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r} not one of {', '.join(STORAGES)}")
    if path.exists():
        raise FileExistsError(f"bag folder {path} already exists; remove it or choose another -o")
    writer = Writer(path, version=9, storage_plugin=STORAGES[storage])
    if compress and storage == "mcap":
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    writer.open()
    return writer


def _header(stamp_ns: int, frame_id: str):
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return TS.types["std_msgs/msg/Header"](
        stamp=TS.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id)


def image_cdr(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "camera") -> bytes:
    arr = np.ascontiguousarray(arr)
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    msg = TS.types["sensor_msgs/msg/Image"](
        header=_header(stamp_ns, frame_id), height=arr.shape[0], width=arr.shape[1],
        encoding=encoding, is_bigendian=0, step=arr.shape[1] * ch * arr.itemsize,
        data=arr.reshape(-1).view(np.uint8))
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def camera_info_cdr(cal: Calibration, stamp_ns: int, frame_id: str = "camera") -> bytes:
    T = TS.types
    msg = T["sensor_msgs/msg/CameraInfo"](
        header=_header(stamp_ns, frame_id), height=cal.height, width=cal.width,
        distortion_model=cal.distortion_model, d=np.array(cal.d, np.float64),
        k=np.array(cal.k, np.float64), r=np.array(cal.r, np.float64), p=np.array(cal.p, np.float64),
        binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                  do_rectify=False))
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/CameraInfo"))


def string_cdr(text: str) -> bytes:
    return bytes(TS.serialize_cdr(TS.types["std_msgs/msg/String"](data=text), "std_msgs/msg/String"))
