"""Sorter node: one decision per part, audit first, then the machines.

Thin wiring over ROS-free code: `core.fusion.Fuser` joins `inspector/result` and
`anomaly/result` by stamp and applies the policy and deadlines; `core.audit.AuditLog`
commits each decision before it is published on `sorter/decision` or queued for the PLC
actuators (`actuation/`); the robot bridge publishes a sort command (and pick pose) per part.
Parts are learnt from `camera/camera_info` (tiny, same stamp as the image) so a part whose
results never arrive still gets its fail-safe decision at the deadline.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from defect_perception.actuation.base import LogThrottle
from defect_perception.actuation.config import (
    ActuatorConfigError,
    build_plc_actuators,
    load_config,
    robot_configs,
)
from defect_perception.actuation.queue import Command
from defect_perception.actuation.robot import RobotConfig, sort_command
from defect_perception.core.audit import AuditLog
from defect_perception.core.fusion import (
    FAIL_SAFE_ACTIONS,
    Decision,
    Fuser,
    FusionConfig,
    FusionConfigError,
    window_from_conveyor,
)
from defect_perception.core.paths import resolve
from defect_perception.core.result import ResultError, dumps, make_result, parse_result, validate_result
from defect_perception.nodes.base import Diagnostics, ParamNode, ParamSpec, run_nodes

SOURCES = ("inspector", "anomaly")


def _check_sources(v) -> str | None:
    bad = [s for s in v if s not in SOURCES]
    if bad or not v:
        return f"sources={list(v)!r}: each must be one of {list(SOURCES)} and at least one given"
    return None


PARAMS = [
    ParamSpec("sources", ["inspector", "anomaly"], "Result sources to join (switch one off by omitting it).",
              check=_check_sources),
    ParamSpec("window_ms", 500.0, "Decision window after capture (ms); results later than this get the "
              "fail-safe decision. Ignored when conveyor_speed_mm_s and reject_distance_mm are set.",
              range=(1.0, 600000.0)),
    ParamSpec("conveyor_speed_mm_s", 0.0, "Conveyor speed (mm/s); with reject_distance_mm sets the window.",
              range=(0.0, 100000.0)),
    ParamSpec("reject_distance_mm", 0.0, "Distance camera -> reject station (mm).", range=(0.0, 100000.0)),
    ParamSpec("actuation_margin_ms", 20.0, "Time the PLC/valve needs, subtracted from the travel time (ms).",
              range=(0.0, 60000.0)),
    ParamSpec("deadline_base", "auto", "stamp: deadline = capture stamp + window (clocks synchronised); "
              "arrival: first message seen + window; auto: stamp, or arrival for stamps more than "
              "5 s off the clock (replayed recordings).", choices=("auto", "stamp", "arrival")),
    ParamSpec("fail_safe", "reject", "Decision for a part whose results are late, missing or malformed.",
              choices=FAIL_SAFE_ACTIONS),
    ParamSpec("review_as", "review", "What a source's review verdict counts as.",
              choices=("review", "reject", "pass")),
    ParamSpec("reject_min_sources", 1, "Sources that must reject for a reject (fewer => review).",
              range=(1, 2)),
    ParamSpec("learn_parts_from_camera", True, "Learn parts from camera/camera_info so missing results "
              "still get a decision.", read_only=True),
    ParamSpec("poll_period_ms", 5.0, "How often deadlines are checked (ms).", range=(1.0, 1000.0),
              read_only=True),
    ParamSpec("result_depth", 100, "Queue depth of the result subscriptions.", range=(1, 10000),
              read_only=True),
    ParamSpec("audit_db", "audit/sorter_audit.sqlite", "SQLite audit log (relative to the working dir).",
              read_only=True, check=lambda v: None if v else "audit_db must not be empty"),
    ParamSpec("audit_sync", "normal", "normal: survives a process kill; full: also a power cut (fsync).",
              choices=("normal", "full"), read_only=True),
    ParamSpec("save_reject_images", False, "Subscribe camera/image_raw and save rejected frames as PNG next "
              "to the audit log.", read_only=True),
    ParamSpec("image_ring", 30, "Recent frames kept for saving rejects.", range=(1, 1000), read_only=True),
    ParamSpec("actuators_config", "", "YAML file listing PLC/robot actuators (empty: none). Relative paths "
              "also resolve against the installed share directory.", read_only=True),
    ParamSpec("queue_dir", "", "Directory for the actuators' persistent queues (empty: next to audit_db).",
              read_only=True),
]


def _stamp_of(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class SorterNode(ParamNode):
    def __init__(self, **kwargs):
        super().__init__("sorter", PARAMS, **kwargs)
        self.fuser = Fuser(self._fusion_config())
        # rate-limited log lines of the sorter itself (audit duplicates); actuators have their own
        self._log_limit = LogThrottle(self._ros_log, 10.0)
        self._actuators_path, entries = self._actuator_entries()  # before any file is created
        self._closing = False
        # warm up the schema validator now, not on the first part (its import takes ~0.3 s)
        validate_result(make_result(stamp_ns=0, frame_id="camera", source="sorter", verdict="pass"))
        self._lock = threading.Lock()
        self.audit = AuditLog(self.p["audit_db"], self.p["audit_sync"])
        self._step_ms: dict[str, list[float]] = {"audit_commit": [], "publish": []}
        group = MutuallyExclusiveCallbackGroup()
        depth = self.p["result_depth"]
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.create_publisher(String, "sorter/decision", qos)
        self._subs = [
            self.create_subscription(String, f"{src}/result",
                                     lambda m, s=src: self._on_result(m, s), qos, callback_group=group)
            for src in SOURCES]
        self._k: list[float] | None = None
        if self.p["learn_parts_from_camera"]:
            self._subs.append(self.create_subscription(CameraInfo, "camera/camera_info", self._on_info, qos,
                                                       callback_group=group))
        self._timer = self.create_timer(self.p["poll_period_ms"] / 1000.0, self._on_timer,
                                        callback_group=group)

        # reject images (optional): a ring of recent frames, written by a worker thread
        self._frames: OrderedDict[int, Image] = OrderedDict()
        self._want_image: OrderedDict[int, None] = OrderedDict()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="reject-images")
        self._img_dir = Path(self.p["audit_db"]).resolve().parent / "rejects"
        if self.p["save_reject_images"]:
            self._img_dir.mkdir(parents=True, exist_ok=True)
            self._subs.append(self.create_subscription(
                Image, "camera/image_raw", self._on_image,
                QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
                callback_group=MutuallyExclusiveCallbackGroup()))

        # actuators
        qdir = self.p["queue_dir"] or str(Path(self.p["audit_db"]).resolve().parent / "queues")
        self.actuators = build_plc_actuators(entries, qdir, on_ack=self._on_ack, on_log=self._ros_log)
        self.robots: list[tuple[RobotConfig, object, object]] = []
        self._robot_pending: dict[tuple[str, int], float] = {}
        for rc in robot_configs(entries):
            cmd_pub = self.create_publisher(String, rc.topic, qos)
            pose_pub = self.create_publisher(PoseStamped, rc.pose_topic, qos)
            self.robots.append((rc, cmd_pub, pose_pub))
            if rc.ack_topic:
                self._subs.append(self.create_subscription(
                    String, rc.ack_topic, lambda m, r=rc: self._on_robot_ack(m, r), qos,
                    callback_group=group))
        for a in self.actuators:
            a.start()

        self.diag = Diagnostics(self, 1.0, extra=self._diag_extra)
        self.diag.level_fn = self._diag_level
        self._last_err_log = 0.0
        cfg = self.fuser.config
        self.get_logger().info(
            f"sorter: sources {list(cfg.sources)}, window {cfg.window_ms:.0f} ms ({cfg.deadline_base}), "
            f"fail-safe {cfg.fail_safe}, review_as {cfg.review_as}, audit {self.audit.path}, actuators "
            f"{[f'{a.kind}:{a.name}' for a in self.actuators] + [f'robot:{r[0].name}' for r in self.robots]}"
            + (f" from {self._actuators_path}" if self._actuators_path else ""))

    # ---------------------------------------------------------------- configuration
    def _actuator_entries(self) -> tuple[Path | None, list[dict]]:
        """The actuators_config file (resolved like model/camera paths: working directory, then
        the installed share directory) and its checked entries."""
        name = self.p["actuators_config"]
        if not name:
            return None, []
        path = resolve(name)
        if not path.is_file():
            tried = [Path(name).expanduser().absolute()]
            if path.absolute() != tried[0]:
                tried.append(path)
            raise ActuatorConfigError(f"actuators_config={name!r}: file not found (tried "
                                      + " and ".join(str(t) for t in tried) + ")")
        return path, load_config(path)

    def _ros_log(self, level: str, text: str) -> None:
        """LogCallback for the actuators (their loop thread) and the sorter's own throttle. One
        call site per severity: rclpy refuses a call site that changes its severity."""
        logger = self.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warning":
            logger.warning(text)
        else:
            logger.info(text)

    def _fusion_config(self, p: dict | None = None) -> FusionConfig:
        """The fusion policy for parameters `p` (default: the current ones); FusionConfigError
        names the parameters when they cannot work."""
        p = self.p if p is None else p
        window = p["window_ms"]
        if p["conveyor_speed_mm_s"] > 0 and p["reject_distance_mm"] > 0:
            try:
                window = window_from_conveyor(p["conveyor_speed_mm_s"], p["reject_distance_mm"],
                                              p["actuation_margin_ms"])
            except FusionConfigError as e:
                raise FusionConfigError(
                    f"conveyor_speed_mm_s={p['conveyor_speed_mm_s']:g}, reject_distance_mm="
                    f"{p['reject_distance_mm']:g}, actuation_margin_ms={p['actuation_margin_ms']:g}: {e}") \
                    from None
        return FusionConfig(sources=tuple(p["sources"]), window_ms=window, fail_safe=p["fail_safe"],
                            review_as=p["review_as"], reject_min_sources=min(p["reject_min_sources"],
                                                                             len(p["sources"])),
                            deadline_base=p["deadline_base"])

    def _validate(self, params: list) -> SetParametersResult:
        """Per-parameter checks (ParamNode), then the policy the change would give must work:
        e.g. conveyor settings that leave no time to decide are refused with the reason."""
        result = super()._validate(params)
        if not result.successful:
            return result
        new = {**self.p, **{prm.name: prm.value for prm in params
                            if prm.name in self._specs and prm.value is not None}}
        try:
            self._fusion_config(new)
        except FusionConfigError as e:
            self.get_logger().warning(f"refused parameter change: {e}")
            return SetParametersResult(successful=False, reason=str(e))
        return result

    def on_params_changed(self, names: list[str]) -> None:
        try:
            cfg = self._fusion_config()
        except FusionConfigError as e:  # refused in _validate already; kept as a last guard
            self.get_logger().error(f"policy not changed: {e}")
            return
        with self._lock:
            self.fuser.config = cfg

    # ---------------------------------------------------------------- inputs
    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_info(self, msg: CameraInfo) -> None:
        with self._lock:
            if any(msg.k):
                self._k = [float(x) for x in msg.k]
            self.fuser.on_part(_stamp_of(msg.header), self._now(), msg.header.frame_id or "camera")

    def _on_result(self, msg: String, source: str) -> None:
        t_arrival = time.perf_counter()
        topic = f"{self.get_namespace().rstrip('/')}/{source}/result"
        with self._lock:
            try:
                result = parse_result(msg.data, topic)
            except ResultError as e:
                self.diag.stats.incr("malformed")
                self._throttled_error(f"malformed result: {e}")
                d = self.fuser.on_malformed(source, msg.data, str(e), self._now())
            else:
                d = self.fuser.on_result(source, result, self._now())
            if d is not None:
                self._emit(d, t_arrival)

    def _on_timer(self) -> None:
        with self._lock:
            now = self._now()
            for d in self.fuser.poll(now):
                self._emit(d, None)
            self._check_robot_timeouts()
        self._log_limit.flush()

    # ---------------------------------------------------------------- decision
    def _emit(self, d: Decision, t_last: float | None) -> None:
        """Audit (commit) -> publish -> actuators. Called with the lock held."""
        now = self._now()
        lat = {"e2e": (now - d.stamp_ns) / 1e6}
        if t_last is not None:
            lat["decision"] = (time.perf_counter() - t_last) * 1000.0
        result = d.to_result(lat)
        t0 = time.perf_counter()
        first = self.audit.record_decision(result, action=d.action, reason_code=d.reason_code,
                                           fail_safe=d.fail_safe, sources=d.sources_summary(),
                                           decision_ms=lat.get("decision"))
        t1 = time.perf_counter()
        if not first:  # a replay into an existing audit file: both decisions are kept, say so
            self.diag.stats.incr("audit_duplicate_stamps")
            self._log_limit("audit_duplicate", "warning", (
                f"part {d.stamp_ns}: audit log {self.audit.path} already holds a decision for this stamp "
                f"(same recording replayed into an existing audit file?); the first one stays in table "
                f"'decisions', this one ({d.action}) is in 'duplicate_decisions'"))
        try:
            self.pub.publish(String(data=dumps(result)))
        except Exception:  # only at shutdown: the decision is audited and still goes to the PLC
            if not self._closing:
                raise
        t2 = time.perf_counter()
        for step, ms in (("audit_commit", (t1 - t0) * 1000.0), ("publish", (t2 - t1) * 1000.0)):
            samples = self._step_ms[step]
            samples.append(ms)
            del samples[:-1000]
        total = (time.perf_counter() - t_last) * 1000.0 if t_last is not None else None
        self.diag.stats.add(total)
        self.diag.stats.incr(f"decision_{d.action}")
        if d.fail_safe:
            self.diag.stats.incr("fail_safe")
            self._throttled_error(f"part {d.stamp_ns}: {d.reason}")
        if d.action == "stop-line":
            self.get_logger().error(f"STOP LINE requested for part {d.stamp_ns}: {d.reason}")
        for a in self.actuators:
            a.submit(Command(stamp_ns=d.stamp_ns, action=d.action, bin=a.bins[d.action],
                             reason=d.reason_code))
        for rc, cmd_pub, pose_pub in self.robots:
            if d.action in rc.send and not self._closing:
                self._send_robot(rc, cmd_pub, pose_pub, result, d.action)
        if d.action in ("reject", "stop-line") and self.p["save_reject_images"]:
            self._save_image(d.stamp_ns)

    def _throttled_error(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_err_log >= 1.0:
            self._last_err_log = now
            self.get_logger().warning(text)

    # ---------------------------------------------------------------- actuators
    def _on_ack(self, stamp_ns: int, actuator: str, status: str, detail: str, latency_ms) -> None:
        """Audit every actuator event. Refusals and evictions are logged (rate-limited, with
        the part) by the actuator itself and turn /diagnostics to ERROR (_diag_level)."""
        self.audit.record_ack(stamp_ns, actuator, status, detail, latency_ms)
        if status in ("refused", "evicted"):
            self.diag.stats.incr(f"{actuator}_{status}")

    def _send_robot(self, rc: RobotConfig, cmd_pub, pose_pub, result: dict, action: str) -> None:
        cmd = sort_command(result, action, rc, self._k)
        cmd_pub.publish(String(data=json.dumps(cmd)))
        if cmd["pick"] is not None:
            pose = PoseStamped()
            pose.header.frame_id = cmd["pick"]["frame_id"]
            pose.header.stamp.sec, pose.header.stamp.nanosec = divmod(cmd["stamp_ns"], 1_000_000_000)
            x, y, z = cmd["pick"]["position"]
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = x, y, z
            pose.pose.orientation.w = 1.0
            pose_pub.publish(pose)
        if rc.ack_topic:
            self._robot_pending[(rc.name, cmd["stamp_ns"])] = time.monotonic() + rc.ack_timeout_ms / 1000
        else:
            self.audit.record_ack(cmd["stamp_ns"], rc.name, "sent", f"bin {cmd['bin']}")

    def _on_robot_ack(self, msg: String, rc: RobotConfig) -> None:
        try:
            obj = json.loads(msg.data)
            stamp = int(obj["stamp_ns"] if isinstance(obj, dict) else obj)
            status = str(obj.get("status", "ack")) if isinstance(obj, dict) else "ack"
        except (ValueError, KeyError, TypeError):
            self.diag.stats.incr("robot_ack_malformed")
            self._throttled_error(f"{rc.ack_topic}: malformed acknowledge {msg.data[:80]!r} "
                                  "(expected {\"stamp_ns\": N, \"status\": \"done\"})")
            return
        with self._lock:
            if self._robot_pending.pop((rc.name, stamp), None) is not None:
                self.audit.record_ack(stamp, rc.name, status)

    def _check_robot_timeouts(self) -> None:
        now = time.monotonic()
        for key, due in list(self._robot_pending.items()):
            if due <= now:
                del self._robot_pending[key]
                self.diag.stats.incr("robot_ack_timeouts")
                self.audit.record_ack(key[1], key[0], "timeout", "no acknowledge from the robot")
                self._throttled_error(f"robot {key[0]}: no acknowledge for part {key[1]}")

    # ---------------------------------------------------------------- reject images
    def _on_image(self, msg: Image) -> None:
        stamp = _stamp_of(msg.header)
        with self._lock:
            if stamp in self._want_image:
                del self._want_image[stamp]
                self._writer.submit(self._write_image, stamp, msg)
                return
            self._frames[stamp] = msg
            while len(self._frames) > self.p["image_ring"]:
                self._frames.popitem(last=False)

    def _save_image(self, stamp: int) -> None:
        msg = self._frames.pop(stamp, None)
        if msg is not None:
            self._writer.submit(self._write_image, stamp, msg)
        else:  # the frame may still be on its way: save it when it arrives
            self._want_image[stamp] = None
            while len(self._want_image) > self.p["image_ring"]:
                self._want_image.popitem(last=False)

    def _write_image(self, stamp: int, msg: Image) -> None:
        import cv2

        from defect_perception.core.image_conv import image_to_numpy, to_bgr8

        try:
            arr = to_bgr8(image_to_numpy(msg, "camera/image_raw"), msg.encoding)
            path = self._img_dir / f"{stamp}.png"
            if not cv2.imwrite(str(path), arr):
                raise OSError(f"cv2.imwrite failed for {path}")
            self.audit.record_image(stamp, path)
        except Exception as e:  # a bad frame must not stop the sorter; say which one
            self.diag.stats.incr("image_save_errors")
            self.get_logger().error(f"could not save reject image for part {stamp}: {e}")

    # ---------------------------------------------------------------- diagnostics / shutdown
    def _diag_extra(self) -> dict:
        out = {f"fusion_{k}": v for k, v in self.fuser.counters.items()}
        out["pending_parts"] = self.fuser.pending
        for step, samples in self._step_ms.items():
            if samples:
                a = sorted(samples)
                out[f"{step}_p99_ms"] = f"{a[int(0.99 * (len(a) - 1))]:.2f}"
                out[f"{step}_max_ms"] = f"{a[-1]:.2f}"
        for a in self.actuators:
            for k, v in a.status().items():
                out[f"{a.name}_{k}"] = v
        out["robot_pending_acks"] = len(self._robot_pending)
        return out

    def _diag_level(self) -> tuple[int, str]:
        # a refused or evicted decision never reaches that machine: ERROR until the sorter restarts
        bad = [a for a in self.actuators if a.counters["refused"] or a.counters["evicted"]]
        if bad:
            return DiagnosticStatus.ERROR, "actuator queue full, decisions not delivered (see audit acks): " \
                + ", ".join(f"{a.name} ({a.counters['refused']} refused, {a.counters['evicted']} queued "
                            "passes evicted)" for a in bad)
        down = [a for a in self.actuators if not a.connected]
        if down:
            return DiagnosticStatus.WARN, "actuator outage (decisions queued): " + ", ".join(
                f"{a.name} ({a.last_error}, {len(a.queue)} queued)" for a in down)
        return DiagnosticStatus.OK, "ok"

    def close(self) -> None:
        """Decide whatever is pending (fail-safe), then stop the actuators (queues persist)."""
        with self._lock:
            self._closing = True
            for d in self.fuser.flush():
                self._emit(d, None)
        for a in self.actuators:
            a.close()
        self._writer.shutdown(wait=True)
        self.audit.close()


NODE_CLASS = SorterNode


def main(args: list[str] | None = None) -> int:
    # Hand the GIL over within 0.5 ms instead of 5 ms: the sorter's threads (executor, PLC
    # actuators, checkpointer) otherwise stall a decision's commit/publish for up to 5 ms each.
    sys.setswitchinterval(0.0005)
    return run_nodes([SorterNode], args)


if __name__ == "__main__":
    sys.exit(main())
