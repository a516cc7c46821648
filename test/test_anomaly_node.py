"""Anomaly node in a real rclpy graph (in-process executor, real DDS pub/sub, parameter
services) running a real generated ONNX anomaly model."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from polling import wait_until

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from test_anomaly_helpers import make_anomaly_onnx  # noqa: E402

from defect_perception.core.image_conv import fill_image, image_to_numpy  # noqa: E402
from defect_perception.core.result import parse_result  # noqa: E402
from defect_perception.nodes.anomaly import NODE_CLASS, AnomalyNode  # noqa: E402
from defect_perception.nodes.frame_io import frame_qos, header_from_ns, stamp_ns  # noqa: E402


@pytest.fixture()
def graph(ros_context, tmp_path):
    model = make_anomaly_onnx(tmp_path / "toy", review_band=[0.3, 0.5])
    ns = f"/anom{int(time.time() * 1000) % 100000}"
    node = AnomalyNode(context=ros_context, namespace=ns,
                       parameter_overrides=[Parameter("model", value=str(model))])
    tester = rclpy.create_node("tester", namespace=ns, context=ros_context)
    g = type("Graph", (), {})()
    g.node, g.tester, g.results, g.heatmaps, g.overlays = node, tester, [], [], []
    g.lock = threading.Lock()
    g.pub = tester.create_publisher(Image, "camera/image_raw", frame_qos(50))

    def on_result(msg):
        with g.lock:
            g.results.append(parse_result(msg.data, "anomaly/result"))

    def on_heat(msg):
        with g.lock:
            g.heatmaps.append((stamp_ns(msg.header), msg.encoding, image_to_numpy(msg).copy()))

    tester.create_subscription(String, "anomaly/result", on_result, 50)
    g.heat_sub = tester.create_subscription(Image, "anomaly/heatmap", on_heat, frame_qos(50))
    tester.create_subscription(Image, "anomaly/overlay", lambda m: g.overlays.append(m), frame_qos(50))
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(node)
    ex.add_node(tester)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    g.params = AsyncParameterClient(tester, f"{ns}/anomaly")
    wait_until(lambda: g.pub.get_subscription_count() >= 1 and node.result_pub.get_subscription_count() >= 1
          and node.heatmap_pub.subscription_count() >= 1 and node.overlay_pub.subscription_count() >= 1,
          "discovery")
    yield g
    ex.shutdown(timeout_sec=2.0)
    node.close()
    node.destroy_node()
    tester.destroy_node()
    th.join(timeout=5.0)


def _publish(g, arr, stamp, encoding="mono8"):
    msg = fill_image(Image(), arr, encoding)
    msg.header = header_from_ns(stamp, "camera")
    g.pub.publish(msg)


def _result(g, stamp):
    wait_until(lambda: any(r["stamp_ns"] == stamp for r in g.results), f"result {stamp}")
    with g.lock:
        (r,) = [r for r in g.results if r["stamp_ns"] == stamp]
    return r


def test_node_class_exported():
    assert NODE_CLASS is AnomalyNode


def test_results_heatmaps_stamps_and_live_threshold(graph):
    g = graph
    blank = np.zeros((48, 64), np.uint8)
    blob = blank.copy()
    blob[10:20, 30:40] = 255
    stamps = {1_000_000_001: (blank, "pass"), 1_000_000_002: (blob, "reject"),
              1_000_000_003: (np.full((48, 64), 175, np.uint8), "review")}
    for s, (img, _) in stamps.items():
        _publish(g, img, s)
    for s, (_, verdict) in stamps.items():
        r = _result(g, s)
        assert r["verdict"] == verdict and r["source"] == "anomaly" and r["frame_id"] == "camera"
        assert r["anomaly_score"] is not None and r["model"]["name"] == "toy-anomaly"
    wait_until(lambda: len(g.heatmaps) >= 3, "3 heatmaps")
    with g.lock:
        heat = {s: (enc, m) for s, enc, m in g.heatmaps}
    assert set(heat) == set(stamps)                     # one heatmap per frame, same stamps
    enc, m = heat[1_000_000_002]
    assert enc == "32FC1" and m.shape == blob.shape
    y, x = np.unravel_index(np.argmax(m), m.shape)
    assert 10 <= y < 20 and 30 <= x < 40                 # heatmap peaks where the blob is

    wait_until(lambda: len(g.overlays) >= 3, "3 overlays")      # subscribed: bgr8 overlay per frame
    assert {stamp_ns(o.header) for o in g.overlays} == set(stamps)
    assert all(o.encoding == "bgr8" and (o.height, o.width) == blob.shape for o in g.overlays)

    fut = g.params.set_parameters([Parameter("image_threshold", value=2.0)])
    wait_until(fut.done, "set image_threshold")
    assert fut.result().results[0].successful
    _publish(g, blob, 1_000_000_004)
    assert _result(g, 1_000_000_004)["verdict"] == "pass"   # nothing reaches 2.0 any more


def test_bad_frame_gets_fail_safe_result_and_no_heatmap_without_subscriber(graph):
    g = graph
    g.tester.destroy_subscription(g.heat_sub)
    wait_until(lambda: g.node.heatmap_pub.subscription_count() == 0, "heatmap unsubscribed")
    bad = Image(height=10, width=10, encoding="mono8", step=10, data=b"\x00" * 20)  # truncated
    bad.header = header_from_ns(2_000_000_001, "camera")
    g.pub.publish(bad)
    r = _result(g, 2_000_000_001)
    assert r["verdict"] == "reject" and "bad frame" in r["reason"]
    _publish(g, np.zeros((48, 64), np.uint8), 2_000_000_002)
    _result(g, 2_000_000_002)
    assert not g.heatmaps                                # nobody subscribed: nothing published
    assert g.node.diag.stats.counters.get("heatmaps", 0) == 0
