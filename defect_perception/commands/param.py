"""`defect-perception param list|get|set|describe NODE [NAME] [VALUE]`: a running node's
parameters over the standard parameter services, like `ros2 param` (absent on pip installs).

Values are read like `ros2 param set`: YAML scalars and lists (`true`, `5`, `0.5`, `[a, b]`,
`"'5'"` for the string 5). An integer given for a double parameter is converted. Exit codes:
0 done; 1 node not found, unknown parameter, or change refused (the node's reason is
printed); 2 bad usage or a value that is not a parameter value.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
import threading
from typing import Any

from defect_perception.line_spec import DEFAULT_NAMESPACE

ACTIONS = ("list", "get", "set", "describe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="list | get | set | describe")
    parser.add_argument("node", nargs="?",
                        help="node name, relative to --namespace (camera) or absolute (/line/camera); "
                             "`param list` without it lists the nodes of the namespace")
    parser.add_argument("name", nargs="?", help="parameter name (get, set; optional for describe)")
    parser.add_argument("value", nargs="?", help="new value for set, YAML style (true, 5, 0.5, [a, b], text)")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help="namespace of the line (default /line)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the node's parameter services (default 5)")
    parser.add_argument("--values", action="store_true", help="list: also print each value")


def target_name(node: str, namespace: str) -> str:
    if node.startswith("/"):
        return node
    return f"{namespace.rstrip('/')}/{node}" if namespace.strip("/") else f"/{node}"


def format_value(value: Any) -> str:
    """YAML-ish, so the printed value can be pasted back into `param set`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if hasattr(value, "tolist"):  # array.array from rclpy
        return format_value(value.tolist())
    return str(value)


def coerce(value: Any, ptype: int) -> Any:
    """Fit a parsed value to the declared type where that is lossless (int -> double)."""
    from rcl_interfaces.msg import ParameterType as T

    if ptype == T.PARAMETER_DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if ptype == T.PARAMETER_DOUBLE_ARRAY and isinstance(value, list) and \
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    if ptype == T.PARAMETER_STRING and not isinstance(value, str):
        return format_value(value)  # `param set camera uri 0` means the text "0"
    if ptype == T.PARAMETER_STRING_ARRAY and isinstance(value, list):
        return [v if isinstance(v, str) else format_value(v) for v in value]
    return value


def type_mismatch(value: Any, desc) -> str | None:
    """`wrong type, expected double, got string` when `value` (after `coerce`) cannot be set on a
    parameter with descriptor `desc`; None when the type fits or the node decides."""
    from rcl_interfaces.msg import ParameterType as T

    from defect_perception.launcher.remote_params import TYPE_NAMES
    from defect_perception.launcher.values import type_of

    expected = TYPE_NAMES.get(desc.type)
    if desc.dynamic_typing or desc.type in (T.PARAMETER_NOT_SET, T.PARAMETER_BYTE_ARRAY) or expected is None:
        return None
    got = type_of(value)
    if got == expected or (got == "empty list" and expected.endswith(" array")):
        return None
    return f"wrong type, expected {expected}, got {got}"


_RCL_TYPE_ERROR = re.compile(r"Wrong parameter type, expected '(?:Type\.)?(\w+)' got '(?:Type\.)?(\w+)'")


def readable_reason(reason: str) -> str:
    """rclpy's "Wrong parameter type, expected '3' got '4'" (raw type numbers) with type names."""
    from defect_perception.launcher.remote_params import TYPE_NAMES

    def name(token: str) -> str:
        if token.isdigit():
            return TYPE_NAMES.get(int(token), token)
        return token.lower().replace("_", " ")  # 'Type.DOUBLE' on Python < 3.11

    return _RCL_TYPE_ERROR.sub(lambda m: f"wrong type, expected {name(m[1])}, got {name(m[2])}", reason)


def _usage(args: argparse.Namespace) -> str | None:
    if not args.node and args.action != "list":
        return f"param {args.action}: give the NODE"
    if args.action in ("get", "set") and not args.name:
        return f"param {args.action}: give the parameter NAME"
    if args.action == "set" and args.value is None:
        return "param set: give the VALUE"
    if args.action in ("list",) and args.name:
        return "param list takes no NAME (use get or describe)"
    return None


def run(args: argparse.Namespace) -> int:
    from defect_perception.launcher.values import ParamValueError, parse_value

    problem = _usage(args)
    if problem:
        print(f"defect-perception {problem}", file=sys.stderr)
        return 2
    value = None
    if args.action == "set":
        try:
            value = parse_value(args.value)
        except ParamValueError as e:
            print(f"defect-perception param set: {e}", file=sys.stderr)
            return 2
    return _Session(args).run(value)


