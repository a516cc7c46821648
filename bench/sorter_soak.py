"""Soak benchmark: N parts at R parts/s through the sorter into the Modbus PLC simulator,
with PLC crashes (SIGKILL + restart) during the run.

Processes: `defect-perception plc-sim` (restarted), the sorter node, and this script as the
camera + inspector + anomaly (it publishes camera_info and both results per part and
listens to sorter/decision). Reports lost decisions, duplicate decisions, duplicate
actuations at the PLC, missing actuations, and decision latency after the last result
(sorter-internal, from the decision JSON, and as observed here across two DDS hops).

    python bench/sorter_soak.py                       # 10,000 parts at 20/s (~9 min)
    python bench/sorter_soak.py --parts 200 --no-docs # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NS = "/soak"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_plc(port: int, log: Path, retain: Path | None = None) -> subprocess.Popen:
    extra = ["--retain", str(retain)] if retain else []
    return subprocess.Popen([sys.executable, "-m", "defect_perception.cli", "plc-sim", "--port", str(port),
                             "--log", str(log), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pct(a, q) -> float:
    return float(np.percentile(np.asarray(a, float), q)) if len(a) else float("nan")


def run(args) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import String
    from tqdm import tqdm

    from defect_perception.core.result import dumps, make_result

    work = Path(args.workdir or tempfile.mkdtemp(prefix="sorter_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    plc_log = work / "plc.jsonl"
    cfg = work / "actuators.yaml"
    cfg.write_text(f"actuators:\n  - {{type: modbus, name: plc, port: {port}, ack_timeout_ms: 300,"
                   f" heartbeat_ms: 500, backoff_min_ms: 50, backoff_max_ms: 500}}\n")
    retain = None if args.no_retain else work / "plc_retain.txt"
    plc = start_plc(port, plc_log, retain)
    time.sleep(1.0)
    sorter = subprocess.Popen(
        [sys.executable, "-m", "defect_perception.nodes.sorter", "--ros-args", "-r", f"__ns:={NS}",
         "-p", "sources:=[inspector,anomaly]", "-p", f"window_ms:={args.window_ms}",
         "-p", f"audit_db:={work / 'audit.sqlite'}", "-p", f"actuators_config:={cfg}"],
        stdout=open(work / "sorter.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115

    rclpy.init()
    node = rclpy.create_node("soak_feeder", namespace=NS)
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    info_pub = node.create_publisher(CameraInfo, "camera/camera_info", qos)
    res_pub = {s: node.create_publisher(String, f"{s}/result", qos) for s in ("inspector", "anomaly")}
    last_sent: dict[int, float] = {}
    received: list[tuple[int, float, dict]] = []

    def on_decision(m: String) -> None:
        d = json.loads(m.data)
        received.append((d["stamp_ns"], time.monotonic(), d))

    node.create_subscription(String, "sorter/decision", on_decision, qos)
    diag: list[tuple[int, str, dict]] = []  # (level, message, values) of the sorter's /diagnostics

    def on_diag(m: DiagnosticArray) -> None:
        for st in m.status:
            if st.name.endswith("/sorter"):
                diag.append((st.level[0] if isinstance(st.level, bytes) else int(st.level), st.message,
                             {kv.key: kv.value for kv in st.values}))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)

    def spin_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            rclpy.spin_once(node, timeout_sec=min(left, 0.01))

    t_wait = time.monotonic()
    while not (all(p.get_subscription_count() > 0 for p in [info_pub, *res_pub.values()])
               and node.count_publishers(f"{NS}/sorter/decision") > 0):
        spin_for(0.05)
        if time.monotonic() - t_wait > 60:
            raise SystemExit("sorter did not come up; see " + str(work / "sorter.log"))
    spin_for(0.5)

    rng = random.Random(0)
    n, period = args.parts, 1.0 / args.rate
    restart_at = {int(n * (k + 1) / (args.restarts + 1)) for k in range(args.restarts)}
    plc_down_until = None
    restarts_done = 0
    t_start = time.monotonic()
    bar = tqdm(total=n, desc="parts", unit="part", mininterval=2.0, disable=args.quiet)
    for i in range(n):
        if i in restart_at:  # PLC crash: killed, back after args.plc_down_s
            plc.send_signal(signal.SIGKILL)
            plc.wait()
            plc_down_until = time.monotonic() + args.plc_down_s
        if plc_down_until is not None and time.monotonic() >= plc_down_until:
            plc = start_plc(port, plc_log, retain)
            plc_down_until = None
            restarts_done += 1
        stamp = node.get_clock().now().nanoseconds
        m = CameraInfo(width=640, height=480)
        m.header.frame_id = "camera"
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        info_pub.publish(m)
        u = rng.random()
        verdict = "reject" if u < 0.1 else "review" if u < 0.15 else "pass"
        infer = rng.uniform(0.002, 0.008)  # results arrive a few ms after the frame, in either order
        spin_for(infer)
        order = ["inspector", "anomaly"] if rng.random() < 0.5 else ["anomaly", "inspector"]
        for src in order:
            r = make_result(stamp_ns=stamp, frame_id="camera", source=src,
                            verdict=verdict if src == "inspector" else "pass", label="short", score=0.9,
                            model={"name": f"{src}-m", "sha256": None}, latency_ms={"infer": infer * 1000})
            res_pub[src].publish(String(data=dumps(r)))
        last_sent[stamp] = time.monotonic()
        bar.update(1)
        next_t = t_start + (i + 1) * period
        spin_for(max(0.0, next_t - time.monotonic()))
    bar.close()
    if plc_down_until is not None:
        spin_for(max(0.0, plc_down_until - time.monotonic()))
        plc = start_plc(port, plc_log, retain)
        restarts_done += 1
    feed_s = time.monotonic() - t_start
    spin_for(args.window_ms / 1000 + 1.0)

    # wait for the PLC to have every part (queue drained), at most 60 s
    def plc_parts() -> list[dict]:
        if not plc_log.exists():
            return []
        return [e for e in (json.loads(x) for x in plc_log.read_text().splitlines() if x.strip())
                if e["event"] == "part"]

    t_drain = time.monotonic()
    while len({e["stamp_ns"] for e in plc_parts()}) < len(last_sent) and time.monotonic() - t_drain < 60:
        spin_for(0.5)
    drain_s = time.monotonic() - t_drain
    sorter.send_signal(signal.SIGINT)
    try:
        sorter_rc = sorter.wait(30)
    except subprocess.TimeoutExpired:
        sorter.kill()
        sorter_rc = "killed"
    plc.send_signal(signal.SIGINT)
    plc.wait(10)
    node.destroy_node()
    rclpy.shutdown()

    stamps = set(last_sent)
    got = [s for s, _, _ in received]
    uniq = set(got)
    events = [json.loads(x) for x in plc_log.read_text().splitlines() if x.strip()]
    parts_at_plc = [e["stamp_ns"] for e in events if e["event"] == "part"]
    plc_uniq = set(parts_at_plc)
    first = {}
    for s, t, d in received:
        first.setdefault(s, (t, d))
    internal = [d["latency_ms"]["decision"] for _, d in first.values() if "decision" in d["latency_ms"]]
    observed = [(t - last_sent[s]) * 1000 for s, (t, d) in first.items() if s in last_sent]
    rejects = {s for s, (_, d) in first.items() if d["verdict"] == "reject"}
    reject_events = [e for e in events if e["event"] == "part" and e["stamp_ns"] in rejects]
    con = sqlite3.connect(work / "audit.sqlite")
    audited = {r[0] for r in con.execute("SELECT stamp_ns FROM decisions")}
    fail_safe = con.execute("SELECT COUNT(*) FROM decisions WHERE fail_safe=1").fetchone()[0]
    con.close()
    total_p99 = [float(v["latency_p99_ms"]) for _, _, v in diag if v.get("latency_p99_ms", "nan") != "nan"]
    total_p50 = [float(v["latency_p50_ms"]) for _, _, v in diag if v.get("latency_p50_ms", "nan") != "nan"]
    outage_reports = [m for lvl, m, _ in diag if lvl >= 1]
    commit_p99 = [float(v["audit_commit_p99_ms"]) for _, _, v in diag if "audit_commit_p99_ms" in v]
    publish_p99 = [float(v["publish_p99_ms"]) for _, _, v in diag if "publish_p99_ms" in v]
    out = {
        "parts": n, "rate_hz": args.rate, "feed_s": round(feed_s, 1), "plc_restarts": restarts_done,
        "plc_down_s_each": args.plc_down_s, "plc_retains_counter": not args.no_retain,
        "decisions_unique": len(uniq), "lost_decisions": len(stamps - uniq),
        "duplicate_decisions": len(got) - len(uniq), "audited": len(audited & stamps),
        "fail_safe_decisions": fail_safe,
        "plc_parts_unique": len(plc_uniq & stamps), "missing_at_plc": len(stamps - plc_uniq),
        "duplicate_actuations": len(parts_at_plc) - len(plc_uniq),
        "plc_resends_ignored": sum(1 for e in events if e["event"] == "resend"),
        "rejects": len(rejects), "rejects_at_plc": len(reject_events),
        "heartbeat_lost_events": sum(1 for e in events if e["event"] == "heartbeat_lost"),
        "drain_s": round(drain_s, 1),
        "decision_ms_internal": {"p50": pct(internal, 50), "p99": pct(internal, 99),
                                 "max": max(internal or [0])},
        "decision_ms_observed": {"p50": pct(observed, 50), "p99": pct(observed, 99),
                                 "max": max(observed or [0])},
        "decision_ms_total_windows": {"p50_median": pct(total_p50, 50), "p99_worst": max(total_p99 or [0]),
                                      "p99_median": pct(total_p99, 50), "reports": len(total_p99)},
        "audit_commit_ms": {"p99_median": pct(commit_p99, 50), "p99_worst": max(commit_p99 or [0])},
        "publish_ms": {"p99_median": pct(publish_p99, 50), "p99_worst": max(publish_p99 or [0])},
        "load_average": os.getloadavg(),
        "diagnostics_warn_reports": len(outage_reports),
        "diagnostics_example": outage_reports[0] if outage_reports else "",
        "sorter_exit": sorter_rc, "workdir": str(work),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores), "
                   f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    return out


def write_docs(res: dict, cmd: str, path: Path, notes: str = "") -> None:
    """Replace the sorter section of docs/benchmarks.md (markers keep other sections intact)."""
    notes = f"\n{notes.strip()}\n" if notes.strip() else ""
    i, o, t = res["decision_ms_internal"], res["decision_ms_observed"], res["decision_ms_total_windows"]
    ok = lambda c: "met" if c else "**MISSED**"
    ms3 = lambda d, a, b, c: f"{d[a]:.2f} / {d[b]:.2f} / {d[c]:.2f} ms"
    rows = [
        ("lost decisions", res["lost_decisions"], f"0 ({ok(res['lost_decisions'] == 0)})"),
        ("duplicate decisions", res["duplicate_decisions"], f"0 ({ok(res['duplicate_decisions'] == 0)})"),
        ("decisions in the audit log", f"{res['audited']} / {res['parts']}", "all"),
        ("parts missing at the PLC", res["missing_at_plc"], f"0 ({ok(res['missing_at_plc'] == 0)})"),
        ("duplicate actuations at the PLC", res["duplicate_actuations"],
         f"0 ({ok(res['duplicate_actuations'] == 0)})"),
        ("rejects / reject actuations at the PLC", f"{res['rejects']} / {res['rejects_at_plc']}", "equal"),
        ("resends recognised by the PLC (same counter)", res["plc_resends_ignored"], "-"),
        ("fail-safe decisions", res["fail_safe_decisions"], "0 (results always arrived)"),
        ("decision latency after the last result, in the sorter: p50 / p99 / max",
         ms3(i, "p50", "p99", "max"), f"p99 <= 5 ms ({ok(i['p99'] <= 5)})"),
        ("same incl. audit commit + publish (sliding 1000-decision window, reported 1/s): "
         "median p50 / median p99 / worst p99", ms3(t, "p50_median", "p99_median", "p99_worst"),
         f"p99 <= 5 ms ({ok(t['p99_worst'] <= 5)})"),
        ("audit commit alone (same windows): median p99 / worst p99",
         f"{res['audit_commit_ms']['p99_median']:.2f} / {res['audit_commit_ms']['p99_worst']:.2f} ms", "-")
        if "audit_commit_ms" in res else None,
        ("publish alone (same windows): median p99 / worst p99",
         f"{res['publish_ms']['p99_median']:.2f} / {res['publish_ms']['p99_worst']:.2f} ms", "-")
        if "publish_ms" in res else None,
        ("observed by the publisher (2 DDS hops): p50 / p99 / max", ms3(o, "p50", "p99", "max"), "-"),
        ("time to drain the PLC queue after the last part", f"{res['drain_s']} s", "-"),
        ("/diagnostics reports at WARN/ERROR (outages visible)", res["diagnostics_warn_reports"],
         "> 0 with restarts"),
    ]
    table = "\n".join(f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows if r)
    when = res.get("date") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    retain = ("last counter kept in retained memory, as docs/plc_robot.md recommends"
              if res.get("plc_retains_counter") else "no retained counter")
    load = " / ".join(f"{x:.1f}" for x in res.get("load_average", [])) or "not recorded"
    section = f"""<!-- BEGIN sorter -->
