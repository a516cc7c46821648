"""The launcher's own small rclpy node: prints one line per part as decisions arrive,
notices the camera's end of stream, and (with --diag) a periodic diagnostics line per node.

It runs in the launcher process on a private context and executor thread, so the main
thread stays free to supervise the node processes.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import String

from defect_perception.launcher.tally import PartTally
from defect_perception.nodes.base import BackgroundNode

Emit = Callable[[str], None]


# Diagnostic counters that mean frames, parts or decisions went somewhere other than the happy path.
_TROUBLE_WORDS = ("drop", "fail", "skip", "timeout", "bad", "queue", "late", "evict", "refus", "error",
                  "duplicate", "malformed")


def _trouble(key: str, value: str) -> bool:
    """Shown by --diag when non-zero (or non-numeric, e.g. a last error text)."""
    if not any(w in key for w in _TROUBLE_WORDS):
        return False
    try:
        return float(value) != 0.0
    except ValueError:
        return bool(value.strip())


class LineMonitor(BackgroundNode):
    """Owns a context, a node `line_monitor` in the line's namespace, and a spin thread."""

    def __init__(self, namespace: str, stage_topic: str | None, emit: Emit, diag_period: float = 0.0,
                 print_parts: bool = True):
        self.emit = emit
        self.tally = PartTally()
        self.print_parts = print_parts
        self.end_of_stream: dict[str, Any] | None = None
        self._diag: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        super().__init__("line_monitor", namespace)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        if stage_topic:
            first = self.node.create_subscription(String, stage_topic, self._on_result, qos)
        else:  # no processing stage: count parts from the camera's CameraInfo (same stamp)
            first = self.node.create_subscription(CameraInfo, "camera/camera_info", self._on_info, qos)
        self.stage_topic = stage_topic
        self._subs = [first,
                      self.node.create_subscription(String, "camera/label", self._on_label, qos),
                      self.node.create_subscription(String, "camera/status", self._on_status, qos)]
        if diag_period > 0:
            self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
            self.node.create_timer(diag_period, self._print_diag)
        self.start()

    def _parse(self, msg: String, topic: str) -> dict | None:
        try:
            data = json.loads(msg.data)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except ValueError as e:
            with self._lock:
                self.tally.malformed += 1
            self.emit(f"unreadable message on {topic}: {e}: {msg.data[:120]!r}")
            return None

    def _on_result(self, msg: String) -> None:
        data = self._parse(msg, self.stage_topic or "")
        if data is None:
            return
        with self._lock:
            line = self.tally.on_result(data)
        if self.print_parts:
            self.emit(line)

    def _on_info(self, msg: CameraInfo) -> None:
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        with self._lock:
            line = self.tally.on_frame(stamp)
        if self.print_parts:
            self.emit(line)

    def _on_label(self, msg: String) -> None:
        data = self._parse(msg, "camera/label")
        if data is not None:
            with self._lock:
                self.tally.on_label(data)

    def _on_status(self, msg: String) -> None:
        data = self._parse(msg, "camera/status")
        if data is not None and data.get("event") == "end_of_stream":
            self.end_of_stream = data
            self.emit(f"camera reached the end of its stream after {data.get('frames', '?')} frames")

    def _on_diag(self, msg: DiagnosticArray) -> None:
        ns = self.node.get_namespace().rstrip("/") + "/"
        for st in msg.status:
            if st.name.startswith(ns):
                self._diag[st.name[len(ns):]] = {kv.key: kv.value for kv in st.values} | {"_msg": st.message}

    def _print_diag(self) -> None:
        for name, v in sorted(self._diag.items()):
            keys = ("rate_hz", "latency_p50_ms", "latency_p99_ms")
            parts = [f"{k.replace('latency_', '').replace('_ms', '')}={v[k]}" for k in keys if k in v]
            parts += [f"{k}={val}" for k, val in v.items()
                      if k not in keys and k != "_msg" and (k == "backend" or _trouble(k, val))]
            self.emit(f"diag {name}: {v.get('_msg', '')} " + " ".join(parts))
        self._diag.clear()

    # --- used by the launcher's main thread -------------------------------------------
    def seen_nodes(self) -> set[str]:
        return {f"{ns.rstrip('/')}/{n}" for n, ns in self.node.get_node_names_and_namespaces()}

    def matched(self) -> bool:
        """Every topic the monitor listens to has its publisher matched (part lines start
        with the first part)."""
        return all(sub.get_publisher_count() > 0 for sub in self._subs)

    def subscribers(self, topic: str) -> int:
        return self.node.count_subscribers(topic)

    def set_param(self, node_fqn: str, name: str, value: Any, timeout: float = 5.0) -> str | None:
        """Set one parameter on another node; returns the refusal/failure reason or None."""
        from defect_perception.launcher.remote_params import RemoteParamError, RemoteParams

        remote = RemoteParams(self.node, node_fqn, timeout)
        try:
            if not remote.wait_ready():
                return f"parameter services of {node_fqn} not found within {timeout:.0f} s"
            result = remote.set(name, value)
            return None if result.successful else (result.reason or "refused")
        except RemoteParamError as e:
            return str(e)
        finally:
            remote.close()

    def decided(self) -> int:
        with self._lock:
            return self.tally.parts

    def summary(self) -> list[str]:
        with self._lock:
            return self.tally.summary()

