"""Camera node: publishes one frame per part from a frame source (defect_perception.sources).

Topics (relative to the namespace, default /line):
  camera/image_raw    sensor_msgs/Image (through FramePublisher)
  camera/camera_info  sensor_msgs/CameraInfo, the same stamp as the image
  camera/label        std_msgs/String JSON {"stamp_ns","label","defect_types","index"} when the
                      source has ground truth (folder sidecar, sample recording, synthetic defects)
  camera/status       std_msgs/String JSON events: end_of_stream, loop, bad_frame (transient local)
  camera/trigger      std_msgs/Empty in; one frame per message when trigger_mode=topic
  ~/trigger           std_srvs/Trigger; one frame per call when trigger_mode=service

Frames are produced on a worker thread, so a slow camera read or a wait for an
acknowledgement never blocks the executor (parameter services stay responsive). If that
thread dies of an unexpected error, the node logs the traceback, turns /diagnostics ERROR,
publishes {"event": "error"} on camera/status and, run as its own process (`main`), exits
with code 1 so the launcher / a supervisor sees a dead camera (docs/camera.md).
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback

import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Empty, String
from std_srvs.srv import Trigger

from defect_perception.core.paths import resolve
from defect_perception.nodes.base import Diagnostics, ParamNode, ParamSpec, run_nodes
from defect_perception.nodes.frame_io import FramePublisher, header_from_ns
from defect_perception.sources import EndOfStream, Frame, SourceError, make_source
from defect_perception.sources.calibration import (
    Calibration,
    CalibrationError,
    default_calibration,
    load_calibration,
)
from defect_perception.sources.convert import OUTPUT_ENCODINGS, convert
from defect_perception.sources.opencv import classify

SPECS = [
    ParamSpec("source", "synthetic", "Frame source.", choices=("opencv", "folder", "rosbag", "synthetic"),
              read_only=True),
    ParamSpec("uri", "", "opencv: device index, /dev/videoN, video file, stream URL or GStreamer pipeline;"
              " folder: image folder; rosbag: bag folder. Relative paths also resolve against the"
              " installed share directory.", read_only=True),
    ParamSpec("topic", "", "rosbag: image topic to replay (empty = the bag's only image topic).",
              read_only=True),
    ParamSpec("labels", "", "folder: labels CSV (empty = <folder>/labels.csv if present).", read_only=True),
    ParamSpec("restamp", False, "rosbag: stamp frames at publish time instead of keeping recorded stamps.",
              read_only=True),
    ParamSpec("encoding", "passthrough", "Published encoding (passthrough = as the source delivers).",
              choices=("passthrough",) + OUTPUT_ENCODINGS, read_only=True),
    ParamSpec("width", 0, "Requested width in px (opencv device, synthetic); 0 = default (synthetic 640).",
              range=(0, 16384), read_only=True),
    ParamSpec("height", 0, "Requested height in px (opencv device, synthetic); 0 = default (synthetic 640).",
              range=(0, 16384), read_only=True),
    ParamSpec("defect_every", 0, "synthetic: paint a defect on every Nth frame (0 = never).",
              range=(0, 1_000_000), read_only=True),
    ParamSpec("frame_id", "camera", "header.frame_id of image and camera_info."),
    ParamSpec("camera_info_url", "", "Calibration YAML (file:// URL or path); empty = default pinhole"
              " (focal = width px, centre principal point, no distortion).", read_only=True),
    ParamSpec("fps", 10.0, "Free-run rate in frames/s (pacing=fps).", range=(0.01, 1000.0)),
    ParamSpec("pacing", "fps", "Free-run timing: fps = at `fps`; recorded = at the rosbag's recorded"
              " rate times `speed`; max = as fast as possible (with ack_topic: as fast as acknowledged).",
              choices=("fps", "recorded", "max")),
    ParamSpec("speed", 1.0, "Playback speed factor for pacing=recorded.", range=(0.01, 100.0)),
    ParamSpec("trigger_mode", "free", "free = run continuously; service = one frame per ~/trigger call;"
              " topic = one frame per camera/trigger message.", choices=("free", "service", "topic")),
    ParamSpec("ack_topic", "", "Result topic (std_msgs/String JSON with stamp_ns) that acknowledges a"
              " frame; the next frame waits for it (free-run only). Empty = no ack pacing.",
              read_only=True),
    ParamSpec("ack_timeout", 5.0, "Seconds to wait for an acknowledgement before moving on (counted as"
              " ack_timeouts).", range=(0.01, 3600.0)),
    ParamSpec("on_end", "idle", "When a finite source ends: idle = stay up; loop = start again;"
              " exit = publish end_of_stream on camera/status and exit with code 0.",
              choices=("idle", "loop", "exit")),
    ParamSpec("end_drain", 1.0, "Seconds to wait after the last frame before exiting (on_end=exit)"
              " when there is no ack_topic.", range=(0.0, 60.0)),
    ParamSpec("max_frames", 0, "Stop after this many frames (treated as end of stream); 0 = no limit.",
              range=(0, 2**31 - 1)),
    ParamSpec("bad_frame", "forward", "A frame the source cannot decode: forward = publish an empty"
              " (0x0) Image with the part's stamp so the part gets a fail-safe decision;"
              " skip = publish nothing (logged, counted, event on camera/status).",
              choices=("forward", "skip")),
    ParamSpec("wait_subscribers", 0, "Before the first frame, wait until camera/image_raw has this many"
              " subscribers (so a replay does not start before the inspector is up); 0 = start at once.",
              range=(0, 100)),
    ParamSpec("wait_timeout", 30.0, "Seconds to wait for wait_subscribers before starting anyway (warned).",
              range=(0.0, 3600.0)),
    ParamSpec("qos_depth", 5, "Queue depth of camera/image_raw (reliable).", range=(1, 100), read_only=True),
]


class _Trigger:
    def __init__(self, wait: bool):
        self.done = threading.Event() if wait else None
        self.ok, self.message = False, ""


class CameraNode(ParamNode):
    def __init__(self, exit_on_crash: bool = False, **kwargs):
        """`exit_on_crash`: when the frame thread dies, shut the context down (the process
        then exits 1, see `main`); False when composed with other nodes in one process."""
        super().__init__("camera", SPECS, **kwargs)
        self.exit_on_crash = exit_on_crash
        self.crashed: str | None = None  # "<Error>: text" once the frame thread died
        p = self.p
        self.source = self._open_source()
        self.calibration: Calibration | None = None
        if p["camera_info_url"]:
            try:
                self.calibration = load_calibration(p["camera_info_url"])
            except CalibrationError as e:
                self.source.close()
                raise RuntimeError(f"camera: {e}") from None
        self.encoding = p["encoding"]
        self.frames = FramePublisher(self, "camera/image_raw", p["qos_depth"])
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.info_pub = self.create_publisher(CameraInfo, "camera/camera_info", reliable)
        self.label_pub = self.create_publisher(String, "camera/label", QoSProfile(depth=50))
        self.status_pub = self.create_publisher(String, "camera/status", QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        group = ReentrantCallbackGroup()
        self.create_service(Trigger, "~/trigger", self._on_trigger_srv, callback_group=group)
        self.create_subscription(Empty, "camera/trigger", self._on_trigger_msg, 10, callback_group=group)
        self._acked: set[int] = set()
        self._ack_cv = threading.Condition()
        if p["ack_topic"]:
            self.create_subscription(String, p["ack_topic"], self._on_ack, QoSProfile(depth=50))
        self.diag = Diagnostics(self, extra=self._diag_extra)
        self.diag.level_fn = self._diag_level
        self.diag.stats.incr("drops", 0)  # always reported, even while zero
        self._triggers: queue.Queue[_Trigger] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._info_msg: CameraInfo | None = None
        self._last_stamp = 0
        self._published = 0
        self._ack_timeouts = 0
        self._bad = 0
        self._unavailable_since: float | None = None
        self._ended = False
        self.context.on_shutdown(self._shutdown_requested)
        self._thread = threading.Thread(target=self._run, name="camera-producer", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"camera: {self.source.describe()}, encoding {self.encoding}, trigger {p['trigger_mode']},"
            f" pacing {p['pacing']} at {p['fps']} fps, ack {p['ack_topic'] or 'off'}, on_end {p['on_end']},"
            f" calibration {self.calibration.source if self.calibration else 'default'}")

    # ---------------------------------------------------------------- setup
    def _open_source(self):
        p = self.p
        kind, uri = p["source"], p["uri"]
        if kind in ("folder", "rosbag") and not uri:
            raise RuntimeError(f"camera: source {kind} needs the uri parameter (a {kind} path)")
        if kind in ("folder", "rosbag") or (kind == "opencv" and classify(uri or "0")[0] == "file"):
            uri = str(resolve(uri.removeprefix("file://")))
        opts = dict(uri=uri or "0", topic=p["topic"], restamp=p["restamp"], labels=p["labels"],
                    width=p["width"] or (640 if kind == "synthetic" else 0),
                    height=p["height"] or (640 if kind == "synthetic" else 0),
                    fps=p["fps"], defect_every=p["defect_every"],
                    encoding="mono8" if p["encoding"] == "passthrough" else p["encoding"])
        try:
            return make_source(kind, **opts)
        except SourceError as e:
            raise RuntimeError(f"camera: {e}") from None

    def on_params_changed(self, names: list[str]) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- inputs
    def _on_trigger_srv(self, request, response):
        if self.p["trigger_mode"] != "service":
            response.success = False
            response.message = f"trigger_mode is {self.p['trigger_mode']!r}; set it to 'service' to trigger"
            return response
        t = _Trigger(wait=True)
        self._triggers.put(t)
        self._wake.set()
        if not t.done.wait(timeout=10.0):
            response.success, response.message = False, "no frame within 10 s"
        else:
            response.success, response.message = t.ok, t.message
        return response

    def _on_trigger_msg(self, _msg: Empty) -> None:
        if self.p["trigger_mode"] != "topic":
            self.get_logger().warning(f"camera/trigger ignored: trigger_mode is {self.p['trigger_mode']!r}",
                                      throttle_duration_sec=5.0)
            return
        self._triggers.put(_Trigger(wait=False))
        self._wake.set()

    def _on_ack(self, msg: String) -> None:
        try:
            stamp = int(json.loads(msg.data)["stamp_ns"])
        except (ValueError, KeyError, TypeError) as e:
            self.get_logger().warning(f"{self.p['ack_topic']}: message without a valid stamp_ns ({e})",
                                      throttle_duration_sec=5.0)
            return
        with self._ack_cv:
            self._acked.add(stamp)
            if len(self._acked) > 1000:
                self._acked = {s for s in self._acked if s >= self._last_stamp}
            self._ack_cv.notify_all()

    # ---------------------------------------------------------------- producer
    def _sleep_until(self, due: float) -> bool:
        """Wait until monotonic time `due`; False if stopped or woken by a mode change."""
        while not self._stop.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return True
            if self._wake.wait(min(left, 0.5)):
                self._wake.clear()
                return not self._stop.is_set() and self.p["trigger_mode"] == "free" and not self._ended
        return False

    def _wait_for_subscribers(self) -> None:
        want = self.p["wait_subscribers"]
        if not want:
            return
        deadline = time.monotonic() + self.p["wait_timeout"]
        while not self._stop.is_set() and self.frames.subscription_count() < want:
            if time.monotonic() > deadline:
                self.get_logger().warning(
                    f"only {self.frames.subscription_count()} of {want} subscribers on {self.frames.topic}"
                    f" after {self.p['wait_timeout']} s; starting anyway")
                return
            self._stop.wait(0.05)
        self.get_logger().info(f"{self.frames.subscription_count()} subscriber(s) on {self.frames.topic};"
                               " starting")

    def _run(self) -> None:
        try:
            self._wait_for_subscribers()
        except Exception as e:  # reported; production then starts anyway
            self.get_logger().error(f"waiting for subscribers failed: {e}")
        next_due = time.monotonic()
        prev_t: int | None = None
        try:
            while not self._stop.is_set():
                if self._ended and not self._triggers.qsize():
                    if self.p["on_end"] == "loop" and self.source.finite and not self._limit_reached():
                        self._restart()
                    else:
                        self._wake.wait(0.5)
                        self._wake.clear()
                        continue
                if self.p["trigger_mode"] != "free":
                    self._serve_trigger()
                    next_due, prev_t = time.monotonic(), None
                    continue
                pacing = self.p["pacing"]
                if pacing == "fps" and not self._sleep_until(next_due):
                    continue
                frame = self._read()
                if frame is None:
                    continue
                timed = pacing == "recorded" and frame.time_ns is not None
                if timed:  # keep the recording's own spacing (scaled by speed)
                    if prev_t is None:
                        next_due = time.monotonic()
                    else:
                        next_due += max(0.0, (frame.time_ns - prev_t) / 1e9 / self.p["speed"])
                if pacing == "recorded":  # (sources without timing fall back to fps)
                    self._sleep_until(next_due)
                prev_t = frame.time_ns
                stamp = self._publish(frame)
                if not timed:
                    period = 1.0 / self.p["fps"]
                    next_due = max(next_due + period, time.monotonic() - period)
                if stamp is not None and self.p["ack_topic"]:
                    self._wait_ack(stamp)
                    if pacing == "recorded":
                        next_due = max(next_due, time.monotonic())
        except Exception as e:  # a bug here must be loud, not a silently dead camera
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down: publishers are already gone
            self._crashed(e)

    def _crashed(self, e: Exception) -> None:
        """The frame thread died: no more parts. Say so everywhere an operator looks."""
        self.crashed = f"{type(e).__name__}: {e}"
        then = "exiting with code 1" if self.exit_on_crash else "the node stays up without frames"
        self.get_logger().error(f"camera frame thread crashed after {self._published} frames "
                                f"({self.source.describe()}): {self.crashed}; {then}\n"
                                + traceback.format_exc().rstrip())
        try:
            self._status({"event": "error", "error": self.crashed, "frames": self._published})
            self.diag.publish()  # ERROR now, not at the next period
        except Exception as err:  # a publisher may already be gone; the log above has the crash
            self.get_logger().error(f"could not report the crash on camera/status, /diagnostics: {err}")
        if self.exit_on_crash:
            self._stop.wait(1.5)  # let /diagnostics and camera/status reach their subscribers
            self._stop.set()
            rclpy.try_shutdown(context=self.context)

    def _serve_trigger(self) -> None:
        try:
            t = self._triggers.get(timeout=0.2)
        except queue.Empty:
            return
        frame = None
        deadline = time.monotonic() + 2.0
        while frame is None and not self._ended and not self._stop.is_set() and time.monotonic() < deadline:
            frame = self._read()
            if frame is None and not self._ended:
                time.sleep(0.02)
        stamp = self._publish(frame) if frame is not None else None
        if stamp is None:
            t.ok = False
            t.message = "end of stream" if self._ended else "no frame (source unavailable or bad frame)"
            self.diag.stats.incr("drops")
        else:
            t.ok, t.message = True, f"frame {frame.index} stamp_ns {stamp}"
        if t.done is not None:
            t.done.set()

    def _read(self) -> Frame | None:
        """Next frame, or None (source momentarily unavailable, or end of stream handled)."""
        if self._limit_reached():
            self._end_of_stream()
            return None
        try:
            frame = self.source.read()
        except EndOfStream:
            self._end_of_stream()
            return None
        except SourceError as e:
            self.get_logger().error(str(e), throttle_duration_sec=5.0)
            self._stop.wait(0.1)
            return None
        if frame is None:
            if self._unavailable_since is None:
                self._unavailable_since = time.monotonic()
                self.get_logger().warning(f"{self.source.describe()}: no frame; reopening with backoff")
            self._stop.wait(0.05)
            return None
        if self._unavailable_since is not None:
            self.get_logger().info(f"{self.source.describe()}: frames again after"
                                   f" {time.monotonic() - self._unavailable_since:.1f} s")
            self._unavailable_since = None
        return frame

    def _limit_reached(self) -> bool:
        return bool(self.p["max_frames"]) and self._published >= self.p["max_frames"]

    def _restart(self) -> None:
        """on_end changed to loop while idling at the end: start the source again."""
        self.source.rewind()
        self._ended = False
        self._status({"event": "loop", "frames": self._published})

    def _end_of_stream(self) -> None:
        on_end = self.p["on_end"]
        if on_end == "loop" and self.source.finite and not self._limit_reached():
            self.source.rewind()
            self._status({"event": "loop", "frames": self._published})
            return
        if self._ended:
            return
        self._ended = True
        self.get_logger().info(f"end of stream after {self._published} frames (on_end={on_end})")
        if on_end == "exit":
            if not self.p["ack_topic"]:
                self._stop.wait(self.p["end_drain"])
            self._status({"event": "end_of_stream", "frames": self._published})
            self._stop.wait(0.5)  # let the status message reach subscribers
            self._stop.set()
            rclpy.try_shutdown(context=self.context)
        else:
            self._status({"event": "end_of_stream", "frames": self._published})

    def _publish(self, frame: Frame) -> int | None:
        t0 = time.perf_counter()
        stamp = frame.stamp_ns
        if stamp is None:
            stamp = self.get_clock().now().nanoseconds
            if stamp <= self._last_stamp:  # part keys must be unique
                stamp = self._last_stamp + 1
        header = header_from_ns(stamp, self.p["frame_id"])
        if frame.array is None:
            self._bad += 1
            policy = self.p["bad_frame"]
            self.get_logger().error(f"bad frame {frame.index} ({frame.error}); policy {policy}")
            self._status({"event": "bad_frame", "index": frame.index, "name": frame.name,
                          "error": frame.error, "stamp_ns": stamp if policy == "forward" else None})
            if policy == "skip":
                self.diag.stats.incr("drops")
                return None
            enc = frame.encoding if self.encoding == "passthrough" else self.encoding
            self.frames.publish_msg(Image(header=header, encoding=enc))
            h = w = 0
        else:
            enc = frame.encoding if self.encoding == "passthrough" else self.encoding
            arr = convert(frame.array, frame.encoding, enc)
            self.frames.publish(header, arr, enc)
            h, w = int(arr.shape[0]), int(arr.shape[1])
        self.info_pub.publish(self._camera_info(header, w, h))
        if frame.label is not None:
            self.label_pub.publish(String(data=json.dumps(
                {"stamp_ns": stamp, **frame.label.as_dict(), "index": frame.index})))
        self._last_stamp = max(self._last_stamp, stamp)
        self._published += 1
        self.diag.stats.add((time.perf_counter() - t0) * 1e3)
        return stamp

    def _camera_info(self, header, width: int, height: int) -> CameraInfo:
        msg = self._info_msg
        if msg is None or (self.calibration is None and width and (msg.width, msg.height) != (width, height)):
            cal = self.calibration or default_calibration(width or 640, height or 640)
            if self.calibration is not None and width and (cal.width, cal.height) != (width, height):
                self.get_logger().warning(f"calibration {cal.source} is for {cal.width}x{cal.height},"
                                          f" frames are {width}x{height}")
            msg = CameraInfo(height=cal.height, width=cal.width, distortion_model=cal.distortion_model,
                             d=cal.d, k=cal.k, r=cal.r, p=cal.p)
            self._info_msg = msg
        msg.header = header
        return msg

    def _wait_ack(self, stamp: int) -> None:
        timeout = self.p["ack_timeout"]
        with self._ack_cv:
            ok = self._ack_cv.wait_for(lambda: stamp in self._acked or self._stop.is_set(), timeout)
            self._acked.discard(stamp)
        if not ok:
            self._ack_timeouts += 1
            self.get_logger().warning(f"no acknowledgement on {self.p['ack_topic']} for stamp {stamp}"
                                      f" within {timeout} s ({self._ack_timeouts} timeouts so far)")

    def _status(self, event: dict) -> None:
        self.status_pub.publish(String(data=json.dumps(event)))

    # ---------------------------------------------------------------- diagnostics / shutdown
    def _diag_extra(self) -> dict:
        out = {"source": self.source.describe(), "encoding": self.encoding,
               "trigger_mode": self.p["trigger_mode"], "published": self._published,
               "ack_timeouts": self._ack_timeouts, "bad_frames": self._bad, "ended": self._ended}
        out.update(self.source.counters())
        return out

    def _diag_level(self) -> tuple[int, str]:
        if self.crashed is not None:
            return 2, f"frame thread crashed: {self.crashed}; no frames are produced"
        if self._unavailable_since is not None:
            return 1, f"no frames for {time.monotonic() - self._unavailable_since:.1f} s (reopening)"
        return (0, "end of stream") if self._ended else (0, "ok")

    def _shutdown_requested(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._ack_cv:
            self._ack_cv.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        self.source.close()


NODE_CLASS = CameraNode


def main(args: list[str] | None = None) -> int:
    """Run the camera as its own process: exit code 1 when its frame thread crashed."""
    return run_nodes([lambda: CameraNode(exit_on_crash=True)], args)


if __name__ == "__main__":
    sys.exit(main())
