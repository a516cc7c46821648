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
    p.write_text("/**:\n  ros__parameters:\n    use_sim_time: false\n"
                 "/**/camera:\n  ros__parameters:\n    fps: 2.0\n"
                 "/cell2/inspector:\n  ros__parameters:\n    queue_depth: 2\n")
    plan = plan_line(p, namespace="cell2", nodes=["camera"])
    assert list(plan.ros_params()) == ["/cell2/camera"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera:\n  fps: 2.0\n")
    with pytest.raises(LineSpecError, match="ros__parameters"):
        read_params_file(bad)


def test_values_are_fitted_to_the_declared_parameter_types(tmp_path):
    """`uri: 0` / `-p camera.uri=0` for a string and `fps: 5` for a double used to reach the node
    as integers, which rcl refuses at start ("... of type 'INTEGER', expecting type 'STRING'")."""
    p = tmp_path / "line.yaml"
    p.write_text("/**/camera:\n  ros__parameters:\n    source: opencv\n    fps: 5\n    uri: 0\n"
                 "    frame_id: 007\n    wait_timeout: 3\n"
                 "/**/sorter:\n  ros__parameters:\n    sources: [inspector]\n    window_ms: 500\n"
                 "/**/inspector:\n  ros__parameters:\n    roi: [0, 0, 10, 10]\n")
    params = read_params_file(p)
    assert params["camera"]["uri"] == 0 and params["camera"]["fps"] == 5  # the file as YAML reads it
    plan = plan_line(p, nodes=["camera"])
    cam = plan.params["camera"]
    assert cam["uri"] == "0" and cam["frame_id"] == "007"  # the text as written, not int 7
    assert cam["fps"] == 5.0 and type(cam["fps"]) is float and type(cam["wait_timeout"]) is float
    written = yaml.safe_load(plan.write_params(tmp_path / "out.yaml").read_text())
    assert written["/line/camera"]["ros__parameters"]["uri"] == "0"
    everything = plan_line(p, overrides=["camera.uri=1", "camera.speed=2", "inspector.roi=[1, 2, 3, 4]",
                                         "camera.frame_id=12.50", "camera.width=64.0"])
    assert everything.params["camera"]["uri"] == "1"
    assert everything.params["camera"]["frame_id"] == "12.50"  # the -p text, not 12.5
    assert type(everything.params["camera"]["speed"]) is float
    assert everything.params["camera"]["width"] == 64 and type(everything.params["camera"]["width"]) is int
    from defect_perception.line_spec import declared_params
    assert declared_params("inspector")["roi"] == "integer array"
    # inspector is skipped here (no model) but its section is still checked and typed
    assert read_params_file(p)["inspector"]["roi"] == [0, 0, 10, 10]


@pytest.mark.parametrize("section, override, message", [
    ("fps: fast", None,
     r"section '/\*\*/camera': camera parameter 'fps' expects a double, got 'fast' \(string\)"),
    ("restamp: 1", None, r"camera parameter 'restamp' expects a bool, got 1 \(integer\)"),
    ("uri:", None, r"camera parameter 'uri' expects a string, got no value"),
    (None, "camera.restamp=1",
     r"--param 'camera.restamp=1': camera parameter 'restamp' expects a bool, got 1"),
    (None, "camera.width=6.5", r"camera parameter 'width' expects an integer, got 6.5 \(double\)"),
    (None, "sorter.sources=inspector", r"sorter parameter 'sources' expects a string array, got 'inspector'"),
    (None, "inspector.roi=[a, b]", r"inspector parameter 'roi' expects an integer array, got \['a', 'b'\]"),
])
def test_value_of_the_wrong_type_names_file_node_parameter_value_and_type(tmp_path, section, override,
                                                                          message):
    p = tmp_path / "line.yaml"
    p.write_text("/**/camera:\n  ros__parameters:\n    source: synthetic\n" +
                 (f"    {section}\n" if section else ""))
    with pytest.raises(LineSpecError, match=message) as e:
        plan_line(p, nodes=["camera"], overrides=[override] if override else [])
    if section:
        assert f"parameter file {p}" in str(e.value)


def test_misspelt_parameter_names_are_errors_naming_node_and_closest_names(tmp_path):
    p = tmp_path / "line.yaml"
    p.write_text("/**/camera:\n  ros__parameters:\n    fsp: 3.0\n")
    with pytest.raises(LineSpecError) as e:
        plan_line(p, nodes=["camera"])
    assert f"parameter file {p}, section '/**/camera': node camera has no parameter 'fsp'" in str(e.value)
    assert "did you mean 'fps'" in str(e.value)
    p.write_text("/**/camera:\n  ros__parameters:\n    fps: 3.0\n")
    with pytest.raises(LineSpecError) as e:
        plan_line(p, nodes=["camera"], overrides=["camera.fsp=3"])
    assert "--param 'camera.fsp=3': node camera has no parameter 'fsp'" in str(e.value)
    assert "did you mean 'fps'" in str(e.value)
    with pytest.raises(LineSpecError, match="node inspector has no parameter 'reject_treshold'.*"
                                            "did you mean 'reject_threshold'"):
        plan_line(p, overrides=["inspector.reject_treshold=0.7"])
    # a section of a node that is skipped (no model) is checked all the same
    p.write_text("/**/anomaly:\n  ros__parameters:\n    model: /no/model\n    image_treshold: 0.5\n")
    with pytest.raises(LineSpecError, match="node anomaly has no parameter 'image_treshold'"):
        plan_line(p)
    # `/**` values go to the nodes that declare them; a name no node declares is an error
    p.write_text("/**:\n  ros__parameters:\n    diagnostics_period: 2\n    use_sim_time: false\n"
                 "/**/camera:\n  ros__parameters:\n    source: synthetic\n")
    plan = plan_line(p, nodes=["camera"])
    assert "diagnostics_period" not in plan.params["camera"]
    assert plan.params["camera"]["use_sim_time"] is False
    p.write_text("/**:\n  ros__parameters:\n    diagnostics_perod: 2\n")
    with pytest.raises(LineSpecError, match=r"section '/\*\*': no node of the line has a parameter "
                                            "'diagnostics_perod'; did you mean 'diagnostics_period'"):
        plan_line(p, nodes=["camera"])
    # a section for a node that is not part of the line (shared file): ignored, with a note
    p.write_text("/**/camra:\n  ros__parameters:\n    fps: 3.0\n")
    plan = plan_line(p, nodes=["camera"])
    assert any("'/**/camra' matches no node" in n and "did you mean 'camera'" in n for n in plan.notes)


def test_shipped_config_uses_only_declared_parameters_of_the_right_type():
    from defect_perception.line_spec import declared_params

    config = REPO / "config" / "line.yaml"
    plan_line(config)  # raises on any unknown name or value that does not fit
    for node, values in read_params_file(config).items():
        assert set(values) <= set(declared_params(node)), node


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


def test_in_process_failure_names_the_node_that_failed_or_crashed():
    from types import SimpleNamespace

    from defect_perception.commands.line import IN_PROCESS, _culprit

    def child(*tail):
        return SimpleNamespace(name=IN_PROCESS, tail=list(tail))

    crash = "[defect_perception] node camera crashed: ZeroDivisionError: x; exit code 1"
    start = "[defect_perception] failed to start: node inspector: model file missing"
    noise = "[INFO] [line.sorter]: the node sorter: up"
    assert _culprit(child(noise, crash)) == "camera (in the in-process line)"
    assert _culprit(child(start)) == "inspector (in the in-process line)"
    assert _culprit(child("[INFO] [line.camera]: node camera: started")) == "in-process line"


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


def test_docs_camera_uri_0_and_integer_fps_reach_the_camera_as_string_and_double(tmp_path):
    """docs/quickstart.md `-p camera.uri=0`, with `fps: 5` in the file: the camera used to exit
    with "... of type 'INTEGER', expecting type 'STRING'" before it ever tried the device."""
    cfg = write_config(tmp_path, {"camera": {"source": "opencv", "fps": 5, "width": 64, "height": 64}})
    with launcher("--config", str(cfg), "--namespace", "/t_line_uri0", "--nodes", "camera",
                  "-p", "camera.uri=0") as proc:
        deadline = time.monotonic() + 60
        # no camera here: it fails to open device '0'; with a camera plugged in the line comes up
        while proc.poll() is None and not any("line up:" in ln for ln in proc.lines):
            assert time.monotonic() < deadline, "".join(proc.lines)
            time.sleep(0.1)
    out = "".join(proc.lines)
    assert "expecting type" not in out, out
    assert "cannot open device '0'" in out or "line up: /t_line_uri0/camera" in out, out


def test_launcher_names_nodes_not_up_after_the_startup_timeout_and_keeps_waiting():
    """The "still waiting for ..." warning sat in a branch that ran only once every node was up."""
    with launcher("--namespace", "/t_line_wait", "--nodes", "camera", "--startup-timeout", "0.01",
                  "-p", "camera.source=synthetic", "-p", "camera.fps=20.0", "-p", "camera.width=64",
                  "-p", "camera.height=64") as proc:
        deadline = time.monotonic() + 60
        while not any("frame only" in ln for ln in proc.lines):  # waited, then came up and ran
            assert proc.poll() is None and time.monotonic() < deadline, "".join(proc.lines)
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, "".join(proc.lines)
    out = "".join(proc.lines)
    waiting = [ln for ln in proc.lines if "still waiting for" in ln]
    assert len(waiting) == 1, out
    assert "still waiting for /t_line_wait/camera: not on the ROS graph after 0.01 s" in waiting[0]
    assert out.index("still waiting for") < out.index("line up: /t_line_wait/camera"), out


class _FakeMonitor:
    """What Launcher._supervise asks the LineMonitor, for a line whose sorter never appears."""

    def __init__(self, seen: set[str]):
        self.seen = seen
        self.released: list[tuple[str, str, object]] = []

    def seen_nodes(self) -> set[str]:
        return set(self.seen)

    def matched(self) -> bool:
        return True

    def subscribers(self, _topic: str) -> int:
        return 0

    def set_param(self, node: str, name: str, value) -> None:
        self.released.append((node, name, value))


def test_launcher_warns_once_for_a_node_that_never_comes_up_and_still_releases_the_camera():
    import argparse
    import io
    import threading

    from defect_perception.commands.line import Launcher
    from defect_perception.launcher.supervisor import Supervisor
    from defect_perception.line_spec import BY_NAME, LinePlan

    plan = LinePlan("/t_fake", REPO / "config" / "line.yaml", [BY_NAME["camera"], BY_NAME["sorter"]],
                    {"camera": {"trigger_mode": "free"}, "sorter": {"sources": ["camera"]}})
    args = argparse.Namespace(startup_timeout=0.3, no_gate=False, in_process=False, drain=0.1)
    launcher_ = Launcher(plan, args)
    out = io.StringIO()
    launcher_.sup = Supervisor(out=out, colour=False)  # no children: poll() reports nothing
    monitor = _FakeMonitor({"/t_fake/camera"})
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(launcher_._supervise(monitor)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not monitor.released:
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.02)
    time.sleep(0.5)  # it keeps waiting: no second warning, no exit
    assert thread.is_alive() and out.getvalue().count("still waiting for") == 1, out.getvalue()
    monitor.seen.add("/t_fake/sorter")
    while "line up:" not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.02)
    launcher_.stop.set()
    thread.join(timeout=5)
    text = out.getvalue()
    assert result == [0], text
    assert "still waiting for /t_fake/sorter: not on the ROS graph after 0.3 s" in text
    assert "/t_fake/camera" not in text.split("still waiting for", 1)[1].split("\n", 1)[0]
    assert monitor.released == [("/t_fake/camera", "trigger_mode", "free")]
    assert text.index("still waiting") < text.index("camera released") < text.index("line up:")


def test_diag_lines_show_every_nonzero_trouble_counter():
    """--diag is the pip-only install's window on the nodes: skipped frames, ack timeouts,
    bad frames, queued or evicted decisions must show when they happen, zeros stay quiet."""
    from defect_perception.launcher.monitor import _trouble

    diag = {"skipped": "3", "ack_timeouts": "1", "bad_frames": "0", "plc_queue_depth": "12",
            "fusion_late_after_decision": "2", "plc_last_error": "connection refused",
            "frames": "100", "plc_evicted": "0"}
    shown = {k: v for k, v in diag.items() if _trouble(k, v)}
    assert shown == {"skipped": "3", "ack_timeouts": "1", "plc_queue_depth": "12",
                     "fusion_late_after_decision": "2", "plc_last_error": "connection refused"}
