"""Inspector node in a real rclpy graph (in-process, one executor, real DDS pub/sub and
parameter services) with real ONNX models generated here."""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from polling import wait_until

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from defect_perception import load_model  # noqa: E402
from defect_perception.core.image_conv import fill_image  # noqa: E402
from defect_perception.core.result import parse_result  # noqa: E402
from defect_perception.inference.testing import make_classifier, make_detector  # noqa: E402
from defect_perception.nodes.frame_io import frame_qos, header_from_ns  # noqa: E402
from defect_perception.nodes.inspector import NODE_CLASS, InspectorNode  # noqa: E402

_ns = itertools.count()


class Line:
    """A test graph: the inspector under test plus a tester node that publishes frames,
    collects results and calls the inspector's parameter services."""

    def __init__(self, ctx, model_dir, **params):
        self.ctx = ctx
        self.ns = f"/t{next(_ns)}_{int(time.time() * 1000) % 100000}"
        overrides = [Parameter("model", value=str(model_dir))]
        overrides += [Parameter(k, value=v) for k, v in params.items()]
        self.node = InspectorNode(context=ctx, namespace=self.ns, parameter_overrides=overrides)
        self.tester = rclpy.create_node("tester", namespace=self.ns, context=ctx)
        self.pub = self.tester.create_publisher(Image, "camera/image_raw", frame_qos(100))
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.tester.create_subscription(String, "inspector/result", self._on_result, 200)
        self.executor = MultiThreadedExecutor(num_threads=3, context=ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.params = AsyncParameterClient(self.tester, f"{self.ns}/inspector")
        self.wait(lambda: self.pub.get_subscription_count() >= 1
                  and self.node.result_pub.get_subscription_count() >= 1, "discovery")
        self.stamp = 1_000_000_000

    def _on_result(self, msg: String) -> None:
        with self.lock:
            self.results.append(parse_result(msg.data, "inspector/result"))

    wait = staticmethod(wait_until)

    def publish(self, arr: np.ndarray | None = None, encoding: str | None = None,
                msg: Image | None = None) -> int:
        self.stamp += 1_000_000
        if msg is None:
            msg = fill_image(Image(), arr, encoding)
        msg.header = header_from_ns(self.stamp, "camera")
        self.pub.publish(msg)
        return self.stamp

    def result_for(self, stamp: int, timeout: float = 15.0) -> dict:
        self.wait(lambda: any(r["stamp_ns"] == stamp for r in self.results), f"result {stamp}", timeout)
        with self.lock:
            found = [r for r in self.results if r["stamp_ns"] == stamp]
        assert len(found) == 1, f"{len(found)} results for stamp {stamp}"
        return found[0]

    def set_params(self, **values):
        fut = self.params.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        self.wait(fut.done, "set_parameters")
        return fut.result().results

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.close()
        self.node.destroy_node()
        self.tester.destroy_node()
        self.thread.join(timeout=5.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "cls": make_classifier(root / "cls", name="cls-a"),
        "cls_b": make_classifier(root / "cls_b", name="cls-b", weights=(6.0, -3.0, -3.0),
                                 bias=(-3.0, 1.5, 1.5)),
        "det": make_detector(root / "det", name="det-a"),
        "nan": make_classifier(root / "nan", name="nan-model", nan=True),
        "slow": make_classifier(root / "slow", name="slow", size=(224, 224), slow_convs=6),
        "mismatch": make_classifier(root / "mismatch", name="mismatch", size=(32, 32), onnx_size=(48, 48)),
    }


@pytest.fixture()
def line(ros_context, models, request):
    lines = []

    def make(model="cls", **params):
        lines.append(Line(ros_context, models[model] if model in models else model, **params))
        return lines[-1]
    yield make
    for ln in lines:
        ln.close()


def gray(v: int, h: int = 64, w: int = 80) -> np.ndarray:
    return np.full((h, w), v, np.uint8)


def test_node_class_exported():
    assert NODE_CLASS is InspectorNode


def test_results_follow_contract_and_match_direct_call(line, models):
    ln = line("cls")
    direct = load_model(models["cls"], backend="onnxruntime")
    frames = [(gray(0), "mono8"), (gray(255), "mono8"), (gray(128), "mono8"),
              (np.dstack([gray(200)] * 3), "bgr8"), (np.dstack([gray(30)] * 3), "rgb8")]
    for arr, enc in frames:
        stamp = ln.publish(arr, enc)
        got = ln.result_for(stamp)
        want = direct(arr)
        assert got["source"] == "inspector" and got["frame_id"] == "camera"
        assert got["model"] == {"name": "cls-a", "sha256": direct.sha256}
        assert (got["verdict"], got["label"]) == (want["verdict"], want["label"]), enc
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert {"preprocess", "infer", "postprocess", "queue"} <= set(got["latency_ms"])
    verdicts = [r["verdict"] for r in ln.results]
    assert "pass" in verdicts and "reject" in verdicts


def test_detector_boxes_in_published_pixels(line, models):
    ln = line("det")
    arr = gray(255, 480, 640)
    got = ln.result_for(ln.publish(arr, "mono8"))
    want = load_model(models["det"])(arr)
    assert got["verdict"] == "reject" and got["detections"]
    assert [d["box"] for d in got["detections"]] == [d["box"] for d in want["detections"]]
    for d in got["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480


def test_live_threshold_change_flips_verdict(line):
    ln = line("cls")
    frame = gray(128)  # p(defect) ~ 0.67 with the tiny classifier
    assert ln.result_for(ln.publish(frame, "mono8"))["verdict"] == "reject"
    res = ln.set_params(reject_threshold=0.9)
    assert res[0].successful
    assert ln.result_for(ln.publish(frame, "mono8"))["verdict"] == "pass"
    res = ln.set_params(review_lo=0.6, review_hi=0.95)
    assert res[0].successful
    r = ln.result_for(ln.publish(frame, "mono8"))
    assert r["verdict"] == "review" and "review band" in r["reason"]
    bad = ln.set_params(reject_threshold=1.5)
    assert not bad[0].successful and "reject_threshold" in bad[0].reason
    assert ln.node.p["reject_threshold"] == 0.9


def test_roi_limits_the_inspected_area(line):
    ln = line("cls")
    frame = gray(0, 64, 128)
    frame[:, 64:] = 255
    assert ln.result_for(ln.publish(frame, "mono8"))["verdict"] == "reject"
    assert ln.set_params(roi=[0, 0, 64, 64])[0].successful
    assert ln.result_for(ln.publish(frame, "mono8"))["verdict"] == "pass"
    assert not ln.set_params(roi=[1, 2, 3])[0].successful


def test_hot_swap_without_losing_frames(line, models):
    ln = line("cls")
    stamps = [ln.publish(gray(0), "mono8")]
    assert ln.result_for(stamps[0])["model"]["name"] == "cls-a"
    assert ln.set_params(model=str(models["cls_b"]))[0].successful
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stamps.append(ln.publish(gray(0), "mono8"))
        time.sleep(0.02)
        if ln.results and ln.results[-1]["model"]["name"] == "cls-b":
            break
    for s in stamps:
        ln.result_for(s)
    names = [ln.result_for(s)["model"]["name"] for s in stamps]
    assert names[-1] == "cls-b" and names[0] == "cls-a"
    # cls-b inverts the verdict for a black frame: the new weights are really in use
    assert ln.result_for(stamps[-1])["verdict"] == "reject"
    # a path without a model card is refused with the reason; the running model stays
    res = ln.set_params(model="/nonexistent/model")
    assert not res[0].successful and "no model card" in res[0].reason


def test_hot_swap_to_corrupt_model_keeps_old(line, models, tmp_path):
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "model.json").write_text((models["cls"] / "model.json").read_text())
    (bad / "model.onnx").write_bytes(b"\x08\x07garbage not a protobuf")
    ln = line("cls")
    assert ln.set_params(model=str(bad))[0].successful
    ln.wait(lambda: ln.node.diag.stats.counters.get("model_load_failures", 0) == 1, "load failure")
    assert "cannot load" in ln.node._model_error and "corrupt" in ln.node._model_error
    r = ln.result_for(ln.publish(gray(0), "mono8"))
    assert r["model"]["name"] == "cls-a" and r["verdict"] == "pass"


def test_bad_frames_get_fail_safe_with_reason(line):
    ln = line("cls", expected_size=[80, 64])
    msg = fill_image(Image(), gray(10), "mono8")
    msg.encoding = "yuv422"
    r = ln.result_for(ln.publish(msg=msg))
    assert r["verdict"] == "reject" and "yuv422" in r["reason"]
    msg = fill_image(Image(), gray(10), "mono8")
    msg.data = bytes(msg.data)[:100]
    r = ln.result_for(ln.publish(msg=msg))
    assert r["verdict"] == "reject" and "truncated" in r["reason"]
    r = ln.result_for(ln.publish(gray(10, 64, 81), "mono8"))
    assert r["verdict"] == "reject" and "expected_size" in r["reason"]
    assert ln.set_params(fail_safe_verdict="review")[0].successful
    msg = fill_image(Image(), gray(10), "mono8")
    msg.height = 0
    r = ln.result_for(ln.publish(msg=msg))
    assert r["verdict"] == "review" and "empty" in r["reason"]
    r = ln.result_for(ln.publish(gray(0), "mono8"))
    assert r["verdict"] == "pass" and r["reason"] is None  # the node is still healthy


def test_nan_outputs_fail_safe(line):
    ln = line("nan")
    r = ln.result_for(ln.publish(gray(0), "mono8"))
    assert r["verdict"] == "reject" and "NaN" in r["reason"] and "logits" in r["reason"]
    assert r["model"]["name"] == "nan-model"


@pytest.mark.parametrize("model, expect", [("mismatch", "does not match the card"),
                                           ("/nonexistent/model", "model card not found")])
def test_unusable_model_at_start_fails_safe(line, model, expect):
    ln = line(model)
    r = ln.result_for(ln.publish(gray(0), "mono8"))
    assert r["verdict"] == "reject" and "no model loaded" in r["reason"] and expect in r["reason"]


def test_backpressure_one_result_per_frame(line):
    # 200 frames/s against a model that needs ~15 ms per frame even on an idle machine; the subscription's QoS
    # depth covers the burst so DDS itself drops nothing (see docs/inspector.md)
    ln = line("slow", queue_depth=2, input_depth=30, diagnostics_period=0.1)  # diagnostics read concurrently
    ln.result_for(ln.publish(gray(0, 160, 160), "mono8"))  # warm-up
    stamps = []
    for _ in range(25):
        stamps.append(ln.publish(gray(0, 160, 160), "mono8"))
        time.sleep(0.005)
    ln.wait(lambda: len(ln.results) >= 26, "all results", timeout=30)
    time.sleep(0.3)
    got = [r["stamp_ns"] for r in ln.results[1:]]
    assert sorted(got) == stamps, "exactly one result per frame"
    skipped = [r for r in ln.results if r["reason"] and r["reason"].startswith("skipped")]
    assert skipped and all(r["verdict"] == "review" for r in skipped)
    assert ln.node.diag.stats.counters["skipped"] == len(skipped)
    assert len(skipped) < 25  # the queue is served, not flushed


def test_overlay_only_when_subscribed_and_diagnostics(line):
    ln = line("det", diagnostics_period=0.2)
    ln.result_for(ln.publish(gray(255, 120, 160), "mono8"))
    assert ln.node.diag.stats.counters.get("overlays", 0) == 0  # nobody watching: nothing drawn
    overlays, diags = [], []
    ln.tester.create_subscription(Image, "inspector/overlay", overlays.append, frame_qos(5))
    ln.tester.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    ln.wait(lambda: ln.node.overlay_pub.subscription_count() >= 1, "overlay subscriber")
    ln.result_for(ln.publish(gray(255, 120, 160), "mono8"))
    ln.wait(lambda: overlays, "overlay")
    assert (overlays[0].encoding, overlays[0].width, overlays[0].height) == ("bgr8", 160, 120)
    ln.wait(lambda: any(s.name.endswith("inspector") for d in diags for s in d.status), "diagnostics")
    status = next(s for d in diags for s in d.status if s.name.endswith("inspector"))
    kv = {v.key: v.value for v in status.values}
    assert kv["backend"] == "onnxruntime" and "tensorrt" in kv["backend_reason"].lower()
    assert kv["model"] == "det-a"


def test_in_process_fast_path_frames_get_results(line):
    from defect_perception.nodes.frame_io import FramePublisher

    ln = line("cls")
    fp = FramePublisher(ln.tester, "camera/image_raw", depth=10)
    ln.wait(lambda: fp.subscription_count() >= 1, "fast-path discovery")
    ln.stamp += 1_000_000
    fp.publish(header_from_ns(ln.stamp, "camera"), gray(255), "mono8")
    assert ln.result_for(ln.stamp)["verdict"] == "reject"


def test_inspector_process_starts_answers_and_stops_cleanly(ros_context, models):
    import os
    import signal
    import subprocess
    import sys

    ns = f"/proc{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "defect_perception.nodes.inspector", "--ros-args",
                             "-p", f"model:={models['cls']}", "-r", f"__ns:={ns}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = rclpy.create_node("proc_tester", namespace=ns, context=ros_context)
    results = []
    node.create_subscription(String, "inspector/result", lambda m: results.append(parse_result(m.data)), 10)
    pub = node.create_publisher(Image, "camera/image_raw", frame_qos(10))
    ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
    ex.add_node(node)
    thread = threading.Thread(target=ex.spin, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and (pub.get_subscription_count() < 1 or node.count_publishers(
                f"{ns}/inspector/result") < 1):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        msg = fill_image(Image(), gray(255), "mono8")
        msg.header = header_from_ns(7_000_000_001, "camera")
        pub.publish(msg)
        while time.monotonic() < end and not results:
            time.sleep(0.02)
        assert results and results[0]["stamp_ns"] == 7_000_000_001 and results[0]["verdict"] == "reject"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "cls-a" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ex.shutdown(timeout_sec=2.0)
        node.destroy_node()
        thread.join(timeout=5)


def test_line_yaml_inspector_section_is_accepted(ros_context, models, tmp_path):
    """The shipped file works as a plain --params-file for a node in any namespace."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "config" / "line.yaml").read_text()
    assert "/**/inspector:" in text and "    queue_depth: 4 " in text
    cfg = tmp_path / "line.yaml"  # the shipped values equal the defaults: change one to see it applied
    cfg.write_text(text.replace("    queue_depth: 4 ", "    queue_depth: 3 ", 1))
    node = InspectorNode(context=ros_context, namespace="/cfgtest", cli_args=[
        "--ros-args", "--params-file", str(cfg), "-p", f"model:={models['cls']}"])
    try:
        assert node.p["queue_depth"] == 3 and list(node.p["roi"]) == [0, 0, 0, 0]
        assert node.model is not None and node.model.name == "cls-a"
    finally:
        node.close()
        node.destroy_node()


def test_live_tiling_change(line, tmp_path):
    d = make_classifier(tmp_path / "tiled", name="tiled", tiling={"tile": 32, "overlap": 0})
    ln = line(str(d))
    frame = gray(0, 128, 128)
    frame[64:128, 0:64] = 255  # a quarter of the frame: four 32-px tiles, one 64-px tile
    r = ln.result_for(ln.publish(frame, "mono8"))
    assert r["verdict"] == "reject" and len(r["detections"]) == 4
    assert ln.set_params(tiling_enable=False)[0].successful
    assert ln.result_for(ln.publish(frame, "mono8"))["verdict"] == "pass"
    assert ln.set_params(tiling_enable=True, tile=64, tile_overlap=0)[0].successful
    r = ln.result_for(ln.publish(frame, "mono8"))
    assert [d["box"] for d in r["detections"]] == [[0.0, 64.0, 64.0, 128.0]]


def test_template_model_uses_the_template_parameter(line, tmp_path):
    import cv2

    d = make_detector(tmp_path / "tpl", name="tpl-det", size=(64, 64), template=True)
    ln = line(str(d))
    r = ln.result_for(ln.publish(gray(0, 64, 64), "mono8"))
    assert r["verdict"] == "reject" and "needs the aligned defect-free template" in r["reason"]
    cv2.imwrite(str(tmp_path / "board.png"), gray(0, 64, 64))
    assert not ln.set_params(template=str(tmp_path / "nope.png"))[0].successful
    assert ln.set_params(template=str(tmp_path / "board.png"))[0].successful
    r = ln.result_for(ln.publish(gray(0, 64, 64), "mono8"))
    assert r["reason"] is None and r["detections"]


class _LogSpy:
    """Wraps a node's rclpy logger and keeps the error lines (not forwarded: rclpy keys its
    throttle/once filters by call site, which a forwarding wrapper would merge)."""

    def __init__(self, real):
        self.real, self.errors = real, []

    def error(self, msg, **kw):
        self.errors.append(msg)
        return True

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("model, params, advice, not_advice", [
    # TensorRT is not installed on this machine: the backend, not the model, is at fault
    ("cls", {"backend": "tensorrt"}, "set the 'backend' parameter to auto or onnxruntime",
     "'model' parameter"),
    ("/nonexistent/model", {}, "set the 'model' parameter", "'backend' parameter"),
])
def test_load_error_advice_names_the_parameter_at_fault(line, monkeypatch, model, params, advice, not_advice):
    from defect_perception.inference import tensorrt_backend

    if params.get("backend") == "tensorrt" and tensorrt_backend.status()[0]:
        pytest.skip("TensorRT usable here: backend tensorrt loads")
    spies: dict = {}
    real_get_logger = InspectorNode.get_logger
    monkeypatch.setattr(InspectorNode, "get_logger",
                        lambda self: spies.setdefault(id(self), _LogSpy(real_get_logger(self))))
    ln = line(model, **params)
    errors = [m for s in spies.values() for m in s.errors if "cannot load model" in m]
    assert len(errors) == 1, errors
    assert advice in errors[0] and not_advice not in errors[0]
    if params:
        assert "restart" in errors[0] and "BackendUnavailable" in errors[0]
    r = ln.result_for(ln.publish(gray(0), "mono8"))
    assert r["verdict"] == "reject" and "no model loaded" in r["reason"]
