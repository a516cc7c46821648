"""frame_io: the in-process fast path (same array handed over, bounded queue, drops counted,
DDS only for external subscribers, each frame delivered once) and the plain DDS path."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from defect_perception.core.image_conv import ImageConversionError
from defect_perception.nodes.frame_io import FramePublisher, FrameSubscriber, header_from_ns, stamp_ns


class Collector:
    def __init__(self):
        self.frames: list[tuple[int, np.ndarray, str]] = []
        self.errors: list[tuple[int, Exception]] = []

    def on_frame(self, header, arr, enc):
        self.frames.append((stamp_ns(header), arr, enc))

    def on_error(self, header, exc):
        self.errors.append((stamp_ns(header), exc))


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture()
def pair(ros_context):
    """A camera-like and an inspector-like node in one context (one process)."""
    import rclpy

    made = []

    def make(depth=5, fast_path=None, spin=True):
        pub_node = rclpy.create_node("cam", namespace="/t_fio", context=ros_context)
        sub_node = rclpy.create_node("insp", namespace="/t_fio", context=ros_context)
        col = Collector()
        sub = FrameSubscriber(sub_node, "camera/image_raw", col.on_frame, col.on_error, depth=depth,
                              fast_path=fast_path)
        pub = FramePublisher(pub_node, "camera/image_raw", depth=depth, fast_path=fast_path)
        ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
        ex.add_node(pub_node)
        ex.add_node(sub_node)
        thread = threading.Thread(target=ex.spin, daemon=True)
        if spin:
            thread.start()
        made.append((ex, thread, pub_node, sub_node))
        return pub, sub, col, ex, thread

    yield make
    for ex, thread, *nodes in made:
        ex.shutdown(timeout_sec=2.0)
        if thread.is_alive():
            thread.join(timeout=2.0)
        for n in nodes:
            n.destroy_node()


def test_fast_path_hands_over_the_same_array_without_dds(pair):
    pub, sub, col, *_ = pair()
    frames = [np.random.default_rng(i).integers(0, 256, (120, 160, 3), np.uint8) for i in range(3)]
    for i, arr in enumerate(frames):
        assert pub.publish(header_from_ns(1000 + i, "camera"), arr, "bgr8") is None  # no message built
    assert wait_for(lambda: len(col.frames) == 3)
    for (stamp, got, enc), arr, i in zip(col.frames, frames, range(3), strict=True):
        assert stamp == 1000 + i and enc == "bgr8"
        assert np.shares_memory(got, arr) and np.array_equal(got, arr)
        assert not got.flags.writeable  # a consumer cannot scribble on the camera's frame
    assert pub.dds_publishes == 0 and sub.local_received == 3 and sub.drops == 0
    assert pub.subscription_count() >= 1


def test_fast_path_rejects_what_the_dds_path_rejects(pair):
    pub, *_ = pair()
    with pytest.raises(ImageConversionError, match="does not match encoding bgr8"):
        pub.publish(header_from_ns(1, "camera"), np.zeros((4, 4), np.uint8), "bgr8")


def test_slow_consumer_gets_a_bounded_queue_and_drops_are_counted(pair):
    pub, sub, col, ex, thread = pair(depth=3, spin=False)  # executor not spinning = a stuck consumer
    for i in range(10):
        pub.publish(header_from_ns(1 + i, "camera"), np.full((8, 8), i, np.uint8), "mono8")
    assert sub.drops == 7 and len(sub._queue) == 3
    thread.start()
    assert wait_for(lambda: len(col.frames) == 3)
    time.sleep(0.2)
    assert [s for s, *_ in col.frames] == [8, 9, 10]  # the newest frames survive, like KEEP_LAST
    assert [int(a[0, 0]) for _, a, _ in col.frames] == [7, 8, 9]


def test_bad_frame_message_reaches_on_error_through_the_fast_path(pair):
    pub, sub, col, *_ = pair()
    pub.publish_msg(Image(header=header_from_ns(77, "camera"), encoding="mono8"))  # empty: a bad frame
    assert wait_for(lambda: len(col.errors) == 1)
    assert col.errors[0][0] == 77 and not col.frames


def test_external_subscriber_gets_dds_and_local_one_still_receives_each_frame_once(pair, ros_context):
    import rclpy

    pub, sub, col, ex, _ = pair()
    outside: list[Image] = []
    rec = rclpy.create_node("recorder", namespace="/t_fio", context=ros_context)
    rec.create_subscription(Image, "camera/image_raw", outside.append,
                            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    ex.add_node(rec)
    try:
        assert wait_for(lambda: pub.pub.get_subscription_count() >= 2), "recorder never matched"
        arr = np.arange(64, dtype=np.uint8).reshape(8, 8)
        for i in range(5):
            pub.publish(header_from_ns(500 + i, "camera"), arr, "mono8")
            time.sleep(0.02)
        assert wait_for(lambda: len(outside) == 5 and len(col.frames) == 5)
        time.sleep(0.3)  # any duplicate from DDS would arrive by now
        assert [s for s, *_ in col.frames] == [500, 501, 502, 503, 504]
        assert pub.dds_publishes == 5 and sub.local_received == 5
        assert sub.duplicates == 5  # the DDS copies reached the local subscriber too, and were dropped
        assert bytes(outside[0].data) == arr.tobytes()
    finally:
        ex.remove_node(rec)
        rec.destroy_node()


def test_fast_path_off_goes_through_dds(pair):
    pub, sub, col, *_ = pair(fast_path=False)
    assert wait_for(lambda: pub.subscription_count() >= 1)
    arr = np.random.default_rng(0).integers(0, 65535, (10, 12), np.uint16)
    msg = pub.publish(header_from_ns(9, "camera"), arr, "mono16")
    assert isinstance(msg, Image)
    assert wait_for(lambda: len(col.frames) == 1)
    stamp, got, enc = col.frames[0]
    assert stamp == 9 and enc == "mono16" and np.array_equal(got, arr) and not np.shares_memory(got, arr)
    assert sub.local_received == 0 and pub.dds_publishes == 1


def test_transport_bench_smoke():
    """bench/transport.py runs (in-process paths, a few small frames) and reports sane numbers."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import transport
    finally:
        sys.path.pop(0)
    for fast in (True, False):
        r = transport.run_in_process(64, 64, "mono8", count=5, fps=50.0, fast_path=fast)
        assert r["delivered"] == 5 and r["drops"] == 0 and 0 <= r["p50_ms"] <= r["p99_ms"] < 1000
