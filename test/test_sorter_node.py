"""The sorter node as a real process over DDS, with a real Modbus PLC simulator.

One run injects every fault (late, out of order, duplicated, malformed, never-arriving
results) and checks: exactly one decision per part, each one at the PLC exactly once,
robot commands with a pick pose, reject images, the audit log. Another run SIGKILLs the
sorter mid-stream and checks that every decision it published is in the audit log.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from defect_perception.core.result import dumps, make_result

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from test_actuation_modbus import Plc, _free_port  # noqa: E402

NS = "/sorter_test"
K = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]


class Feeder:
    """The camera, inspector, anomaly and robot ends of the sorter, in the test process."""

    def __init__(self, ctx):
        import rclpy

        self.node = rclpy.create_node("feeder", namespace=NS, context=ctx)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        self.info = n.create_publisher(CameraInfo, "camera/camera_info", qos)
        self.image = n.create_publisher(
            Image, "camera/image_raw", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.res = {s: n.create_publisher(String, f"{s}/result", qos) for s in ("inspector", "anomaly")}
        self.robot_ack = n.create_publisher(String, "robot/ack", qos)
        self.decisions: list[dict] = []
        self.commands: list[dict] = []
        self.poses: list[PoseStamped] = []
        n.create_subscription(String, "sorter/decision",
                              lambda m: self.decisions.append(json.loads(m.data)), qos)
        n.create_subscription(String, "robot/sort_command",
                              lambda m: self.commands.append(json.loads(m.data)), qos)
        n.create_subscription(PoseStamped, "robot/pick_pose", self.poses.append, qos)

    def now(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def spin_until(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            self.ex.spin_once(timeout_sec=0.01)
        return pred()

    def wait_connected(self, timeout: float = 20.0, image: bool = False, robot: bool = False) -> bool:
        pubs = [self.info, *self.res.values()] + ([self.image, self.robot_ack] if image else [])
        topics = ["sorter/decision"] + (["robot/sort_command", "robot/pick_pose"] if robot else [])
        return self.spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs) and all(
            self.node.count_publishers(f"{NS}/{t}") > 0 for t in topics), timeout)

    def part(self, stamp: int) -> None:
        m = CameraInfo(k=K, width=640, height=480)
        m.header.frame_id = "camera"
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        self.info.publish(m)

    def result(self, source: str, stamp: int, verdict: str, **kw) -> None:
        kw.setdefault("score", 0.9)
        r = make_result(stamp_ns=stamp, frame_id="camera", source=source, verdict=verdict,
                        model={"name": f"{source}-m", "sha256": None}, **kw)
        self.res[source].publish(String(data=dumps(r)))

    def raw(self, source: str, text: str) -> None:
        self.res[source].publish(String(data=text))

    def frame(self, stamp: int) -> None:
        m = Image(height=48, width=64, encoding="bgr8", step=64 * 3)
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        m.data = np.full((48, 64, 3), 77, np.uint8).tobytes()
        self.image.publish(m)

    def close(self) -> None:
        self.ex.shutdown()
        self.node.destroy_node()


def _sorter(tmp: Path, *params: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "defect_perception.nodes.sorter", "--ros-args", "-r", f"__ns:={NS}",
            "-p", f"audit_db:={tmp / 'audit.sqlite'}", *[x for p in params for x in ("-p", p)]]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_faults_exactly_one_decision_per_part_plc_robot_images(tmp_path, ros_context):
    port = _free_port()
    plc = Plc(port)
    plc.start()
    cfg = tmp_path / "actuators.yaml"
    cfg.write_text(f"""actuators:
  - {{type: modbus, name: plc, port: {port}, heartbeat_ms: 100, ack_timeout_ms: 300, backoff_min_ms: 20}}
  - {{type: robot, name: arm, ack_topic: robot/ack, ack_timeout_ms: 400, send: [reject],
      working_distance_m: 0.3}}
