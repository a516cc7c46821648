"""Robot-arm sort command, built without ROS: target bin and a pick point.

The pick point is the centre of the best detection box back-projected through the camera
matrix K (from camera_info) to a plane at `working_distance_m` in front of the camera:
x = (u - cx) * Z / fx, y = (v - cy) * Z / fy, z = Z (camera optical frame: x right,
y down, z forward). The robot integrator transforms it into the robot base frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_BINS = {"pass": 0, "reject": 1, "review": 2, "stop-line": 1}


class RobotConfigError(ValueError):
    pass


@dataclass
class RobotConfig:
    name: str = "robot"
    topic: str = "robot/sort_command"
    pose_topic: str = "robot/pick_pose"
    ack_topic: str = ""  # empty: no acknowledge expected
    ack_timeout_ms: float = 2000.0
    working_distance_m: float = 0.30
    bins: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BINS))
    send: tuple[str, ...] = ("pass", "reject", "review", "stop-line")  # actions the robot handles

    def __post_init__(self) -> None:
        unknown = [k for k in self.bins if k not in DEFAULT_BINS]
        if unknown:
            raise RobotConfigError(f"robot {self.name}: bins has unknown actions {unknown} "
                                   f"(allowed: {list(DEFAULT_BINS)})")
        self.bins = {**DEFAULT_BINS, **self.bins}
        self.send = tuple(self.send)
        if not self.working_distance_m > 0:
            raise RobotConfigError(f"robot {self.name}: working_distance_m={self.working_distance_m} "
                                   "must be > 0")


def pick_point(box: list[float], k: list[float], distance_m: float) -> tuple[float, float, float]:
    """Box centre (pixels) -> point in the camera frame at the working distance (metres)."""
    if len(k) != 9 or k[0] <= 0 or k[4] <= 0:
        raise RobotConfigError(f"camera matrix K {list(k)} is not calibrated (fx, fy must be > 0)")
    u = (box[0] + box[2]) / 2.0
    v = (box[1] + box[3]) / 2.0
    fx, cx, fy, cy = k[0], k[2], k[4], k[5]
    return ((u - cx) * distance_m / fx, (v - cy) * distance_m / fy, float(distance_m))


def sort_command(decision: dict, action: str, cfg: RobotConfig, k: list[float] | None) -> dict:
    """The JSON sort command for one decided part. `pick` is null when there is no
    detection or no calibration (the reason says which)."""
    pick, note = None, ""
    dets = decision.get("detections") or []
    if dets:
        best = max(dets, key=lambda d: d.get("score") or 0.0)
        if k is None:
            note = "no camera_info received: pick point unavailable"
        else:
            try:
                x, y, z = pick_point(best["box"], k, cfg.working_distance_m)
                pick = {"frame_id": decision.get("frame_id") or "camera", "position": [x, y, z],
                        "orientation": [0.0, 0.0, 0.0, 1.0], "label": best.get("label"),
                        "box": best["box"]}
            except RobotConfigError as e:
                note = str(e)
    return {"stamp_ns": int(decision["stamp_ns"]), "action": action, "bin": int(cfg.bins[action]),
            "verdict": decision["verdict"], "label": decision.get("label"), "pick": pick, "note": note}
