"""sensor_msgs/Image <-> numpy: every encoding, padded rows, byte order, broken messages."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from defect_perception.core.image_conv import ImageConversionError, fill_image, image_to_numpy, to_bgr8
from defect_perception.sources.convert import convert, from_opencv

RNG = np.random.default_rng(0)
SAMPLES = {
    "mono8": RNG.integers(0, 256, (5, 7), dtype=np.uint8),
    "mono16": RNG.integers(0, 65536, (5, 7), dtype=np.uint16),
    "bgr8": RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    "rgb8": RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    "bgra8": RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8),
    "32FC1": RNG.random((5, 7), dtype=np.float32),
}


def msg():
    return SimpleNamespace(height=0, width=0, encoding="", is_bigendian=0, step=0, data=b"")


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
def test_round_trip_every_encoding(encoding):
    arr = SAMPLES[encoding]
    m = fill_image(msg(), arr, encoding)
    assert (m.height, m.width, m.encoding) == (5, 7, encoding)
    assert m.step == 7 * arr.itemsize * (1 if arr.ndim == 2 else arr.shape[2])
    back = image_to_numpy(m)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_real_ros_message_round_trip_is_zero_copy():
    from sensor_msgs.msg import Image

    arr = SAMPLES["bgr8"]
    m = fill_image(Image(), arr, "bgr8")
    view = image_to_numpy(m)
    np.testing.assert_array_equal(view, arr)
    raw = np.frombuffer(memoryview(m.data), np.uint8)
    assert np.shares_memory(view, raw)  # a view of the message buffer, not a copy


@pytest.mark.parametrize("encoding", ["mono8", "mono16", "bgr8", "rgb8"])
def test_padded_rows_are_ignored(encoding):
    arr = SAMPLES[encoding]
    row = arr.shape[1] * arr.itemsize * (1 if arr.ndim == 2 else 3)
    pad = 13
    raw = np.full((arr.shape[0], row + pad), 0xAB, np.uint8)
    raw[:, :row] = np.ascontiguousarray(arr).reshape(arr.shape[0], -1).view(np.uint8)
    m = SimpleNamespace(height=5, width=7, encoding=encoding, is_bigendian=0, step=row + pad,
                        data=raw.tobytes())
    np.testing.assert_array_equal(image_to_numpy(m), arr)


def test_padded_last_row_may_be_short():
    arr = SAMPLES["mono8"]
    raw = np.zeros((5, 10), np.uint8)
    raw[:, :7] = arr
    m = SimpleNamespace(height=5, width=7, encoding="mono8", is_bigendian=0, step=10,
                        data=raw.tobytes()[:-3])
    np.testing.assert_array_equal(image_to_numpy(m), arr)


def test_mono16_big_endian_flag():
    arr = np.array([[1, 256, 65535], [4660, 0, 513]], np.uint16)
    m = SimpleNamespace(height=2, width=3, encoding="mono16", is_bigendian=1, step=6,
                        data=arr.astype(">u2").tobytes())
    out = image_to_numpy(m)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.isnative
    little = SimpleNamespace(height=2, width=3, encoding="mono16", is_bigendian=0, step=6,
                             data=arr.astype("<u2").tobytes())
    np.testing.assert_array_equal(image_to_numpy(little), arr)
    assert fill_image(msg(), arr, "mono16").is_bigendian == int(sys.byteorder == "big")


def test_truncated_data_names_topic_and_sizes():
    m = fill_image(msg(), SAMPLES["bgr8"], "bgr8")
    m.data = m.data[:50]
    with pytest.raises(ImageConversionError, match=r"/line/camera/image_raw: data has 50 bytes.*truncated"):
        image_to_numpy(m, context="/line/camera/image_raw")


@pytest.mark.parametrize("change, match", [
    ({"encoding": "yuv422"}, "unsupported encoding 'yuv422'"),
    ({"step": 3}, "step 3 is smaller"),
    ({"height": 0, "width": 0}, "empty image"),
])
def test_inconsistent_messages_are_refused(change, match):
    m = fill_image(msg(), SAMPLES["mono8"], "mono8")
    for k, v in change.items():
        setattr(m, k, v)
    with pytest.raises(ImageConversionError, match=match):
        image_to_numpy(m)


def test_fill_image_refuses_mismatched_encoding():
    with pytest.raises(ImageConversionError, match="does not match encoding mono16"):
        fill_image(msg(), SAMPLES["mono8"], "mono16")


def test_to_bgr8_channel_order():
    rgb = SAMPLES["rgb8"]
    np.testing.assert_array_equal(to_bgr8(rgb, "rgb8"), rgb[..., ::-1])
    mono = SAMPLES["mono8"]
    assert to_bgr8(mono, "mono8").shape == (5, 7, 3)
    np.testing.assert_array_equal(to_bgr8(SAMPLES["mono16"], "mono16")[..., 0], SAMPLES["mono16"] >> 8)


@pytest.mark.parametrize("src", ["mono8", "mono16", "bgr8", "rgb8"])
@pytest.mark.parametrize("dst", ["mono8", "mono16", "bgr8", "rgb8"])
def test_camera_output_conversion(src, dst):
    out = convert(SAMPLES[src], src, dst)
    assert out.shape[:2] == (5, 7)
    assert out.dtype == (np.uint16 if dst == "mono16" else np.uint8)
    assert out.ndim == (2 if dst.startswith("mono") else 3)
    fill_image(msg(), out, dst)  # a valid message for the target encoding


def test_conversion_values():
    grey = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(convert(grey, "mono8", "mono16"), [[0, 128 * 257, 65535]])
    np.testing.assert_array_equal(convert(convert(grey, "mono8", "mono16"), "mono16", "mono8"), grey)
    bgr = np.zeros((1, 1, 3), np.uint8)
    bgr[0, 0] = (255, 0, 0)  # pure blue
    assert convert(bgr, "bgr8", "rgb8")[0, 0].tolist() == [0, 0, 255]
    assert convert(bgr, "bgr8", "mono8")[0, 0] == 29  # 0.114 * 255
    assert from_opencv(np.zeros((2, 2, 4), np.uint8))[1] == "bgr8"