""")
    proc = _sorter(tmp_path, "sources:=[inspector,anomaly]", "window_ms:=400.0", f"actuators_config:={cfg}",
                   "save_reject_images:=true")
    feed = Feeder(ros_context)
    try:
        assert feed.wait_connected(image=True, robot=True), "sorter did not come up"
        pre = feed.now()  # a previous, normal part: the sorter learns the calibration K from it
        feed.part(pre)
        feed.result("inspector", pre, "pass"); feed.result("anomaly", pre, "pass")  # noqa: E702
        assert feed.spin_until(lambda: len(feed.decisions) == 1, 10)
        feed.spin_until(lambda: False, 0.1)
        feed.decisions.clear()
        t = feed.now()
        s = [t + i * 1_000_000 for i in range(10)]
        for st in s:
            if st != s[3]:
                feed.part(st)
        feed.spin_until(lambda: False, 0.05)  # the camera is ahead of inference, as on the line
        box = {"box": [400.0, 240.0, 420.0, 280.0], "label": "short", "score": 0.8}
        feed.result("inspector", s[0], "pass"); feed.result("anomaly", s[0], "pass", anomaly_score=0.1)  # noqa: E702
        feed.result("inspector", s[1], "reject", label="short", detections=[box])
        feed.result("anomaly", s[1], "pass", anomaly_score=0.2)
        feed.result("inspector", s[2], "pass"); feed.result("anomaly", s[2], "review", anomaly_score=0.5)  # noqa: E702
        feed.result("anomaly", s[3], "pass", anomaly_score=0.1)  # out of order: before camera and inspector
        feed.part(s[3])
        feed.result("inspector", s[3], "pass")
        for _ in range(2):  # duplicated
            feed.result("inspector", s[4], "pass"); feed.result("anomaly", s[4], "pass")  # noqa: E702
        feed.result("inspector", s[5], "pass")
        # malformed, but its stamp is recoverable
        feed.raw("anomaly", json.dumps({"stamp_ns": s[5], "verdict": "maybe"}))
        # s[6]: camera only, results never arrive
        feed.result("inspector", s[7], "pass")  # anomaly comes late (after the deadline), below
        feed.raw("inspector", "{not json")  # garbage; s[8] lacks its inspector result
        feed.result("anomaly", s[8], "pass")
        feed.frame(s[9])
        feed.result("inspector", s[9], "reject", label="open"); feed.result("anomaly", s[9], "pass")  # noqa: E702
        assert feed.spin_until(lambda: any(d["stamp_ns"] == s[7] for d in feed.decisions), 10)
        feed.result("anomaly", s[7], "pass")  # late
        feed.spin_until(lambda: any(c["stamp_ns"] == s[1] for c in feed.commands), 5)
        feed.robot_ack.publish(String(data=json.dumps({"stamp_ns": s[1], "status": "done"})))
        assert feed.spin_until(lambda: len(feed.decisions) >= 10, 10)
        feed.spin_until(lambda: len(plc.parts()) >= 11, 10)
        feed.spin_until(lambda: False, 0.8)  # robot ack timeouts, any stray duplicates
    finally:
        feed.close()
        out = _stop(proc)
        parts = plc.parts()
        plc.close()
    assert proc.returncode == 0, out
    by = {d["stamp_ns"]: d for d in feed.decisions}
    assert len(feed.decisions) == 10 and sorted(by) == s, out  # exactly one decision per part
    verdicts = [by[x]["verdict"] for x in s]
    assert verdicts == ["pass", "reject", "review", "pass", "pass"] + ["reject"] * 5
    assert "malformed" in by[s[5]]["reason"] and "anomaly" in by[s[5]]["reason"]
    assert "missing at deadline" in by[s[6]]["reason"] and "missing" in by[s[8]]["reason"]
    assert by[s[1]]["detections"][0]["box"] == box["box"] and by[s[1]]["label"] == "short"
    assert by[s[1]]["latency_ms"]["decision"] < 50 and by[s[0]]["anomaly_score"] == 0.1
    # the PLC took every part once; rejects with the coil set
    assert sorted(p.stamp_ns for p in parts) == [pre, *s]
    assert all(p.reject_coil == (by[p.stamp_ns]["verdict"] == "reject") for p in parts if p.stamp_ns != pre)
    # robot: commands for rejects only, a pick pose from the box centre through K at 0.3 m
    assert sorted(c["stamp_ns"] for c in feed.commands) == [x for x in s if by[x]["verdict"] == "reject"]
    assert [c["pick"] is not None for c in feed.commands].count(True) == 1, [c["note"] for c in feed.commands]
    (pose,) = feed.poses
    assert pose.pose.position.x == pytest.approx(0.054) and pose.pose.position.y == pytest.approx(0.012)
    assert pose.pose.position.z == pytest.approx(0.3) and pose.header.frame_id == "camera"
    # audit log: every decision, PLC acks, robot ack/timeouts, the reject image
    con = sqlite3.connect(tmp_path / "audit.sqlite")
    assert con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 11
    acks = dict(con.execute("SELECT actuator || ':' || status, COUNT(*) FROM acks GROUP BY 1").fetchall())
    assert acks["plc:ack"] == 11 and acks["arm:done"] == 1 and acks["arm:timeout"] == 5
    (img,) = con.execute("SELECT path FROM images WHERE stamp_ns=?", (s[9],)).fetchone()
    con.close()
    assert Path(img).is_file() and Path(img).parent == tmp_path / "rejects"


def test_sigkill_loses_no_published_decision(tmp_path, ros_context):
    proc = _sorter(tmp_path, "sources:=[inspector]", "window_ms:=2000.0")
    feed = Feeder(ros_context)
    try:
        assert feed.wait_connected(), "sorter did not come up"
        # keep parts flowing until 100 decisions are back, however slow the machine is
        deadline, i = time.monotonic() + 90.0, 0
        while len(feed.decisions) < 100 and time.monotonic() < deadline:
            st = feed.now()
            feed.part(st)
            feed.result("inspector", st, "reject" if i % 7 == 0 else "pass")
            feed.ex.spin_once(timeout_sec=0.01)
            i += 1
        assert len(feed.decisions) >= 100, f"only {len(feed.decisions)} decisions for {i} parts in 90 s"
        proc.send_signal(signal.SIGKILL)  # mid-stream, no chance to clean up
        proc.wait(60)
        feed.spin_until(lambda: False, 0.5)  # collect whatever was published before the kill
    finally:
        feed.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    published = {d["stamp_ns"] for d in feed.decisions}
    assert len(published) >= 100
    con = sqlite3.connect(tmp_path / "audit.sqlite")
    stored = {r[0] for r in con.execute("SELECT stamp_ns FROM decisions")}
    con.close()
    assert published <= stored, f"{len(published - stored)} published decisions missing from the audit log"


def test_parameters_validated_live(tmp_path, ros_context):
    from defect_perception.nodes.sorter import NODE_CLASS

    node = NODE_CLASS(context=ros_context, parameter_overrides=[
        Parameter("audit_db", value=str(tmp_path / "a.sqlite")), Parameter("sources", value=["inspector"])])
    try:
        r = node.set_parameters([Parameter("fail_safe", value="drop")])[0]
        assert not r.successful and "fail_safe='drop'" in r.reason
        r = node.set_parameters([Parameter("sources", value=["inspector", "camera"])])[0]
        assert not r.successful and "inspector" in r.reason
        r = node.set_parameters([Parameter("audit_db", value="/tmp/other.sqlite")])[0]
        assert not r.successful  # read-only: needs a restart
        assert node.set_parameters([Parameter("fail_safe", value="stop-line")])[0].successful
        assert node.fuser.config.fail_safe == "stop-line"
        node.set_parameters([Parameter("conveyor_speed_mm_s", value=500.0),
                             Parameter("reject_distance_mm", value=400.0)])
        assert node.fuser.config.window_ms == pytest.approx(780.0)  # 800 ms travel - 20 ms margin
        # conveyor numbers that leave no time to decide: refused to the caller, not accepted and
        # then ignored with a log line only the sorter's console shows
        r = node.set_parameters([Parameter("reject_distance_mm", value=5.0)])[0]
        assert not r.successful and "no time to decide" in r.reason
        assert "conveyor_speed_mm_s=500, reject_distance_mm=5, actuation_margin_ms=20" in r.reason
        r = node.set_parameters([Parameter("actuation_margin_ms", value=900.0)])[0]
        assert not r.successful and "actuation margin 900" in r.reason
        assert node.p["reject_distance_mm"] == 400.0 and node.p["actuation_margin_ms"] == 20.0
        assert node.fuser.config.window_ms == pytest.approx(780.0)
        ok = node.set_parameters_atomically([Parameter("conveyor_speed_mm_s", value=1000.0),
                                             Parameter("actuation_margin_ms", value=100.0)])
        assert ok.successful and node.fuser.config.window_ms == pytest.approx(300.0)
    finally:
        node.close()
        node.destroy_node()


def test_actuators_config_resolves_like_other_paths_and_missing_names_the_paths(tmp_path, ros_context,
                                                                                monkeypatch):
    from defect_perception.actuation.config import ActuatorConfigError
    from defect_perception.core.paths import share_dir
    from defect_perception.nodes.sorter import NODE_CLASS

    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # not the checkout: config/actuators.yaml comes from the share directory
    common = [Parameter("audit_db", value=str(tmp_path / "a.sqlite")),
              Parameter("sources", value=["inspector"]), Parameter("queue_dir", value=str(tmp_path / "q"))]
    node = NODE_CLASS(context=ros_context, parameter_overrides=[
        *common, Parameter("actuators_config", value="config/actuators.yaml")])
    try:
        assert [(a.name, a.port) for a in node.actuators] == [("plc", 5020)]
        assert node._actuators_path == share_dir() / "config/actuators.yaml"
    finally:
        node.close()
        node.destroy_node()
    (tmp_path / "a.sqlite").unlink()
    with pytest.raises(ActuatorConfigError) as ei:
        NODE_CLASS(context=ros_context, parameter_overrides=[
            *common, Parameter("actuators_config", value="config/no_such_actuators.yaml")])
    msg = str(ei.value)
    assert "actuators_config='config/no_such_actuators.yaml': file not found" in msg
    assert str(work / "config/no_such_actuators.yaml") in msg
    assert str(share_dir() / "config/no_such_actuators.yaml") in msg
    assert not (tmp_path / "a.sqlite").exists()  # refused before the audit log was created


def test_replay_into_an_existing_audit_log_is_counted(tmp_path, ros_context):
    from defect_perception.nodes.sorter import NODE_CLASS

    db = tmp_path / "a.sqlite"
    stamp = 1_763_800_000_000_000_000
    for run in range(2):  # the same recording, twice into one audit file
        node = NODE_CLASS(context=ros_context, parameter_overrides=[
            Parameter("audit_db", value=str(db)), Parameter("sources", value=["inspector"])])
        try:
            result = make_result(stamp_ns=stamp, frame_id="camera", source="inspector",
                                 verdict=("pass", "reject")[run])
            node._on_result(String(data=dumps(result)), "inspector")
            dups = node.diag.stats.counters.get("audit_duplicate_stamps", 0)
        finally:
            node.close()
            node.destroy_node()
        assert dups == run
    con = sqlite3.connect(db)
    assert con.execute("SELECT verdict FROM decisions").fetchall() == [("pass",)]
    assert con.execute("SELECT stamp_ns, verdict FROM duplicate_decisions").fetchall() == [(stamp, "reject")]
    con.close()


def test_plc_unreachable_at_start_evictions_and_reconnect_are_reported(tmp_path, ros_context):
    """Real sorter process, PLC simulator started late, a queue of 2: the log names the PLC when
    it is unreachable from the start and when it is back (with what was queued); an evicted
    decision turns /diagnostics ERROR (it used to stay WARN) and is logged with its part."""
    port = _free_port()
    plc = Plc(port)
    cfg = tmp_path / "actuators.yaml"
    cfg.write_text(f"""actuators:
  - {{type: modbus, name: plc, port: {port}, queue_capacity: 2, heartbeat_ms: 100, backoff_min_ms: 20,
      backoff_max_ms: 100}}