class _Session:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.target = target_name(args.node, args.namespace) if args.node else ""

    def run(self, value: Any) -> int:
        import rclpy
        from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
        from rclpy.node import Node

        from defect_perception.launcher.remote_params import RemoteParamError, RemoteParams

        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        node = Node("_defect_perception_param", context=ctx, start_parameter_services=False)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)

        def spin():
            try:
                ex.spin()
            except ExternalShutdownException:
                pass

        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
        if not self.target:
            try:
                return self._list_nodes(node)
            finally:
                ex.shutdown(timeout_sec=1.0)
                thread.join(timeout=2.0)
                node.destroy_node()
                rclpy.try_shutdown(context=ctx)
        remote = RemoteParams(node, self.target, timeout=self.args.timeout)
        try:
            if not remote.wait_ready():
                return self._not_found(node)
            return getattr(self, f"do_{self.args.action}")(remote, value)
        except RemoteParamError as e:
            print(f"defect-perception param: {e}", file=sys.stderr)
            return 1
        finally:
            remote.close()
            ex.shutdown(timeout_sec=1.0)
            thread.join(timeout=2.0)
            node.destroy_node()
            rclpy.try_shutdown(context=ctx)

    def _list_nodes(self, node) -> int:
        """Nodes of the namespace that serve parameters, after a discovery period."""
        import time

        ns = self.args.namespace.rstrip("/") + "/"
        deadline = time.monotonic() + self.args.timeout
        found: list[str] = []
        stable_since = time.monotonic()
        while time.monotonic() < deadline:  # discovery keeps adding nodes: stop once the list settles
            now = sorted(n for n in node.get_fully_qualified_node_names()
                         if n.startswith(ns) and not n.split("/")[-1].startswith("_"))
            if now != found:
                found, stable_since = now, time.monotonic()
            elif found and time.monotonic() - stable_since > 1.5:
                break
            time.sleep(0.1)
        if not found:
            print(f"defect-perception param: no node in {self.args.namespace} within {self.args.timeout:g} s",
                  file=sys.stderr)
            return 1
        print("\n".join(found))
        return 0

    def _not_found(self, node) -> int:
        seen = sorted(n for n in node.get_fully_qualified_node_names()
                      if not n.split("/")[-1].startswith("_"))
        close = difflib.get_close_matches(self.target, seen, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"defect-perception param: node {self.target} not found within {self.args.timeout:g} s "
              f"(nodes seen: {', '.join(seen) or 'none'}{hint})", file=sys.stderr)
        return 1

    def _check_name(self, remote, name: str) -> bool:
        names = remote.list()
        if name in names:
            return True
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f" (it has: {', '.join(names)})"
        print(f"defect-perception param: {self.target} has no parameter {name!r}{hint}", file=sys.stderr)
        return False

    def do_list(self, remote, _value) -> int:
        names = remote.list()
        if self.args.values:
            from defect_perception.launcher.remote_params import to_python

            for n, v in zip(names, remote.get(names), strict=True):
                print(f"{n}: {format_value(to_python(v))}")
        else:
            print("\n".join(names))
        return 0

    def do_get(self, remote, _value) -> int:
        from defect_perception.launcher.remote_params import to_python

        if not self._check_name(remote, self.args.name):
            return 1
        print(format_value(to_python(remote.get([self.args.name])[0])))
        return 0

    def do_set(self, remote, value) -> int:
        name = self.args.name
        if not self._check_name(remote, name):
            return 1
        desc = remote.describe([name])[0]
        value = coerce(value, desc.type)
        # checked here, not by the node: rclpy's own text gives raw type numbers ("expected '3'
        # got '4'"); a read-only parameter is left to the node, whose reason says read-only
        mismatch = None if desc.read_only else type_mismatch(value, desc)
        if mismatch:
            print(f"defect-perception param: {self.target} refused {name}={format_value(value)}: {mismatch}",
                  file=sys.stderr)
            return 1
        result = remote.set(name, value)
        if not result.successful:
            print(f"defect-perception param: {self.target} refused {name}={format_value(value)}: "
                  f"{readable_reason(result.reason) or 'no reason given'}", file=sys.stderr)
            return 1
        print(f"{self.target}: {name} = {format_value(value)}")
        return 0

    def do_describe(self, remote, _value) -> int:
        from defect_perception.launcher.remote_params import TYPE_NAMES

        if self.args.name and not self._check_name(remote, self.args.name):
            return 1
        names = [self.args.name] if self.args.name else remote.list()
        for d in remote.describe(names):
            print(f"{d.name}:")
            print(f"  type: {TYPE_NAMES.get(d.type, d.type)}")
            if d.description:
                print(f"  description: {d.description}")
            if d.read_only:
                print("  read-only: true (restart the node to change it)")
            for r in d.floating_point_range:
                step = f" step {r.step:g}" if r.step else ""
                print(f"  range: {r.from_value:g} .. {r.to_value:g}{step}")
            for r in d.integer_range:
                print(f"  range: {r.from_value} .. {r.to_value}" + (f" step {r.step}" if r.step > 1 else ""))
            if d.additional_constraints:
                print(f"  constraints: {d.additional_constraints}")
        return 0
