"""`defect-perception evaluate-line`: replay a labelled recording through the REAL line and
write a shift report (HTML + JSON) comparing its decisions with the labels.

    defect-perception evaluate-line --bag REC [--labels FILE] --config config/line.yaml --report OUT/
    defect-perception evaluate-line --compare REPORT_A REPORT_B --report OUT/

The line is started by the launcher of `defect-perception line` (same node set, same
parameter file, same process supervision). The camera waits (trigger mode) until every
node is up and connected, then replays the recording paced on the acknowledgement of each
part's decision, so no frame is lost however slow the machine (`--rate` replays at a fixed
rate instead, which shows what a real line at that rate would drop or fail safe). A
collector node in this process records every frame, label, result and decision.

Replay-specific settings (applied unless you override them with --param): the sorter's
deadline counts from arrival (the recorded stamps are old), its audit log goes into the
report folder, and it drives no PLC or robot (`actuators_config` empty).

Exit codes: 0 complete report; 1 no complete report (the error is printed and written to
report.json with "complete": false); 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
from pathlib import Path

from defect_perception.nodes.base import BackgroundNode

DEFAULT_ACK_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from defect_perception.line_spec import DEFAULT_NAMESPACE, DEFAULT_PARAMS_FILE

    parser.add_argument("--bag", metavar="REC", help="rosbag2 folder to replay (sqlite3 or mcap)")
    parser.add_argument("--labels", metavar="FILE",
                        help="sidecar labels (.csv/.json/.jsonl; keyed by frame index or stamp_ns); default: "
                             "the labels recorded in the bag")
    parser.add_argument("--report", metavar="OUT",
                        help="folder for the report (index.html, report.json, ...)")
    parser.add_argument("--config", default=DEFAULT_PARAMS_FILE,
                        help=f"line parameter file ({DEFAULT_PARAMS_FILE})")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help="namespace of the line (default /line)")
    parser.add_argument("--nodes", help="comma-separated nodes to start (default: every node that can run)")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NODE.NAME=VALUE",
                        help="override one parameter (repeatable), e.g. -p inspector.reject_threshold=0.7")
    parser.add_argument("--rate", type=float, default=0.0, metavar="HZ",
                        help="replay at a fixed rate instead of pacing on each decision (frames may then be "
                             "late or fail safe, as on a real line)")
    parser.add_argument("--ack-timeout", type=float, default=DEFAULT_ACK_TIMEOUT, metavar="S",
                        help=f"ack pacing: seconds to wait for a part's decision before the next frame "
                             f"(default {DEFAULT_ACK_TIMEOUT:.0f})")
    parser.add_argument("--sweep", action="store_true",
                        help="store raw scores and add threshold sweep curves (escape vs false reject)")
    parser.add_argument("--compare", nargs=2, metavar=("REPORT_A", "REPORT_B"),
                        help="compare two reports (decisions that flipped, with images) into --report")
    parser.add_argument("--gallery", type=int, default=24, metavar="N",
                        help="at most N escapes and N false rejects in the gallery (default 24)")
    parser.add_argument("--in-process", action="store_true", help="run the line's nodes in one process")
    parser.add_argument("--startup-timeout", type=float, default=60.0,
                        help="seconds for the line to come up and connect (default 60)")
    parser.add_argument("--drain", type=float, default=10.0,
                        help="seconds to wait for the last decisions after the recording ends (default 10)")
    parser.add_argument("--quiet", action="store_true",
                        help="only warnings from the nodes, no per-part lines")


def run(args: argparse.Namespace) -> int:
    from defect_perception.evaluation import EvaluationError

    if args.compare:
        return _run_compare(args)
    if not args.bag or not args.report:
        print("defect-perception evaluate-line: --bag REC and --report OUT are required "
              "(or --compare REPORT_A REPORT_B --report OUT)", file=sys.stderr)
        return 2
    try:
        return Evaluation(args).run()
    except EvaluationError as e:
        print(f"defect-perception evaluate-line: {e}", file=sys.stderr)
        return 1


def _run_compare(args: argparse.Namespace) -> int:
    from defect_perception.evaluation import EvaluationError
    from defect_perception.evaluation.compare import compare, write_compare

    if not args.report:
        print("defect-perception evaluate-line: --compare needs --report OUT", file=sys.stderr)
        return 2
    try:
        cmp = compare(*args.compare)
    except EvaluationError as e:
        print(f"defect-perception evaluate-line: {e}", file=sys.stderr)
        return 1
    page = write_compare(args.report, cmp)
    counts = cmp["flip_counts"]
    print(f"{len(cmp['flipped'])} of {cmp['common_parts']} decisions flipped (fixed {counts['fixed']}, "
          f"broke {counts['broke']}); report: {page}")
    return 0


class Evaluation:
    """One replay: preflight (recording, labels, plan), the line, the collector, the report."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.report)
        self.meta: dict = {}
        self.error: str | None = None

    # ------------------------------------------------------------------ preflight
    def _plan(self):
        from defect_perception.line_spec import LineSpecError, plan_line

        a = self.args
        nodes = a.nodes.split(",") if a.nodes else None
        bag = str(Path(a.bag).resolve())
        try:
            first = plan_line(a.config, a.namespace, nodes, a.param)
        except LineSpecError as e:
            raise self._fail(f"line cannot be built: {e}") from None
        self.user_config = {"namespace": first.namespace, "nodes": first.names, "params": first.params}
        stage = first.last_stage_topic()
        cam = {"source": "rosbag", "uri": bag, "on_end": "exit", "trigger_mode": "topic", "restamp": False,
               "max_frames": 0, "bad_frame": "forward"}
        if a.rate > 0:
            cam.update({"pacing": "fps", "fps": float(a.rate), "ack_topic": ""})
        else:
            cam.update({"pacing": "max", "ack_topic": stage or "", "ack_timeout": float(a.ack_timeout)})
        extra = {"camera": cam,
                 "sorter": {"deadline_base": "arrival", "actuators_config": "",
                            "audit_db": str((self.out / "audit" / "sorter_audit.sqlite").resolve())}}
        try:
            return plan_line(a.config, a.namespace, nodes, a.param, extra), stage
        except LineSpecError as e:
            raise self._fail(f"line cannot be built: {e}") from None

    def _fail(self, error: str):
        from defect_perception.evaluation import EvaluationError
        from defect_perception.evaluation.report import write_failure

        self.error = error
        write_failure(self.out, self.meta, error)
        return EvaluationError(f"{error} (no complete report written; see {self.out / 'report.json'})")

    def run(self) -> int:
        from defect_perception.evaluation import EvaluationError
        from defect_perception.evaluation.labels import load_sidecar, match_sidecar
        from defect_perception.evaluation.provenance import config_hash, software_version
        from defect_perception.evaluation.recording import open_recording
        from defect_perception.evaluation.report import build_report, now_iso, write_report

        a = self.args
        t0 = time.monotonic()
        self.meta = {"recording": str(Path(a.bag).resolve()), "labels_source": None, "config_file": a.config,
                     "pacing": f"fixed rate {a.rate} Hz" if a.rate > 0 else
                     f"acknowledged by each decision (timeout {a.ack_timeout} s)",
                     "started": now_iso(), "software": software_version(),
                     "command": "defect-perception evaluate-line "
                                + " ".join(shlex.quote(x) for x in sys.argv[2:])}
        plan, stage = self._plan()
        # the hash covers the line as configured (file + --param), not the replay's own settings
        # (bag path, pacing, audit folder), so two replays of one setup share it
        user = self.user_config["params"]
        replay = {n: {k: v for k, v in plan.params[n].items() if user.get(n, {}).get(k) != v}
                  for n in plan.names}
        self.meta.update(config_file=str(plan.params_file), config_hash=config_hash(self.user_config),
                         config=self.user_config, replay_settings=replay, nodes=plan.names,
                         skipped_nodes=dict(plan.skipped), decision_topic=stage)
        try:
            rec = open_recording(a.bag, image_topic=plan.params["camera"].get("topic") or None)
        except EvaluationError as e:
            raise self._fail(str(e)) from None
        self.meta.update(image_topic=rec.image_topic, frames=len(rec.frames))
        sidecar, unmatched = None, []
        if a.labels:
            try:
                sidecar, unmatched = match_sidecar(load_sidecar(a.labels), rec.stamps, f"labels {a.labels}")
            except EvaluationError as e:
                raise self._fail(str(e)) from None
            self.meta["labels_source"] = f"sidecar {Path(a.labels).resolve()}"
            self.meta["labels_unmatched"] = [e.key() for e in unmatched[:50]]
            self.meta["labels_unmatched_count"] = len(unmatched)
        elif rec.labels:
            self.meta["labels_source"] = f"recording topic {rec.label_topic}"
        else:
            self.meta["labels_source"] = "none (the recording carries no labels and no --labels was given)"
        if stage is None:
            raise self._fail("no processing node can run, so there is nothing to evaluate: "
                             + "; ".join(f"{n}: {r}" for n, r in plan.skipped))
        self.out.mkdir(parents=True, exist_ok=True)
        # matplotlib takes seconds to import on a busy machine: overlap it with the replay
        threading.Thread(target=__import__, args=("defect_perception.evaluation.plots",), daemon=True).start()
        print(f"evaluate-line: {len(rec.frames)} frames from {rec.path} ({rec.image_topic}); labels: "
              f"{self.meta['labels_source']}; nodes {', '.join(plan.names)}; decisions from {stage}",
              flush=True)

        events, line_error = self._replay(plan, stage, len(rec.frames))
        self.meta.update(finished=now_iso(), duration_s=round(time.monotonic() - t0, 2))
        from defect_perception.evaluation.records import join_parts

        parts, join = join_parts(rec, events, sidecar)
        cards = self._cards(plan)
        report = build_report(self.meta, parts, join, do_sweep=a.sweep, cards=cards, error=line_error)
        page = write_report(self.out, report, parts, events, (str(rec.path), rec.image_topic), a.gallery,
                            cards)
        self._print_summary(report, page)
        return 0 if report["complete"] else 1

    def _cards(self, plan) -> dict[str, dict]:
        """Model cards of the vision nodes, with the threshold the node really used (its live
        parameter when set, else the card's): the sweep's operating point."""
        from defect_perception.core.model_card import ModelCardError, load_card
        from defect_perception.core.paths import resolve

        cards = {}
        for name, param in (("inspector", "reject_threshold"), ("anomaly", "image_threshold")):
            params = plan.params.get(name, {})
            if name not in plan.names or not params.get("model"):
                continue
            try:
                card = load_card(resolve(str(params["model"])))
            except ModelCardError:
                continue
            value = params.get(param)
            if isinstance(value, (int, float)) and value != -1:
                key = "image" if card.get("task") == "anomaly" else "reject"
                card["thresholds"] = dict(card.get("thresholds") or {}, **{key: float(value)})
            cards[name] = card
        return cards

    # ------------------------------------------------------------------ the line
    def _replay(self, plan, stage: str, n_frames: int) -> tuple[dict, str | None]:
        from defect_perception.commands import line

        a = self.args
        # the launcher's own options, parsed by its own parser (so new options keep their defaults)
        lparser = argparse.ArgumentParser(add_help=False)
        line.add_arguments(lparser)
        largv = ["--config", str(a.config), "--namespace", plan.namespace, "--bag", str(a.bag),
                 "--startup-timeout", str(a.startup_timeout), "--drain", str(a.drain)]
        largv += ["--in-process"] * a.in_process + ["--quiet", "--no-parts"] * a.quiet
        largs = lparser.parse_args(largv)
        largs.nodes, largs.param = a.nodes, list(a.param)
        collector = Collector(plan, stage)
        launcher = line.Launcher(plan, largs)
        starter = threading.Thread(target=collector.start_when_ready,
                                   args=(launcher, a.startup_timeout, n_frames), daemon=True)
        try:
            starter.start()
            code = launcher.run()
        finally:
            collector.done.set()
            starter.join(timeout=5.0)
            collector.close()
        error = collector.error
        if error is None and code != 0:
            failed = launcher._failed_child or "a node"
            tail = next((list(c.tail)[-6:] for c in launcher.sup.children if c.name == failed), [])
            error = (f"the line failed: node {failed} exited with an error (launcher exit code {code}); "
                     f"last output: {' | '.join(tail) or '(none)'}")
        if error is None and not collector.started:
            error = "the line stopped before the replay started"
        return collector.events(), error

    def _print_summary(self, report: dict, page: Path) -> None:
        c, r = report["counts"], report["rates"]

        def pct(x):
            return "-" if x["rate"] is None else f"{100 * x['rate']:.2f}% [{100 * x['ci95'][0]:.1f}, " \
                                                 f"{100 * x['ci95'][1]:.1f}]"
        print(f"evaluate-line: frames {c['frames']}, seen {c['seen']}, decided {c['decided']}; "
              f"escape {pct(r['escape'])}, false reject {pct(r['false_reject'])}, review {pct(r['review'])}",
              flush=True)
        if report["complete"]:
            print(f"evaluate-line: report complete: {page}", flush=True)
        else:
            print(f"evaluate-line: report NOT complete: {report['error']} ({page})", file=sys.stderr,
                  flush=True)