""")
    proc = _sorter(tmp_path, "sources:=[inspector]", "window_ms:=2000.0", f"actuators_config:={cfg}")
    feed = Feeder(ros_context)
    diags: list[DiagnosticStatus] = []
    feed.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(
        st for st in m.status if st.name == f"{NS}/sorter"), 50)
    errors = lambda: [d for d in diags if d.level == DiagnosticStatus.ERROR]  # noqa: E731
    try:
        assert feed.wait_connected(), "sorter did not come up"
        assert feed.spin_until(lambda: diags and diags[-1].level == DiagnosticStatus.WARN, 10), diags[-1:]
        t = feed.now()
        s = [t + i * 1_000_000 for i in range(3)]
        for st, verdict in zip(s, ["pass", "pass", "reject"], strict=True):
            feed.part(st)
            feed.result("inspector", st, verdict)
        assert feed.spin_until(lambda: len(feed.decisions) == 3, 10)
        assert feed.spin_until(lambda: errors(), 10), [d.message for d in diags[-3:]]
        plc.start()
        assert feed.spin_until(lambda: len(plc.parts()) == 2, 15)
    finally:
        feed.close()
        out = _stop(proc)
        parts = plc.parts()
        plc.close()
    assert proc.returncode == 0, out
    assert "plc (0 refused, 1 queued passes evicted)" in errors()[0].message
    assert [p.stamp_ns for p in parts] == s[1:]  # the oldest pass was evicted to keep the reject
    lines = out.splitlines()
    unreachable = [ln for ln in lines if "unreachable at start" in ln]
    assert len(unreachable) == 1 and "WARN" in unreachable[0], out
    assert f"plc: unreachable at start: Modbus PLC 127.0.0.1:{port} (device 1)" in unreachable[0]
    evicted = [ln for ln in lines if "evicted queued pass" in ln]
    assert len(evicted) == 1 and "ERROR" in evicted[0] and f"part {s[0]}" in evicted[0], out
    back = [ln for ln in lines if f"plc: connected to Modbus PLC 127.0.0.1:{port}" in ln]
    assert len(back) == 1 and "unreachable since start; delivering 2 queued decision(s)" in back[0], out
    con = sqlite3.connect(tmp_path / "audit.sqlite")
    acks = con.execute("SELECT stamp_ns, status FROM acks ORDER BY id").fetchall()
    con.close()
    assert (s[0], "evicted") in acks and (s[1], "ack") in acks and (s[2], "ack") in acks
