"""`defect-perception record`: write chosen topics to a rosbag2 (mcap or sqlite3).

Messages are taken as raw CDR (`raw=True` subscriptions) and written unchanged with the
`rosbags` Writer, so recording costs no re-serialisation. Topics are subscribed as they
appear on the graph, with the publishers' reliability/durability (like `ros2 bag record`).
Ctrl-C / SIGTERM / --duration / --max-frames stop it; the bag is closed properly in every
case, so `ros2 bag info` and the camera's rosbag source read it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import time
from pathlib import Path

DEFAULT_TOPICS = ["/line/camera/image_raw", "/line/camera/camera_info", "/line/camera/label",
                  "/line/inspector/result", "/line/anomaly/result", "/line/sorter/decision"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="bag folder to create (must not exist)")
    parser.add_argument("--topics", nargs="+", default=DEFAULT_TOPICS, metavar="TOPIC",
                        help="topics to record (default: the line's camera, result and decision topics)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0 = until Ctrl-C)")
    parser.add_argument("--max-frames", type=int, default=0,
                        help="stop after N messages on the first image topic found, then record"
                        " --tail seconds more of the other topics for those frames' late results")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--no-compress", action="store_true", help="mcap: do not zstd-compress chunks")
    parser.add_argument("--tail", type=float, default=1.0,
                        help="seconds to keep recording other topics after --max-frames (default 1)")


def message_class(type_name: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


class Recorder:
    """Subscribes to `topics` on `node` as they appear and writes raw messages to `writer`."""

    def __init__(self, node, writer, topics: list[str], max_frames: int = 0):
        from defect_perception.recording import TS

        self.node, self.writer, self.ts = node, writer, TS
        self.wanted = [node.resolve_topic_name(t) for t in topics]
        self.subs: dict[str, object] = {}
        self.counts: dict[str, int] = {t: 0 for t in self.wanted}
        self.max_frames = max_frames
        self.frame_topic: str | None = None
        self.frames_done_at: float | None = None
        self.last_frame_stamp: int | None = None
        self.warned: set[str] = set()

    def discover(self) -> None:
        for name, types in self.node.get_topic_names_and_types():
            if name not in self.wanted or name in self.subs or not types:
                continue
            type_name = types[0]
            if type_name not in self.ts.types:
                if name not in self.warned:
                    self.warned.add(name)
                    print(f"record: {name}: type {type_name} unknown to the ROS 2 Kilted typestore; skipped")
                continue
            conn = self.writer.add_connection(name, type_name, typestore=self.ts)
            if type_name == "sensor_msgs/msg/Image" and self.frame_topic is None:
                self.frame_topic = name  # --max-frames counts this topic
            self.subs[name] = self.node.create_subscription(
                message_class(type_name), name, lambda raw, n=name, c=conn: self._on_msg(n, c, raw),
                self._qos(name), raw=True)
            print(f"record: recording {name} [{type_name}]", flush=True)

    def _qos(self, name: str):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        pubs = self.node.get_publishers_info_by_topic(name)
        best_effort = any(p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in pubs)
        latched = bool(pubs) and all(p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                                     for p in pubs)
        return QoSProfile(
            depth=100,
            reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)

    def _on_msg(self, name: str, conn, raw: bytes) -> None:
        if self.frames_done_at is not None:  # tail: only messages about the recorded frames
            if name == self.frame_topic:
                return
            stamp = self._stamp(conn.msgtype, raw)
            if stamp is not None and self.last_frame_stamp is not None and stamp > self.last_frame_stamp:
                return
        self.writer.write(conn, self.node.get_clock().now().nanoseconds, raw)
        self.counts[name] += 1
        if name == self.frame_topic and self.max_frames and self.counts[name] >= self.max_frames:
            self.frames_done_at = time.monotonic()
            self.last_frame_stamp = self._stamp(conn.msgtype, raw)

    def _stamp(self, msgtype: str, raw: bytes) -> int | None:
        """The part stamp of a message: header.stamp, or stamp_ns of a JSON String."""
        try:
            msg = self.ts.deserialize_cdr(raw, msgtype)
            if msgtype == "std_msgs/msg/String":
                return int(json.loads(msg.data)["stamp_ns"])
            st = msg.header.stamp
            return int(st.sec) * 1_000_000_000 + int(st.nanosec)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from defect_perception.recording import open_writer

    try:
        writer = open_writer(args.output, args.storage, compress=not args.no_compress)
    except (FileExistsError, ValueError) as e:
        print(f"record: {e}")
        return 2
    stop = {"why": ""}

    def on_signal(signum, _frame):
        stop["why"] = signal.Signals(signum).name

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("recorder", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    rec = Recorder(node, writer, args.topics, args.max_frames)
    start = time.monotonic()
    next_discovery = 0.0
    try:
        while not stop["why"]:
            now = time.monotonic()
            if now >= next_discovery:
                rec.discover()
                next_discovery = now + 0.2
            executor.spin_once(timeout_sec=0.05)
            if args.duration and now - start >= args.duration:
                stop["why"] = f"duration {args.duration} s"
            if rec.frames_done_at is not None and now - rec.frames_done_at >= args.tail:
                stop["why"] = f"{args.max_frames} frames"
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        writer.close()
        for s, h in old.items():
            signal.signal(s, h)
    total = sum(rec.counts.values())
    print(f"record: stopped ({stop['why']}); {total} messages in {args.output}")
    for topic, n in rec.counts.items():
        print(f"  {topic}: {n}" + ("" if n else "  (no messages: topic not published?)"))
    return 0 if total else 1
