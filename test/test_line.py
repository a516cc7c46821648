"""`defect-perception line`: the node set from line_spec, the real launcher as a subprocess
(nodes found on the ROS graph, clean stop, failure naming the node, in-process mode)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from procs import stop

from defect_perception.launcher.tally import PartTally
from defect_perception.line_spec import LineSpecError, plan_line, read_params_file

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, sections: dict) -> Path:
    p = tmp_path / "line.yaml"
    p.write_text(yaml.safe_dump({k: {"ros__parameters": v} for k, v in sections.items()}))
    return p


# ---- line_spec: which nodes, which parameters -------------------------------------------
def test_plan_skips_nodes_without_model_and_says_why(tmp_path):
    cfg = write_config(tmp_path, {"camera": {"source": "synthetic"},
                                  "inspector": {"model": str(tmp_path / "no-such-model")},
                                  "anomaly": {"model": str(tmp_path / "no-such-model")},
                                  "sorter": {"sources": ["inspector"]}})
    plan = plan_line(cfg)
    assert plan.names == ["camera"]
    reasons = dict(plan.skipped)
    assert "no-such-model" in reasons["inspector"]
    assert "inspector" in reasons["sorter"]
    assert plan.params["camera"]["wait_subscribers"] == 0  # nothing consumes images


def test_plan_runs_inspector_when_its_model_exists(tmp_path):
    from defect_perception.inference.testing import make_classifier

    model = make_classifier(tmp_path / "m")
    cfg = write_config(tmp_path, {"camera": {"source": "synthetic"}, "inspector": {"model": str(model)}})
    plan = plan_line(cfg, nodes=["camera", "inspector"])
    assert plan.names == ["camera", "inspector"]
    assert plan.params["camera"]["wait_subscribers"] == 1
    assert plan.last_stage_topic() == "inspector/result"


def test_sorter_joins_only_the_stages_that_run(tmp_path):
    from defect_perception.inference.testing import make_classifier

    model = make_classifier(tmp_path / "m")
    cfg = write_config(tmp_path, {"camera": {}, "inspector": {"model": str(model)},
                                  "anomaly": {"model": str(tmp_path / "missing")},
                                  "sorter": {"sources": ["inspector", "anomaly"]}})
    plan = plan_line(cfg)
    assert plan.names == ["camera", "inspector", "sorter"]
    assert plan.params["sorter"]["sources"] == ["inspector"]
    assert any("anomaly" in n and "not running" in n for n in plan.notes)
    assert plan.last_stage_topic() == "sorter/decision"
    kept = plan_line(cfg, overrides=["sorter.sources=[inspector, anomaly]"])
    assert kept.params["sorter"]["sources"] == ["inspector", "anomaly"] and not kept.notes


def test_explicitly_requested_node_that_cannot_run_is_an_error(tmp_path):
    cfg = write_config(tmp_path, {"camera": {}, "inspector": {"model": str(tmp_path / "missing")}})
    with pytest.raises(LineSpecError, match="inspector.*missing"):
        plan_line(cfg, nodes=["camera", "inspector"])
    with pytest.raises(LineSpecError, match="did you mean 'camera'"):
        plan_line(cfg, nodes=["camra"])


def test_overrides_are_typed_and_checked(tmp_path):
    cfg = write_config(tmp_path, {"camera": {"fps": 5.0, "source": "rosbag"}})
    plan = plan_line(cfg, nodes=["camera"], overrides=["camera.fps=12", "camera.source=synthetic",
                                                      "camera.wait_subscribers=3"])
    assert plan.params["camera"]["fps"] == 12.0 and isinstance(plan.params["camera"]["fps"], float)
    assert plan.params["camera"]["source"] == "synthetic"
    assert plan.params["camera"]["wait_subscribers"] == 3  # the user's value wins
    for bad in ("camera.fps", "fps=3", "camra.fps=3", "camera.fps=[1, {a: 2}]"):
        with pytest.raises(LineSpecError, match="--param"):
            plan_line(cfg, nodes=["camera"], overrides=[bad])


def test_param_file_keys_are_rewritten_to_fully_qualified_names(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("/**:\n  ros__parameters:\n    common: 1\n"
                 "/**/camera:\n  ros__parameters:\n    fps: 2.0\n"
                 "/cell2/inspector:\n  ros__parameters:\n    nested: {a: 1}\n")
    params = read_params_file(p, "/cell2")
    assert params["camera"] == {"common": 1, "fps": 2.0}
    assert params["inspector"] == {"common": 1, "nested.a": 1}
    plan = plan_line(p, namespace="cell2", nodes=["camera"])
    assert list(plan.ros_params()) == ["/cell2/camera"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera:\n  fps: 2.0\n")
    with pytest.raises(LineSpecError, match="ros__parameters"):
        read_params_file(bad)


def test_tally_counts_verdicts_fail_safe_and_label_agreement():
    t = PartTally()
    t.on_label({"stamp_ns": 1, "label": "pass"})
    t.on_label({"stamp_ns": 2, "label": "reject"})
    t.on_label({"stamp_ns": 3, "label": "reject"})
    line = t.on_result({"stamp_ns": 1, "verdict": "pass", "label": "normal", "score": 0.9})
    assert "PASS" in line and "normal 0.900" in line and "truth pass" in line
    t.on_result({"stamp_ns": 2, "verdict": "pass", "label": "normal", "score": 0.6})
    t.on_result({"stamp_ns": 3, "verdict": "reject", "label": "fail-safe",
                 "reason": "fail-safe reject: inspector missing"})
    assert t.parts == 3 and t.fail_safe == 1
    assert t.agreement() == (3, 2, 0)
    text = "\n".join(t.summary())
    assert "pass 2, reject 1, review 0" in text and "fail-safe: 1" in text and "2/3" in text


# ---- the launcher as a real process ---------------------------------------------------------
@contextmanager
def launcher(*args: str):
    """`defect-perception line ...` in its own process; output collected; always stopped."""
    cmd = [sys.executable, "-m", "defect_perception.cli", "line", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    proc.lines = lines
    proc.reader = reader
    try:
        yield proc
    finally:
        stop(proc, timeout=20)
        reader.join(timeout=5)


def child_pids(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for ln in lines if (m := re.search(r"started \S+ \(pid (\d+)\)", ln))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_line_nodes_appear_on_the_graph_and_stop_cleanly_on_sigint(ros_context):
    import rclpy

    ns = "/t_line_sigint"
    probe = rclpy.create_node("probe", context=ros_context)
    try:
        with launcher("--namespace", ns, "--nodes", "camera", "--diag", "1", "-p", "camera.source=synthetic",
                      "-p", "camera.fps=20.0", "-p", "camera.width=64", "-p", "camera.height=64") as proc:
            deadline = time.monotonic() + 30
            while f"{ns}/camera" not in probe.get_fully_qualified_node_names():
                assert proc.poll() is None, "".join(proc.lines)
                assert time.monotonic() < deadline, "camera not on the graph:\n" + "".join(proc.lines)
                time.sleep(0.1)
            while not (any("frame only" in ln for ln in proc.lines)
                       and any("diag camera:" in ln and "rate_hz=" in ln for ln in proc.lines)):
                assert time.monotonic() < deadline, "no part or diag line:\n" + "".join(proc.lines)
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0, "".join(proc.lines)
        out = "".join(proc.lines)
        assert "SIGINT received" in out and "summary: parts:" in out
        pids = child_pids(proc.lines)
        assert pids, out
        assert not [p for p in pids if alive(p)], f"children left running: {pids}"
    finally:
        probe.destroy_node()


@pytest.mark.parametrize("mode", [[], ["--in-process"]], ids=["per-process", "in-process"])
def test_node_that_fails_to_start_stops_the_line_and_is_named(tmp_path, mode):
    missing = tmp_path / "no_such_bag"
    with launcher(*mode, "--namespace", "/t_line_fail", "--nodes", "camera", "-p", "camera.source=rosbag",
                  "-p", f"camera.uri={missing}") as proc:
        code = proc.wait(timeout=60)
    out = "".join(proc.lines)
    assert code == 1, out
    assert re.search(r"node camera (\(in the in-process line\) )?failed to start", out), out
    assert str(missing) in out  # the camera's own error, shown from its last output lines
    assert not [p for p in child_pids(proc.lines) if alive(p)]


def test_bad_command_line_is_a_usage_error_without_starting_anything():
    r = subprocess.run([sys.executable, "-m", "defect_perception.cli", "line", "--nodes", "camera",
                        "-p", "camra.fps=3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "unknown node 'camra'" in r.stderr and "did you mean 'camera'" in r.stderr


def test_in_process_line_delivers_frames_to_the_inspector_and_ends_with_the_recording(tmp_path):
    from defect_perception.inference.testing import make_classifier

    model = make_classifier(tmp_path / "tiny")
    n = 6
    with launcher("--in-process", "--namespace", "/t_line_inproc", "--nodes", "camera,inspector",
                  "-p", "camera.source=synthetic", "-p", "camera.width=64", "-p", "camera.height=64",
                  "-p", "camera.fps=10.0", "-p", f"camera.max_frames={n}", "-p", "camera.on_end=exit",
                  "-p", "camera.defect_every=2", "-p", f"inspector.model={model}") as proc:
        code = proc.wait(timeout=90)
    out = "".join(proc.lines)
    assert code == 0, out
    part_lines = [ln for ln in proc.lines if re.search(r"\]\s+part\s+\d+\s", ln)]
    assert len(part_lines) == n, out
    assert f"summary: parts: {n} " in out
    assert "labelled parts" in out  # synthetic defects come with labels; the summary compares
    assert len(child_pids(proc.lines)) == 1  # one process hosts both nodes


def test_supervisor_escalates_to_sigterm_then_sigkill_and_prefixes_output(tmp_path):
    """A child that ignores SIGINT gets SIGTERM; one that ignores both gets SIGKILL."""
    import io

    from defect_perception.launcher.supervisor import Supervisor

    ignore = ("import signal, sys, time; {}; print('ready', flush=True); time.sleep(60)")
    out = io.StringIO()
    sup = Supervisor(out=out, colour=False)
    stubborn = sup.start("stubborn", [sys.executable, "-c", ignore.format(
        "signal.signal(signal.SIGINT, signal.SIG_IGN)")])
    deaf = sup.start("deaf", [sys.executable, "-c", ignore.format(
        "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)")])
    polite = sup.start("polite", [sys.executable, "-c", ignore.format("pass")])
    deadline = time.monotonic() + 30
    while out.getvalue().count("ready") < 3:
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.05)
    escalated = sup.stop_all(timeout=0.5, term_timeout=0.5)
    assert escalated == {"stubborn": "SIGTERM", "deaf": "SIGKILL"}
    assert stubborn.returncode == -signal.SIGTERM and deaf.returncode == -signal.SIGKILL
    assert polite.returncode != 0 and polite.name not in escalated  # KeyboardInterrupt on SIGINT
    assert "[polite]" in out.getvalue() and "deaf did not stop in time: sending SIGKILL" in out.getvalue()
    assert not any(alive(c.pid) for c in sup.children)