class Collector(BackgroundNode):
    """An rclpy node on a private context in this process: records every frame (camera_info),
    label, result and decision with its receive time, and releases the camera once the line
    is connected."""

    def __init__(self, plan, stage: str):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo
        from std_msgs.msg import String

        from defect_perception.evaluation.records import empty_events

        self.plan, self.stage = plan, stage
        self.error: str | None = None
        self.started = False
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._events = empty_events()
        self._events["malformed"] = []
        super().__init__("evaluate_line", plan.namespace)
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        n.create_subscription(CameraInfo, "camera/camera_info", self._on_info, qos)
        n.create_subscription(String, "camera/label", lambda m: self._on_json(m, "camera/label", "labels"),
                              qos)
        n.create_subscription(String, "camera/status", lambda m: self._on_json(m, "camera/status", "status"),
                              QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                                         durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.sources = [s for s in ("inspector", "anomaly") if s in plan.names]
        for src in self.sources:
            topic = f"{src}/result"
            if topic != stage:
                n.create_subscription(String, topic, lambda m, s=src: self._on_result(m, s), qos)
        self.decision_sub = n.create_subscription(String, stage, self._on_decision, qos)
        self.start()

    # ------------------------------------------------------------------ callbacks
    def _on_info(self, msg) -> None:
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        with self._lock:
            self._events["frames"].append({"stamp_ns": stamp, "t": time.monotonic()})

    def _parse(self, msg, topic: str) -> dict | None:
        from defect_perception.core.result import ResultError, parse_result

        try:
            return parse_result(msg.data, topic)
        except ResultError as e:
            with self._lock:
                self._events["malformed"].append({"topic": topic, "error": str(e), "data": msg.data[:300]})
            return None

    def _on_json(self, msg, topic: str, key: str) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError as e:
            data = {"error": f"{topic}: malformed JSON ({e})"}
        with self._lock:
            self._events[key].append(data)

    def _on_result(self, msg, source: str) -> None:
        res = self._parse(msg, f"{source}/result")
        if res is not None:
            with self._lock:
                self._events["results"].setdefault(source, []).append({"t": time.monotonic(), "result": res})

    def _on_decision(self, msg) -> None:
        t = time.monotonic()
        res = self._parse(msg, self.stage)
        if res is None:
            return
        with self._lock:
            self._events["decisions"].append({"t": t, "decision": res})
            src = self.stage.split("/")[0]
            if src in self.sources:  # no sorter: the last vision stage decides
                self._events["results"].setdefault(src, []).append({"t": t, "result": res})

    def events(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._events))

    # ------------------------------------------------------------------ start-up
    def _missing(self) -> list[str]:
        """What the line still lacks before frames may flow (nodes, and the connections
        the frames and decisions travel over)."""
        n, ns = self.node, self.plan.namespace.rstrip("/")
        seen = {f"{s.rstrip('/')}/{name}" for name, s in n.get_node_names_and_namespaces()}
        missing = [f"node {self.plan.fqn(x)}" for x in self.plan.names if self.plan.fqn(x) not in seen]
        need = {f"{ns}/camera/image_raw": len(self.sources)}
        need[f"{ns}/{self.stage}"] = 2 if self.plan.params["camera"].get("ack_topic") else 1
        if "sorter" in self.plan.names:
            for src in self.sources:
                topic = f"{ns}/{src}/result"
                need[topic] = max(need.get(topic, 0), 2)  # the sorter and the collector
        for topic, k in need.items():
            if n.count_subscribers(topic) < k:
                missing.append(f"{k} subscriber(s) on {topic}")
        if self.decision_sub.get_publisher_count() < 1:
            missing.append(f"a publisher on {ns}/{self.stage} matched with the collector")
        return missing

    def start_when_ready(self, launcher, timeout: float, n_frames: int) -> None:
        """Wait for the line, then switch the camera from trigger mode to free-run."""
        t0 = time.monotonic()
        missing = self._missing()
        while missing and not self.done.is_set() and not launcher.stop.is_set():
            if time.monotonic() - t0 > timeout:
                self.error = (f"the line did not come up within {timeout:.0f} s: still missing "
                              + "; ".join(missing))
                launcher.stop.set()
                return
            time.sleep(0.1)
            missing = self._missing()
        if self.done.is_set() or launcher.stop.is_set():
            return
        time.sleep(1.0)  # the graph shows endpoints before every pair has matched on both sides
        try:
            self._set_camera("trigger_mode", "free")
        except RuntimeError as e:
            self.error = str(e)
            launcher.stop.set()
            return
        self.started = True
        launcher.log(f"evaluate-line: line connected after {time.monotonic() - t0:.1f} s; replaying "
                     f"{n_frames} frames")

    def _set_camera(self, name: str, value) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        srv = f"{self.plan.fqn('camera')}/set_parameters"
        client = self.node.create_client(SetParameters, srv)
        try:
            if not client.wait_for_service(timeout_sec=10.0):
                raise RuntimeError(f"camera parameter service {srv} not available")
            req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
            fut = client.call_async(req)
            ok = threading.Event()
            fut.add_done_callback(lambda _f: ok.set())
            if not ok.wait(10.0) or fut.result() is None:
                raise RuntimeError(f"no answer from {srv} when setting {name}={value!r}")
            res = fut.result().results[0]
            if not res.successful:
                raise RuntimeError(f"camera refused {name}={value!r}: {res.reason}")
        finally:
            self.node.destroy_client(client)

