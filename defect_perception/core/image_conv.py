"""sensor_msgs/Image <-> numpy without cv_bridge (the PyPI cv-bridge breaks on numpy 2).

ROS-free: functions take any object with the Image fields (duck typing), so they are
tested without rclpy and used unchanged by the nodes.
"""
from __future__ import annotations

import sys

import numpy as np

# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgb8": (np.dtype(np.uint8), 3),
    "8UC3": (np.dtype(np.uint8), 3),
    "bgra8": (np.dtype(np.uint8), 4),
    "rgba8": (np.dtype(np.uint8), 4),
    "32FC1": (np.dtype(np.float32), 1),
}


class ImageConversionError(ValueError):
    """An Image message whose fields do not describe its data."""


def image_to_numpy(msg, context: str = "image") -> np.ndarray:
    """View an Image message as an HxW or HxWxC array (zero-copy when rows are unpadded
    and the byte order is native). `context` names the topic in error messages."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ImageConversionError(
            f"{context}: unsupported encoding {enc!r} (supported: {', '.join(ENCODINGS)})")
    dtype, channels = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"{context}: empty image ({w}x{h})")
    row_bytes = w * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"{context}: step {step} is smaller than width*channels*bytes = {row_bytes}")
    data = msg.data
    buf = data if isinstance(data, (bytes, bytearray, memoryview)) else memoryview(data)
    nbytes = len(buf) if not isinstance(buf, memoryview) else buf.nbytes
    if nbytes < step * (h - 1) + row_bytes:
        raise ImageConversionError(
            f"{context}: data has {nbytes} bytes, expected {step * h} for {w}x{h} {enc}"
            f" with step {step} (truncated frame)")
    raw = np.frombuffer(buf, dtype=np.uint8, count=min(nbytes, step * h))
    if raw.size < step * h:  # last row may lack its padding
        raw = np.concatenate([raw, np.zeros(step * h - raw.size, np.uint8)])
    rows = raw.reshape(h, step)[:, :row_bytes]
    big = bool(msg.is_bigendian)
    swap = dtype.itemsize > 1 and big != (sys.byteorder == "big")
    target = dtype.newbyteorder(">" if big else "<") if dtype.itemsize > 1 else dtype
    arr = rows.view(target) if rows.flags.c_contiguous else np.ascontiguousarray(rows).view(target)
    if swap:
        arr = arr.astype(dtype)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return arr.reshape(shape)


def fill_image(msg, arr: np.ndarray, encoding: str | None = None):
    """Fill an Image message from an array; returns msg. Guesses the encoding
    (mono8/mono16/bgr8/32FC1) when not given."""
    arr = np.ascontiguousarray(arr)
    if encoding is None:
        encoding = guess_encoding(arr)
    dtype, channels = ENCODINGS.get(encoding, (None, None))
    if dtype is None:
        raise ImageConversionError(f"unsupported encoding {encoding!r}")
    got_c = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.dtype != dtype or got_c != channels:
        raise ImageConversionError(
            f"array {arr.shape} {arr.dtype} does not match encoding {encoding}"
            f" ({channels} channel(s) of {dtype})")
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big" and dtype.itemsize > 1)
    msg.step = int(arr.shape[1] * channels * dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def guess_encoding(arr: np.ndarray) -> str:
    if arr.ndim == 2:
        return {np.uint8: "mono8", np.uint16: "mono16", np.float32: "32FC1"}.get(arr.dtype.type) or _bad(arr)
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return "bgr8"
    return _bad(arr)


def _bad(arr: np.ndarray) -> str:
    raise ImageConversionError(f"cannot pick an encoding for array {arr.shape} {arr.dtype}")


def to_bgr8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Normalise any supported frame to bgr8, the layout the models' preprocessing expects."""
    if encoding in ("bgr8", "8UC3"):
        return arr
    if encoding == "rgb8":
        return arr[..., ::-1]
    if encoding in ("bgra8",):
        return arr[..., :3]
    if encoding in ("rgba8",):
        return arr[..., 2::-1]
    if encoding in ("mono16", "16UC1"):
        arr = (arr >> 8).astype(np.uint8)
    elif encoding == "32FC1":
        arr = np.clip(arr * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=2)
