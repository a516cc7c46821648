"""`defect-perception param` against a real camera node process (standard parameter services)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from procs import stop

NS = "/t_param"


def cli(*args: str) -> subprocess.Popen:
    if "--timeout" not in args:  # generous: discovery is slow on a loaded machine; found = answered at once
        args = (*args, "--timeout", "20")
    cmd = [sys.executable, "-m", "defect_perception.cli", "param", *args, "--namespace", NS]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def done(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def camera():
    proc = subprocess.Popen([sys.executable, "-m", "defect_perception.nodes.camera", "--ros-args",
                             "-r", f"__ns:={NS}", "-p", "source:=synthetic", "-p", "width:=64",
                             "-p", "height:=64", "-p", "fps:=5.0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield proc
    stop(proc)
    proc.stderr.close()


def test_list_get_describe_and_errors(camera):
    # independent calls in parallel: each one pays DDS discovery (a few seconds) once
    calls = {
        "list": cli("list", "camera"),
        "get": cli("get", "camera", "source"),
        "describe": cli("describe", "camera", "fps"),
        "out_of_range": cli("set", "camera", "fps", "99999"),
        "read_only": cli("set", "camera", "source", "folder"),
        "bad_choice": cli("set", "camera", "pacing", "sometimes"),
        "wrong_type": cli("set", "camera", "fps", "fast"),
        "unknown_param": cli("get", "camera", "fsp"),
        "unknown_node": cli("get", "camra", "fps", "--timeout", "8"),
        "nodes": cli("list", "--timeout", "8"),
    }
    r = {k: done(p) for k, p in calls.items()}
    code, out, err = r["list"]
    assert code == 0, err
    names = out.split()
    assert {"fps", "source", "trigger_mode", "on_end"} <= set(names) and names == sorted(names)
    assert r["get"][:2] == (0, "synthetic\n")
    code, out, _ = r["describe"]
    assert code == 0 and "type: double" in out and "range: 0.01 .. 1000" in out
    code, _, err = r["out_of_range"]
    assert code == 1 and "refused fps=99999.0" in err and "out of range" in err
    code, _, err = r["read_only"]
    assert code == 1 and "read-only" in err
    code, _, err = r["bad_choice"]
    assert code == 1 and "'sometimes' is not one of" in err  # the node's own reason
    code, _, err = r["wrong_type"]  # was "Wrong parameter type, expected '3' got '4'"
    assert code == 1 and "refused fps=fast: wrong type, expected double, got string" in err, err
    code, _, err = r["unknown_param"]
    assert code == 1 and "no parameter 'fsp'" in err and "did you mean fps" in err
    code, out, err = r["nodes"]
    assert code == 0 and f"{NS}/camera" in out.split(), err
    code, _, err = r["unknown_node"]
    assert code == 1 and f"node {NS}/camra not found" in err and f"{NS}/camera" in err


def test_set_then_get_round_trip(camera):
    code, out, err = done(cli("set", "camera", "fps", "12"))  # an int for a double parameter
    assert code == 0, err
    assert out.strip() == f"{NS}/camera: fps = 12.0"
    code, out, err = done(cli("get", "camera", "fps"))
    assert (code, out) == (0, "12.0\n"), err


def test_value_that_is_not_a_parameter_value_is_a_usage_error():
    code, _, err = done(cli("set", "camera", "fps", "{a: 1}"))
    assert code == 2 and "not a parameter type" in err


def test_rclpy_type_errors_are_shown_with_type_names():
    from rcl_interfaces.msg import ParameterDescriptor, ParameterType

    from defect_perception.commands.param import readable_reason, type_mismatch

    assert readable_reason("Wrong parameter type, expected '3' got '4'") == \
        "wrong type, expected double, got string"
    assert readable_reason("Wrong parameter type, expected 'Type.INTEGER' got 'Type.BOOL'") == \
        "wrong type, expected integer, got bool"
    assert readable_reason("Parameter fps out of range") == "Parameter fps out of range"
    double = ParameterDescriptor(type=ParameterType.PARAMETER_DOUBLE)
    assert type_mismatch("fast", double) == "wrong type, expected double, got string"
    assert type_mismatch(12.0, double) is None
    ints = ParameterDescriptor(type=ParameterType.PARAMETER_INTEGER_ARRAY)
    assert type_mismatch([1, 2], ints) is None and type_mismatch([], ints) is None
    assert type_mismatch(["a"], ints) == "wrong type, expected integer array, got string array"
