"""The camera node as a real process, observed from an in-test rclpy node over DDS."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
from procs import stop
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Empty, String
from test_sources import write_bag

from defect_perception.core.image_conv import image_to_numpy


@contextmanager
def camera(ns: str, *params: str):
    """Run the camera node in its own process; always stopped (SIGINT, then kill)."""
    cmd = [sys.executable, "-m", "defect_perception.nodes.camera", "--ros-args", "-r", f"__ns:={ns}"]
    for p in params:
        cmd += ["-p", p]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        stop(proc, timeout=10)
        proc.stdout.close()
        proc.stderr.close()


class Probe:
    """In-test node collecting images, camera_info, labels and status of one namespace."""

    def __init__(self, ctx, ns: str):
        import rclpy

        self.node = rclpy.create_node("probe", context=ctx)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.images: list[Image] = []
        self.infos: list[CameraInfo] = []
        self.labels: list[dict] = []
        self.status: list[dict] = []
        self.times: list[float] = []
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(CameraInfo, f"{ns}/camera/camera_info", self.infos.append, qos)
        self.node.create_subscription(String, f"{ns}/camera/label",
                                      lambda m: self.labels.append(json.loads(m.data)), qos)
        self.node.create_subscription(
            String, f"{ns}/camera/status", lambda m: self.status.append(json.loads(m.data)),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.ns, self.qos, self.image_sub = ns, qos, None

    def _img(self, msg: Image) -> None:
        self.images.append(msg)
        self.times.append(time.monotonic())

    def _arm(self) -> None:
        """Subscribe to images only once the camera's other publishers are discovered, so with
        wait_subscribers the camera starts when camera_info/label are matched too."""
        if self.image_sub is None and all(self.node.count_publishers(f"{self.ns}/camera/{t}")
                                          for t in ("camera_info", "label", "status")):
            self.image_sub = self.node.create_subscription(Image, f"{self.ns}/camera/image_raw", self._img,
                                                           self.qos)

    def spin_until(self, cond, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._arm()
            if cond():
                return True
            self.ex.spin_once(timeout_sec=0.05)
        return cond()

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


@pytest.fixture()
def probe_factory(ros_context):
    made = []

    def make(ns):
        made.append(Probe(ros_context, ns))
        return made[-1]

    yield make
    for p in made:
        p.close()


def stamp(h) -> int:
    return h.stamp.sec * 1_000_000_000 + h.stamp.nanosec


def test_free_run_frames_stamps_encoding_camera_info(probe_factory, tmp_path):
    cal = tmp_path / "cam.yaml"
    cal.write_text("image_width: 96\nimage_height: 64\n"
                   "camera_matrix: {rows: 3, cols: 3, data: [120, 0, 47.5, 0, 121, 31.5, 0, 0, 1]}\n"
                   "distortion_model: plumb_bob\n"
                   "distortion_coefficients: {rows: 1, cols: 5, data: [0.01, 0, 0, 0, 0]}\n")
    probe = probe_factory("/cam1")
    with camera("/cam1", "source:=synthetic", "width:=96", "height:=64", "encoding:=mono16", "fps:=20.0",
                "max_frames:=6", "defect_every:=3", "frame_id:=cam_optical", f"camera_info_url:=file://{cal}",
                "on_end:=exit", "end_drain:=1.0", "wait_subscribers:=1") as proc:
        assert probe.spin_until(lambda: len(probe.images) >= 6 and len(probe.infos) >= 6
                                and len(probe.labels) >= 6, 15), proc.stderr.read() if proc.poll() else ""
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    probe.spin_until(lambda: probe.status, 3)
    assert len(probe.images) == 6  # max_frames, then end of stream
    assert [stamp(m.header) for m in probe.images] == [stamp(m.header) for m in probe.infos]
    assert len({stamp(m.header) for m in probe.images}) == 6
    img = probe.images[0]
    assert (img.encoding, img.width, img.height, img.header.frame_id) == ("mono16", 96, 64, "cam_optical")
    arr = image_to_numpy(img)
    assert arr.dtype == np.uint16 and arr.max() > 255  # mono8 pattern scaled by 257
    info = probe.infos[0]
    assert list(info.k) == [120, 0, 47.5, 0, 121, 31.5, 0, 0, 1] and info.d[0] == pytest.approx(0.01)
    assert [lab["label"] for lab in probe.labels] == ["pass", "pass", "reject"] * 2
    assert [lab["stamp_ns"] for lab in probe.labels] == [stamp(m.header) for m in probe.images]
    assert probe.status[-1] == {"event": "end_of_stream", "frames": 6}


def test_trigger_service_one_frame_per_call_and_param_refusal(probe_factory, ros_context):
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from std_srvs.srv import Trigger

    probe = probe_factory("/cam2")
    with camera("/cam2", "source:=synthetic", "width:=64", "height:=64", "encoding:=bgr8",
                "trigger_mode:=service") as proc:
        client = probe.node.create_client(Trigger, "/cam2/camera/trigger")
        assert client.wait_for_service(timeout_sec=15), "no ~/trigger service"
        assert probe.spin_until(lambda: probe.node.count_publishers("/cam2/camera/image_raw") > 0, 5)
        probe.spin_until(lambda: False, 0.5)
        assert probe.images == []  # triggered mode: nothing without a trigger
        for i in range(1, 4):
            fut = client.call_async(Trigger.Request())
            assert probe.spin_until(fut.done, 10)
            assert fut.result().success, fut.result().message
            assert probe.spin_until(lambda n=i: len(probe.images) >= n, 5)
        probe.spin_until(lambda: False, 0.5)
        assert len(probe.images) == 3
        assert probe.images[0].encoding == "bgr8" and image_to_numpy(probe.images[0]).shape == (64, 64, 3)

        params = AsyncParameterClient(probe.node, "/cam2/camera")
        assert params.wait_for_services(timeout_sec=10)
        fut = params.set_parameters([Parameter("fps", value=-5.0),
                                     Parameter("trigger_mode", value="sometimes"),
                                     Parameter("source", value="folder"),
                                     Parameter("fps", value=25.0)])
        assert probe.spin_until(fut.done, 10)
        results = fut.result().results
        assert not results[0].successful and "fps" in results[0].reason
        assert not results[1].successful and "'sometimes' is not one of" in results[1].reason
        assert not results[2].successful and "read-only" in results[2].reason
        assert results[3].successful
        fut = params.get_parameters(["fps", "trigger_mode"])
        assert probe.spin_until(fut.done, 10)
        assert [v.double_value for v in fut.result().values][:1] == [25.0]
        assert fut.result().values[1].string_value == "service"

        # topic triggers (PLC / photo-eye bridge): one frame per std_msgs/Empty, live switch
        trig = probe.node.create_publisher(Empty, "/cam2/camera/trigger", 10)
        fut = params.set_parameters([Parameter("trigger_mode", value="topic")])
        assert probe.spin_until(fut.done, 10) and fut.result().results[0].successful
        assert probe.spin_until(lambda: trig.get_subscription_count() > 0, 10)
        for _ in range(2):
            trig.publish(Empty())
        assert probe.spin_until(lambda: len(probe.images) >= 5, 10)
        probe.spin_until(lambda: False, 0.5)
        assert len(probe.images) == 5
        assert proc.poll() is None


def test_ack_pacing_and_exit_at_end_of_bag(probe_factory, tmp_path):
    write_bag(tmp_path / "bag", "mcap", n=4)
    probe = probe_factory("/cam3")
    ack = probe.node.create_publisher(String, "/cam3/test/ack", 10)
    acked = set()
    with camera("/cam3", "source:=rosbag", f"uri:={tmp_path / 'bag'}", "pacing:=max",
                "ack_topic:=test/ack", "ack_timeout:=1.0", "on_end:=exit", "wait_subscribers:=1") as proc:
        def step():
            for i, m in enumerate(probe.images):
                s = stamp(m.header)
                if s not in acked and i != 2:  # never acknowledge the 3rd frame
                    ack.publish(String(data=json.dumps({"stamp_ns": s, "verdict": "pass"})))
                    acked.add(s)
            return len(probe.images) >= 4

        assert probe.spin_until(step, 20), proc.stderr.read() if proc.poll() else ""
        assert proc.wait(timeout=10) == 0
    gaps = np.diff(probe.times)
    assert gaps[0] < 0.6 and gaps[1] < 0.6  # acknowledged: next frame at once
    assert gaps[2] >= 0.8  # third frame never acknowledged: the camera waited ack_timeout
    assert [stamp(m.header) for m in probe.images] == [5_000_000_000 + i * 100_000_000 for i in range(4)]
    probe.spin_until(lambda: probe.status and len(probe.labels) >= 4, 3)
    assert [lab["label"] for lab in probe.labels] == ["pass", "reject", "pass", "reject"]
    assert probe.status[-1] == {"event": "end_of_stream", "frames": 4}


def test_recorded_pacing_and_loop_keep_stamps_unique(probe_factory, tmp_path):
    stamps = write_bag(tmp_path / "bag", "sqlite3", n=4)  # recorded 100 ms apart
    probe = probe_factory("/cam6")
    with camera("/cam6", "source:=rosbag", f"uri:={tmp_path / 'bag'}", "pacing:=recorded", "speed:=0.5",
                "on_end:=loop", "wait_subscribers:=1"):
        assert probe.spin_until(lambda: len(probe.images) >= 7, 20)
    got = [stamp(m.header) for m in probe.images[:7]]
    assert got[:4] == stamps
    assert got[4:7] == [s + 400_000_000 for s in stamps[:3]]  # second pass: shifted by the bag length
    gaps = np.diff(probe.times[:4])
    assert 0.12 < float(np.median(gaps)) < 0.35  # 100 ms recorded at speed 0.5 = 200 ms


def test_folder_bad_frame_is_forwarded(probe_factory, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a1.png"), np.full((32, 48), 100, np.uint8))
    (tmp_path / "a2.png").write_bytes(b"garbage")
    cv2.imwrite(str(tmp_path / "a3.png"), np.full((32, 48), 200, np.uint8))
    probe = probe_factory("/cam4")
    with camera("/cam4", "source:=folder", f"uri:={tmp_path}", "fps:=20.0", "on_end:=exit",
                "end_drain:=0.5", "wait_subscribers:=1") as proc:
        assert probe.spin_until(lambda: len(probe.images) >= 3, 15)
        assert proc.wait(timeout=10) == 0
    probe.spin_until(lambda: len(probe.status) >= 2 and len(probe.infos) >= 3, 3)
    assert [m.width for m in probe.images] == [48, 0, 48]  # the corrupt file still makes a part
    assert len({stamp(m.header) for m in probe.infos}) == 3
    bad = [s for s in probe.status if s["event"] == "bad_frame"]
    assert len(bad) == 1 and "a2.png" in bad[0]["name"]


def test_missing_bag_fails_at_start_naming_it(tmp_path):
    missing = tmp_path / "no_such_bag"
    with camera("/cam5", "source:=rosbag", f"uri:={missing}") as proc:
        rc = proc.wait(timeout=20)
        err = proc.stderr.read()
    assert rc != 0
    assert str(missing) in err and "does not exist" in err


CRASHING_CAMERA = """
import sys

