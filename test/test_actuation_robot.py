"""Robot sort command (ROS-free) and the rule that actuation/fusion/audit never import ROS or torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from defect_perception.actuation.config import ActuatorConfigError, check_entries, robot_configs
from defect_perception.actuation.robot import RobotConfig, RobotConfigError, pick_point, sort_command
from defect_perception.core.result import make_result

K = [600.0, 0.0, 320.0, 0.0, 400.0, 240.0, 0.0, 0.0, 1.0]


def test_pick_point_back_projects_box_centre():
    assert pick_point([310, 230, 330, 250], K, 0.5) == pytest.approx((0.0, 0.0, 0.5))
    x, y, z = pick_point([620, 440, 640, 480], K, 0.25)  # centre (630, 460)
    assert (x, y, z) == pytest.approx((310 * 0.25 / 600, 220 * 0.25 / 400, 0.25))
    with pytest.raises(RobotConfigError, match="not calibrated"):
        pick_point([0, 0, 1, 1], [0.0] * 9, 0.3)


def test_sort_command_bins_and_pick():
    cfg = RobotConfig(bins={"reject": 4}, working_distance_m=0.4)
    dets = [{"box": [0, 0, 10, 10], "label": "spur", "score": 0.3},
            {"box": [310, 230, 330, 250], "label": "short", "score": 0.9}]
    d = make_result(stamp_ns=7, frame_id="cam_left", source="sorter", verdict="reject", label="short",
                    detections=dets)
    cmd = sort_command(d, "reject", cfg, K)
    assert cmd["bin"] == 4 and cmd["stamp_ns"] == 7 and cmd["pick"]["label"] == "short"
    assert cmd["pick"]["position"] == pytest.approx([0.0, 0.0, 0.4]) and cmd["pick"]["frame_id"] == "cam_left"
    assert sort_command(d, "reject", cfg, None)["note"].startswith("no camera_info")
    ok = make_result(stamp_ns=8, frame_id="c", source="sorter", verdict="pass")
    assert sort_command(ok, "pass", cfg, K) == {"stamp_ns": 8, "action": "pass", "bin": 0, "verdict": "pass",
                                               "label": None, "pick": None, "note": ""}
    with pytest.raises(RobotConfigError, match="unknown actions \\['scrap'\\]"):
        RobotConfig(bins={"scrap": 3})
    (rc,) = robot_configs(check_entries([{"type": "robot", "name": "arm", "ack_topic": "robot/ack"}]))
    assert rc.ack_topic == "robot/ack" and rc.bins["review"] == 2
    with pytest.raises(ActuatorConfigError, match="unknown key 'ack_timout_ms'.*'ack_timeout_ms'"):
        check_entries([{"type": "robot", "ack_timout_ms": 5}])


def test_runtime_modules_import_without_ros_or_torch():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('rclpy', 'torch', 'std_msgs', 'sensor_msgs', 'geometry_msgs'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for m in ('actuation.modbus', 'actuation.opcua', 'actuation.config', 'actuation.plc_sim', 'core.fusion',
          'core.audit', 'commands.plc_sim', 'commands.audit'):
    importlib.import_module('defect_perception.' + m)
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
