"""`defect-perception line`: start the line's nodes from line_spec + config/line.yaml,
merge their logs, print one line per part, stop everything cleanly.

Exit codes: 0 after Ctrl-C/SIGTERM or the end of a finite recording; 1 when a node fails
(the message names it and shows its last output lines); 2 for a line that cannot be built
as asked (unknown node, bad --param, missing config).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from defect_perception.core.paths import resolve
from defect_perception.line_spec import (
    DEFAULT_NAMESPACE,
    DEFAULT_PARAMS_FILE,
    IMAGE_CONSUMERS,
    SAMPLE_RECORDING,
    LinePlan,
    LineSpecError,
    plan_line,
)

IN_PROCESS = "in-process"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_PARAMS_FILE,
                        help=f"ROS 2 parameter file, one section per node (default {DEFAULT_PARAMS_FILE})")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help="namespace of the line (default /line)")
    parser.add_argument("--nodes", help="comma-separated nodes to start (default: every node that can run; "
                                        "a node named here that cannot run is an error)")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NODE.NAME=VALUE",
                        help="override one parameter, YAML value (repeatable), e.g. -p camera.fps=10")
    parser.add_argument("--in-process", action="store_true",
                        help="run all nodes in one process on one executor (frames handed over without "
                             "serialisation; lowest latency)")
    parser.add_argument("--demo", action="store_true",
                        help=f"play the bundled sample recording ({SAMPLE_RECORDING}) once, paced by the "
                             "last stage, then print the summary and exit")
    parser.add_argument("--bag", help="play this rosbag2 folder once through the camera, then exit")
    parser.add_argument("--quiet", action="store_true", help="only warnings from the nodes, plus the part "
                                                             "lines and the summary")
    parser.add_argument("--no-parts", action="store_true", help="do not print a line per part")
    parser.add_argument("--diag", type=float, nargs="?", const=5.0, default=0.0, metavar="SECONDS",
                        help="print each node's diagnostics every SECONDS (default 5 when given)")
    parser.add_argument("--no-gate", action="store_true",
                        help="let a free-running camera start at once instead of holding it until every "
                             "consumer is connected (frames published before that are lost)")
    parser.add_argument("--startup-timeout", type=float, default=15.0,
                        help="seconds for every node to appear on the ROS graph (default 15); a node that "
                             "exits before that failed to start")
    parser.add_argument("--drain", type=float, default=3.0,
                        help="seconds to wait for the last decisions after the camera's end of stream")
    parser.add_argument("--stop-timeout", type=float, default=5.0,
                        help="seconds after SIGINT before SIGTERM, then SIGKILL (default 5)")


def implied_params(args: argparse.Namespace, first: LinePlan | None) -> dict[str, dict]:
    """Parameters the launcher sets for --demo/--bag (before any -p override): a finite
    recording, paced by the last stage so a slow model loses no part, and no actuators, so a
    replayed shift never drives the real PLC (`-p sorter.actuators_config=...` to test one)."""
    if not (args.bag or args.demo):
        return {}
    uri = str(resolve(args.bag).absolute()) if args.bag else SAMPLE_RECORDING
    cam: dict = {"source": "rosbag", "uri": uri, "on_end": "exit"}
    stage = first.last_stage_topic() if first is not None else None
    if stage:
        cam.update({"ack_topic": stage, "ack_timeout": 2.0})
    return {"camera": cam, "sorter": {"actuators_config": ""}}


def make_plan(args: argparse.Namespace) -> LinePlan:
    nodes = [n for n in args.nodes.split(",")] if args.nodes else None
    if args.bag and not resolve(args.bag).exists():
        raise LineSpecError(f"--bag {args.bag}: no such rosbag2 folder")
    if args.demo and not args.bag and not resolve(SAMPLE_RECORDING).exists():
        raise LineSpecError(f"--demo: the sample recording {resolve(SAMPLE_RECORDING)} is missing "
                            "(build it with `defect-perception make-sample`)")
    # Two passes: what the camera is told depends on which nodes can run.
    first = plan_line(args.config, args.namespace, nodes, args.param, implied_params(args, None))
    return plan_line(args.config, args.namespace, nodes, args.param, implied_params(args, first))


def run(args: argparse.Namespace) -> int:
    try:
        plan = make_plan(args)
    except LineSpecError as e:
        print(f"defect-perception line: {e}", file=sys.stderr)
        return 2
    return Launcher(plan, args).run()


class Launcher:
    def __init__(self, plan: LinePlan, args: argparse.Namespace):
        from defect_perception.launcher.supervisor import Supervisor

        self.plan, self.args = plan, args
        self.sup = Supervisor()
        if args.in_process and "RCUTILS_CONSOLE_OUTPUT_FORMAT" not in os.environ:
            # one process hosts every node: keep the node name in each log line
            self.sup.env["RCUTILS_CONSOLE_OUTPUT_FORMAT"] = "[{severity}] [{name}] {message}"
        self.stop = threading.Event()
        self.signal_name: str | None = None
        self._failed_child: str | None = None
        # Start gate: DDS discovery between fresh processes takes 1-4 s here; a free-running
        # camera would publish its first parts to nobody. Hold it in trigger_mode=service
        # until its consumers are connected, then switch it to free over its parameter service.
        cam = plan.params.get("camera")
        self.gate = cam is not None and cam.get("trigger_mode", "free") == "free" and not args.no_gate
        if self.gate:
            cam["trigger_mode"] = "service"

    def log(self, text: str) -> None:
        self.sup.emit("line", text)

    def _on_signal(self, signum, _frame) -> None:
        if self.stop.is_set():  # asked twice: stop the nodes without the polite waits
            self.sup.hurry.set()
            return
        self.signal_name = signal.Signals(signum).name
        self.stop.set()

    def _commands(self, params_file: Path) -> list[tuple[str, list[str]]]:
        ros = ["--ros-args", "-r", f"__ns:={self.plan.namespace}", "--params-file", str(params_file)]
        if self.args.quiet:
            ros += ["--log-level", "warn"]
        if self.args.in_process:
            return [(IN_PROCESS, [sys.executable, "-m", "defect_perception.launcher.composed",
                                  *self.plan.names, *ros])]
        return [(s.name, [sys.executable, "-m", s.module, *ros[:1], "-r", f"__node:={s.name}", *ros[1:]])
                for s in self.plan.nodes]

    def run(self) -> int:
        from defect_perception.launcher.monitor import LineMonitor

        plan, args = self.plan, self.args
        self.sup.reserve([IN_PROCESS] if args.in_process else plan.names)
        for name, reason in plan.skipped:
            self.log(f"skipping {name}: {reason}")
        for note in plan.notes:
            self.log(note)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        tmp = tempfile.TemporaryDirectory(prefix="defect-line-")
        monitor = None
        try:
            params_file = plan.write_params(Path(tmp.name) / "line_params.yaml")
            stage = plan.last_stage_topic()
            monitor = LineMonitor(plan.namespace, stage, self.log, diag_period=args.diag,
                                  print_parts=not args.no_parts)
            mode = "one process" if args.in_process else "one process per node"
            self.log(f"starting {', '.join(plan.names)} in {plan.namespace} ({mode}); parameters from "
                     f"{plan.params_file}; part lines from {stage or 'camera/camera_info'}")
            commands = self._commands(params_file)
            self.sup.reserve([name for name, _ in commands])
            for name, argv in commands:
                child = self.sup.start(name, argv)
                self.log(f"started {name} (pid {child.pid})")
            code = self._supervise(monitor)
        finally:
            escalated = self.sup.stop_all(args.stop_timeout)
            for c in self.sup.children:
                if c.returncode not in (0, None) and c.name not in escalated and c.name != self._failed_child:
                    self.log(f"{c.name} stopped with {_describe(c.returncode)}")
            if monitor is not None:
                for i, line in enumerate(monitor.summary()):
                    self.log(("summary: " if i == 0 else "         ") + line)
                monitor.close()
            tmp.cleanup()
            for s, h in old.items():
                signal.signal(s, h)
        return code

    def _supervise(self, monitor) -> int:
        args = self.args
        t0 = time.monotonic()
        expected = {self.plan.fqn(n) for n in self.plan.names}
        up = warned = False
        seen: set[str] = set()
        while not self.stop.is_set():
            for c in self.sup.poll():
                finite_end = c.returncode == 0 and c.name in ("camera", IN_PROCESS)
                if finite_end:
                    self.log(f"{c.name} finished (exit code 0); waiting up to {args.drain:.1f} s for the "
                             "last decisions")
                    self._drain(monitor)
                    return 0
                self._failed_child = c.name
                when = "failed to start" if not up else "stopped unexpectedly"
                tail = "\n".join(f"    {line}" for line in list(c.tail)[-12:]) or "    (no output)"
                self.log(f"node {_culprit(c)} {when} ({_describe(c.returncode)} after "
                         f"{time.monotonic() - c.started:.1f} s); its last output:\n{tail}")
                self.log("stopping the other nodes")
                return 1
            late = time.monotonic() - t0 > args.startup_timeout
            if not up:
                seen = monitor.seen_nodes()
                missing = expected - seen
                if not missing:
                    up = True
                    self.log(f"line up: {', '.join(sorted(expected))} ({time.monotonic() - t0:.1f} s)")
                elif late and not warned:
                    warned = True  # once; "line up" follows if they appear later
                    self.log(_still_waiting(missing, args.startup_timeout))
            # the camera is released once the line is up, or after --startup-timeout when the
            # camera itself is up but another node is not (the gate then warns as well)
            if self.gate and (up or (late and self.plan.fqn("camera") in seen)):
                error = self._open_gate(monitor, t0)
                if error:
                    self.log(f"cannot start the camera: {error}")
                    return 1
            self.stop.wait(0.1)
        self.log(f"{self.signal_name or 'stop'} received: stopping the line")
        return 0

    def _open_gate(self, monitor, t0: float) -> str | None:
        """Release the held camera once its consumers and the monitor are connected (or
        after --startup-timeout, with a warning). Returns an error text on failure."""
        consumers = sum(n in self.plan.names for n in IMAGE_CONSUMERS)
        ready = monitor.matched() and \
            monitor.subscribers(self.plan.fqn("camera/image_raw")) >= consumers
        late = time.monotonic() - t0 > self.args.startup_timeout
        if not ready and not late:
            return None
        if not ready:
            self.log("consumers still not connected; starting the camera anyway")
        time.sleep(0.5)  # the camera's own view of the graph settles a moment after ours
        error = monitor.set_param(self.plan.fqn("camera"), "trigger_mode", "free")
        self.gate = False
        if error is None:
            self.log(f"camera released: free-running ({time.monotonic() - t0:.1f} s after start)")
        return error

    def _drain(self, monitor) -> None:
        deadline = time.monotonic() + self.args.drain
        eos = monitor.end_of_stream or {}
        frames = eos.get("frames")
        while time.monotonic() < deadline and not self.stop.is_set():
            if isinstance(frames, int) and monitor.decided() >= frames:
                break
            time.sleep(0.05)


def _still_waiting(missing: set[str], timeout: float) -> str:
    """The warning for nodes that are not on the ROS graph after --startup-timeout (their
    processes still run: a slow start, e.g. a TensorRT engine build, or a discovery problem)."""
    names = ", ".join(sorted(missing))
    it = "it is" if len(missing) == 1 else "they are"
    return (f"still waiting for {names}: not on the ROS graph after {timeout:g} s (--startup-timeout); "
            f"{it} still starting, the line keeps waiting (a slow start such as a TensorRT engine build, "
            "or DDS discovery: see docs/troubleshooting.md)")


def _culprit(child) -> str:
    """The node to name: the child itself, or for the in-process line the node whose
    construction failed or that crashed (run_nodes prints `failed to start: node <name>: ...`
    or `node <name> crashed: ...`)."""
    if child.name != IN_PROCESS:
        return child.name
    for line in reversed(child.tail):
        m = re.search(r"\[defect_perception\] (?:failed to start: )?node (\w+)(?::| crashed:)", line)
        if m:
            return f"{m.group(1)} (in the in-process line)"
    return "in-process line"


def _describe(code: int) -> str:
    from defect_perception.launcher.supervisor import describe_exit

    return describe_exit(code)