## Sorter soak (bench/sorter_soak.py)

Machine: {res.get('machine', platform.node())}, shared with other jobs (load average at the end
{load}); {when}.
Command: `{cmd}`

{res['parts']} parts at {res['rate_hz']:g} parts/s ({res['feed_s']} s) through the sorter (inspector +
anomaly joined by stamp, 10 % rejects, 5 % reviews, the two results in random order) -> Modbus TCP ->
`defect-perception plc-sim`. The PLC simulator was SIGKILLed and restarted {res['plc_restarts']} times
({retain}),
down {res['plc_down_s_each']:g} s each; decisions queued meanwhile and were delivered in order afterwards.

| metric | value | target |
|---|---|---|
{table}

"In the sorter" runs from the callback that receives a part's last result to the decision being built
(before the audit commit and publish); "incl. audit commit + publish" is the sorter's own diagnostic
latency; "observed" adds the DDS transport of the last result and of the decision plus both Python
executors on a loaded 2-core machine.
Example outage diagnostic: `{res['diagnostics_example'][:150]}`
{notes}<!-- END sorter -->"""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "<!-- BEGIN sorter -->" in text:
        a = text.index("<!-- BEGIN sorter -->")
        b = text.index("<!-- END sorter -->") + len("<!-- END sorter -->")
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=20.0, help="parts per second")
    ap.add_argument("--restarts", type=int, default=3, help="PLC crashes during the run")
    ap.add_argument("--plc-down-s", type=float, default=3.0, help="seconds the PLC stays down per crash")
    ap.add_argument("--window-ms", type=float, default=500.0)
    ap.add_argument("--no-retain", action="store_true",
                    help="PLC simulator without retained last counter (a crash between taking a part "
                         "and its acknowledge can then give a duplicate actuation)")
    ap.add_argument("--workdir", help="keep logs, audit DB and PLC log here (default: a temp dir)")
    ap.add_argument("--json", help="write the numbers to this JSON file")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--from-json", help="only rewrite docs/benchmarks.md from a saved --json file")
    ap.add_argument("--notes", help="markdown file appended to the section (e.g. earlier runs)")
    args = ap.parse_args()
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        notes = Path(args.notes).read_text() if args.notes else ""
        write_docs(res, res.get("command", "python bench/sorter_soak.py"), REPO / "docs" / "benchmarks.md",
                   notes)
        return 0
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if "ROS_DOMAIN_ID" in os.environ:
        res = run(args)
    else:  # a private domain so other runs on this machine do not interfere
        from domain_coordinator import domain_id

        with domain_id() as d:
            os.environ["ROS_DOMAIN_ID"] = str(d)
            res = run(args)
    res["command"] = "python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]])
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if not args.no_docs:
        write_docs(res, res["command"], REPO / "docs" / "benchmarks.md")
    ok = res["lost_decisions"] == 0 and res["duplicate_actuations"] == 0 and res["missing_at_plc"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
