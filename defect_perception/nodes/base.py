"""Shared node plumbing: typed parameters with descriptors and validation, diagnostics,
and a `main()` runner. Every node uses these so `ros2 param` / `defect-perception param`
and `/diagnostics` behave the same across the line."""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from defect_perception.core.stats import RollingStats

_TYPES = {
    bool: Parameter.Type.BOOL,
    int: Parameter.Type.INTEGER,
    float: Parameter.Type.DOUBLE,
    str: Parameter.Type.STRING,
    list: Parameter.Type.STRING_ARRAY,
}


@dataclass
class ParamSpec:
    """One node parameter. `range` is (lo, hi) or (lo, hi, step); `choices` limits strings;
    `check(value) -> str | None` returns a refusal reason. `read_only` for values that need
    a restart. `type_` overrides the type inferred from the default (e.g. float list)."""

    name: str
    default: Any
    description: str
    range: tuple | None = None
    choices: Sequence[str] | None = None
    read_only: bool = False
    check: Callable[[Any], str | None] | None = None
    type_: Parameter.Type | None = None
    extra: dict = field(default_factory=dict)

    def ptype(self) -> Parameter.Type:
        if self.type_ is not None:
            return self.type_
        if isinstance(self.default, list) and self.default and isinstance(self.default[0], float):
            return Parameter.Type.DOUBLE_ARRAY
        if isinstance(self.default, list) and self.default and isinstance(self.default[0], int):
            return Parameter.Type.INTEGER_ARRAY
        return _TYPES[type(self.default)]

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, type=self.ptype().value, read_only=self.read_only)
        text = self.description
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        d.description = text
        if self.range is not None:
            lo, hi, *step = self.range
            if isinstance(self.default, float):
                d.floating_point_range = [FloatingPointRange(
                    from_value=float(lo), to_value=float(hi), step=float(step[0]) if step else 0.0)]
            else:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi),
                                                step=int(step[0]) if step else 1)]
        return d

    def refuse(self, value: Any) -> str | None:
        if self.choices and value not in self.choices:
            return f"{self.name}={value!r} is not one of {list(self.choices)}"
        if self.check is not None:
            return self.check(value)
        return None


class ParamNode(Node):
    """A Node whose parameters come from ParamSpecs. Subclasses read `self.p[name]` and
    may override `on_params_changed(names)` to react after a validated change."""

    def __init__(self, name: str, specs: Sequence[ParamSpec], **kwargs):
        super().__init__(name, **kwargs)
        self._specs = {s.name: s for s in specs}
        self.p: dict[str, Any] = {}
        for s in specs:
            param = self.declare_parameter(s.name, s.default, s.descriptor())
            self.p[s.name] = param.value
        bad = [r for s in specs if (r := s.refuse(self.p[s.name]))]
        if bad:
            raise ValueError(f"node {name}: invalid parameter(s): " + "; ".join(bad))
        self.add_on_set_parameters_callback(self._validate)
        self.add_post_set_parameters_callback(self._apply)

    def _validate(self, params: list[Parameter]) -> SetParametersResult:
        for prm in params:
            spec = self._specs.get(prm.name)
            if spec is None:
                continue
            reason = spec.refuse(prm.value)
            if reason:
                self.get_logger().warning(f"refused parameter change: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply(self, params: list[Parameter]) -> None:
        names = []
        for prm in params:
            if prm.name in self._specs:
                self.p[prm.name] = prm.value
                names.append(prm.name)
        if names:
            self.get_logger().info("parameters changed: " + ", ".join(
                f"{n}={self.p[n]!r}" for n in names))
            self.on_params_changed(names)

    def on_params_changed(self, names: list[str]) -> None:
        """Hook for subclasses."""


class Diagnostics:
    """Publishes one DiagnosticStatus for a node on /diagnostics every `period` seconds.
    `stats` is updated by the node; `extra()` returns more key/values (backend, model...)."""

    def __init__(self, node: Node, period: float = 1.0, extra: Callable[[], dict] | None = None,
                 window: int = 1000):
        self.node = node
        self.stats = RollingStats(window)
        self.extra = extra or (lambda: {})
        self.level_fn: Callable[[], tuple[int, str]] = lambda: (DiagnosticStatus.OK, "ok")
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = node.create_timer(period, self.publish)

    def publish(self) -> None:
        level, message = self.level_fn()
        values = dict(self.stats.summary())
        values.update({k: str(v) for k, v in self.extra().items()})
        status = DiagnosticStatus(
            level=bytes([level]) if isinstance(level, int) else level,
            name=self.node.get_fully_qualified_name(), message=message,
            hardware_id=self.node.get_name(),
            values=[KeyValue(key=k, value=v) for k, v in values.items()])
        msg = DiagnosticArray()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.status = [status]
        self._pub.publish(msg)


def run_nodes(factories: Sequence[Callable[[], Node]], args: list[str] | None = None,
              threads: int = 2) -> int:
    """Build nodes after rclpy.init and spin them on one executor until Ctrl-C / SIGTERM.
    Returns a process exit code: 1 when a node fails to construct (with its error) or when a
    node reports `crashed` (e.g. the camera's frame thread died), else 0."""
    rclpy.init(args=args)
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    nodes: list[Node] = []
    try:
        for make in factories:
            nodes.append(make())
    except Exception as e:  # startup errors must name the problem, not dump a traceback loop
        print(f"[defect_perception] failed to start: {e}", file=sys.stderr, flush=True)
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown()
        return 1
    names = [n.get_name() for n in nodes]  # handles are gone once a crash shut the context down
    executor = MultiThreadedExecutor(num_threads=threads)
    for n in nodes:
        executor.add_node(n)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:  # rclpy RCLError when Ctrl-C shuts the context mid-wait: a clean stop
        if rclpy.ok():
            raise
    finally:
        # a second Ctrl-C (launchers signal the whole group) must not cut the flush of queues/audit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for n in nodes:
            close = getattr(n, "close", None)
            if close:
                close()
            n.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    crashed = [(name, n.crashed) for name, n in zip(names, nodes, strict=True) if getattr(n, "crashed", None)]
    for name, why in crashed:
        print(f"[defect_perception] node {name} crashed: {why}; exit code 1", file=sys.stderr, flush=True)
    return 1 if crashed else 0


class BackgroundNode:
    """A node on a private context spun on its own thread, for tools in the launcher's process
    (monitor, evaluate-line) that watch the line without taking over its Ctrl-C handling.
    Subclasses create their subscriptions on `self.node`, then call `start()`."""

    def __init__(self, name: str, namespace: str) -> None:
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node(name, namespace=namespace, context=self.context, start_parameter_services=False)
        self.executor = SingleThreadedExecutor(context=self.context)
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)

    def start(self) -> None:
        self.executor.add_node(self.node)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)