from defect_perception.launcher import composed
from defect_perception.nodes import camera
from defect_perception.sources.synthetic import SyntheticSource

_read, _calls = SyntheticSource.read, [0]


def read(self):  # a driver bug: the 4th read raises something no one expects
    _calls[0] += 1
    if _calls[0] == 4:
        raise ZeroDivisionError("simulated driver bug")
    return _read(self)


SyntheticSource.read = read
if sys.argv[1] == "composed":  # the --in-process line: camera (and others) in one process
    sys.exit(composed.main(["camera", *sys.argv[2:]]))
sys.exit(camera.main())
"""


@pytest.mark.parametrize("mode", ["process", "composed"])
def test_crashed_frame_thread_is_an_error_not_a_healthy_idle_camera(probe_factory, tmp_path, mode):
    """The frame thread used to die while the node stayed up reporting `ok`; in the in-process
    line the process must exit with code 1 too, so the launcher names the dead camera."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    script = tmp_path / "crashing_camera.py"
    script.write_text(CRASHING_CAMERA)
    probe = probe_factory("/cam7")
    diags: list = []
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(
        s for s in m.status if s.name == "/cam7/camera"), 50)
    args = ["-r", "__ns:=/cam7", "-p", "fps:=20.0", "-p", "width:=64", "-p", "height:=64",
            "-p", "wait_subscribers:=1"]
    proc = subprocess.Popen([sys.executable, str(script), mode, "--ros-args", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert probe.spin_until(lambda: proc.poll() is not None, 30), "the camera did not exit"
        probe.spin_until(lambda: any(s["event"] == "error" for s in probe.status), 3)
        rc = proc.returncode
    finally:
        stop(proc, timeout=10)
        out, err = proc.communicate()
    assert rc == 1, err  # a supervisor / the launcher sees a dead camera
    assert len(probe.images) == 3
    assert "camera frame thread crashed after 3 frames" in err
    assert "ZeroDivisionError: simulated driver bug" in err
    assert "Traceback" in err and "node camera crashed: ZeroDivisionError: simulated driver bug" in err
    errors = [d for d in diags if d.level == DiagnosticStatus.ERROR]
    assert errors and "frame thread crashed: ZeroDivisionError: simulated driver bug" in errors[0].message, \
        [(d.level, d.message) for d in diags]
    assert {"event": "error", "error": "ZeroDivisionError: simulated driver bug", "frames": 3} in probe.status
