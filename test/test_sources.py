"""Frame sources without ROS: folder (labels, corrupt image), synthetic, rosbag (sqlite3 and
mcap written here), opencv (a video file written here), calibration files, errors naming inputs."""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from defect_perception.recording import TS, camera_info_cdr, image_cdr, open_writer, string_cdr
from defect_perception.sources import EndOfStream, SourceError, make_source
from defect_perception.sources.calibration import CalibrationError, default_calibration, load_calibration
from defect_perception.sources.opencv import Backoff, classify


def board(i: int, shape=(48, 64)) -> np.ndarray:
    img = np.zeros(shape, np.uint8)
    img[8:16, :] = 200
    img[30:40, 5 + 4 * i:15 + 4 * i] = 255
    return img


@pytest.fixture()
def image_folder(tmp_path):
    for i, name in enumerate(["p1.png", "p2.png", "p10.png"]):
        cv2.imwrite(str(tmp_path / name), board(i))
    (tmp_path / "p3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "labels.csv").write_text("filename,label,defect_type\np1.png,pass\np2.png,reject,short;open\n"
                                         "p10.png,ng,spur\nmissing.png,pass\n")
    return tmp_path


def test_folder_natural_order_labels_and_corrupt_image(image_folder):
    src = make_source("folder", uri=str(image_folder))
    frames = [src.read() for _ in range(4)]
    assert [f.name.split("/")[-1] for f in frames] == ["p1.png", "p2.png", "p3.png", "p10.png"]
    assert frames[0].label.label == "pass" and frames[0].label.defect_types == []
    assert frames[1].label.label == "reject" and frames[1].label.defect_types == ["short", "open"]
    assert frames[3].label.label == "reject" and frames[3].label.defect_types == ["spur"]
    bad = frames[2]
    assert bad.array is None and "p3.png" in bad.error and bad.label is None
    np.testing.assert_array_equal(frames[3].array, board(2))
    assert frames[0].encoding == "mono8"
    assert src.counters()["bad_frames"] == 1
    assert src.unmatched_labels == ["missing.png"]
    with pytest.raises(EndOfStream):
        src.read()
    src.rewind()
    assert src.read().index == 0


def test_folder_loop_option(image_folder):
    src = make_source("folder", uri=str(image_folder), loop=True)
    names = [src.read().name.split("/")[-1] for _ in range(6)]
    assert names[4:] == ["p1.png", "p2.png"]


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(SourceError, match=str(tmp_path / "nope")):
        make_source("folder", uri=str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="no images"):
        make_source("folder", uri=str(tmp_path))
    cv2.imwrite(str(tmp_path / "a.png"), board(0))
    (tmp_path / "labels.csv").write_text("a.png,maybe\n")
    with pytest.raises(SourceError, match=r"labels.csv:1: label 'maybe' for a.png"):
        make_source("folder", uri=str(tmp_path))
    with pytest.raises(SourceError, match="other.csv does not exist"):
        make_source("folder", uri=str(tmp_path), labels=str(tmp_path / "other.csv"))


def test_synthetic_is_deterministic_and_labels_defects():
    a = make_source("synthetic", width=96, height=80, defect_every=3)
    b = make_source("synthetic", width=96, height=80, defect_every=3)
    fa, fb = [a.read() for _ in range(6)], [b.read() for _ in range(6)]
    for x, y in zip(fa, fb, strict=True):
        np.testing.assert_array_equal(x.array, y.array)
    assert len({f.array.tobytes() for f in fa}) == 6  # the counter makes every frame distinct
    assert [f.label.label for f in fa] == ["pass", "pass", "reject"] * 2
    clean = make_source("synthetic", width=96, height=80).frame_array(2)[0]
    defect_pixels = np.count_nonzero(fa[2].array != clean)
    assert defect_pixels > 50
    assert fa[0].array.shape == (80, 96)
    rgb = make_source("synthetic", width=96, height=80, encoding="rgb8").read()
    assert rgb.encoding == "rgb8" and rgb.array.shape == (80, 96, 3)


def write_bag(path, storage, n=4, topic="/line/camera/image_raw", labels=True):
    w = open_writer(path, storage)
    c = w.add_connection(topic, "sensor_msgs/msg/Image", typestore=TS)
    ci = w.add_connection("/line/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TS)
    cl = w.add_connection("/line/camera/label", "std_msgs/msg/String", typestore=TS) if labels else None
    stamps = []
    for i in range(n):
        stamp = 5_000_000_000 + i * 100_000_000
        stamps.append(stamp)
        w.write(c, stamp + 7, image_cdr(board(i), "mono8", stamp))
        w.write(ci, stamp + 7, camera_info_cdr(default_calibration(64, 48), stamp))
        if cl is not None:
            lab = {"stamp_ns": stamp, "label": "reject" if i % 2 else "pass",
                   "defect_types": ["short"] if i % 2 else [], "index": i}
            w.write(cl, stamp + 8, string_cdr(json.dumps(lab)))
    w.close()
    return stamps


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag_replay_keeps_stamps_and_labels(tmp_path, storage):
    stamps = write_bag(tmp_path / "bag", storage)
    src = make_source("rosbag", uri=str(tmp_path / "bag"))
    frames = [src.read() for _ in range(4)]
    assert [f.stamp_ns for f in frames] == stamps
    assert [f.time_ns for f in frames] == [s + 7 for s in stamps]
    assert [f.label.label for f in frames] == ["pass", "reject", "pass", "reject"]
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f.array, board(i))
        assert f.encoding == "mono8"
    with pytest.raises(EndOfStream):
        src.read()
    src.rewind()  # a second pass shifts stamps so part keys stay unique
    again = [src.read().stamp_ns for _ in range(4)]
    assert again[0] > stamps[-1] and np.all(np.diff(again) == 100_000_000)
    src.close()
    restamped = make_source("rosbag", uri=str(tmp_path / "bag"), restamp=True)
    assert restamped.read().stamp_ns is None


def test_rosbag_missing_topic_and_path(tmp_path):
    write_bag(tmp_path / "bag", "mcap", n=1, topic="/other/image", labels=False)
    with pytest.raises(SourceError, match=r"topic /line/camera/image_raw not found.*/other/image"):
        make_source("rosbag", uri=str(tmp_path / "bag"), topic="/line/camera/image_raw")
    assert make_source("rosbag", uri=str(tmp_path / "bag")).topic == "/other/image"  # the only one
    with pytest.raises(SourceError, match=f"bag {tmp_path / 'missing'} does not exist"):
        make_source("rosbag", uri=str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="not a rosbag2 folder"):
        make_source("rosbag", uri=str(tmp_path))


def test_opencv_video_file(tmp_path):
    path = tmp_path / "line.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert vw.isOpened(), "OpenCV cannot write MJPG here"
    for i in range(5):
        vw.write(cv2.cvtColor(board(i), cv2.COLOR_GRAY2BGR))
    vw.release()
    src = make_source("opencv", uri=str(path))
    assert src.finite
    frames = [src.read() for _ in range(5)]
    assert all(f.encoding == "bgr8" and f.array.shape == (48, 64, 3) for f in frames)
    # MJPG is lossy: the moving pad must still be where it was painted
    assert frames[4].array[35, 30, 0] > 150 and frames[0].array[35, 30, 0] < 100
    with pytest.raises(EndOfStream):
        src.read()
    src.rewind()
    assert src.read().index == 0
    with pytest.raises(SourceError, match=str(tmp_path / "gone.mp4")):
        make_source("opencv", uri=str(tmp_path / "gone.mp4"))


def test_opencv_live_input_is_reopened_with_backoff(tmp_path):
    path = tmp_path / "feed.avi"

    def write_video(n):
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
        for i in range(n):
            vw.write(cv2.cvtColor(board(i), cv2.COLOR_GRAY2BGR))
        vw.release()

    write_video(2)
    src = make_source("opencv", uri=str(path), live=True, backoff_first=0.05, backoff_cap=0.2)
    assert not src.finite
    assert src.read() is not None and src.read() is not None
    assert src.read() is None  # the input stopped: released, not an error, not the end
    assert src.counters() == {"reopens": 0, "read_failures": 1}
    path.unlink()  # the device is gone: reopen attempts fail with growing delays
    delays = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len(delays) < 3:
        before = src.backoff.next_try
        assert src.read() is None
        if src.backoff.next_try != before:  # a reopen attempt failed and was rescheduled
            delays.append(src.backoff.delay)
    assert delays == [0.1, 0.2, 0.2]
    write_video(3)  # back again: frames flow after the next due retry
    frame = None
    deadline = time.monotonic() + 3
    while frame is None and time.monotonic() < deadline:
        frame = src.read()
        time.sleep(0.01)
    assert frame is not None and frame.array.shape == (48, 64, 3)
    assert src.counters()["reopens"] == 1 and src.backoff.delay == 0.0
    src.close()


def test_opencv_uri_kinds_and_backoff():
    assert classify("0") == ("device", 0)
    assert classify("/dev/video2") == ("device", "/dev/video2")
    assert classify("rtsp://10.0.0.5/stream") == ("stream", "rtsp://10.0.0.5/stream")
    assert classify("v4l2src ! videoconvert ! appsink")[0] == "pipeline"
    assert classify("file:///data/a.mp4") == ("file", "/data/a.mp4")
    now = [100.0]
    b = Backoff(0.5, 4.0, clock=lambda: now[0])
    assert [b.failed() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert not b.due()
    now[0] += 4.0
    assert b.due()
    b.reset()
    assert b.failed() == 0.5


def test_calibration_yaml(tmp_path):
    good = tmp_path / "cam.yaml"
    good.write_text("image_width: 64\nimage_height: 48\ncamera_name: line_cam\n"
                    "camera_matrix: {rows: 3, cols: 3, data: [100, 0, 32, 0, 101, 24, 0, 0, 1]}\n"
                    "distortion_model: plumb_bob\n"
                    "distortion_coefficients: {rows: 1, cols: 5, data: [0.1, -0.2, 0, 0, 0]}\n"
                    "rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}\n"
                    "projection_matrix: {rows: 3, cols: 4,"
                    " data: [100, 0, 32, 0, 0, 101, 24, 0, 0, 0, 1, 0]}\n")
    cal = load_calibration(f"file://{good}")
    assert (cal.width, cal.height, cal.camera_name) == (64, 48, "line_cam")
    assert cal.k[0] == 100 and cal.d[:2] == [0.1, -0.2] and len(cal.p) == 12
    default = default_calibration(640, 480)
    assert default.k == [640.0, 0.0, 320.0, 0.0, 640.0, 240.0, 0.0, 0.0, 1.0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_width: 64\nimage_height: 48\ncamera_matrix: {data: [1, 2, 3]}\n")
    with pytest.raises(CalibrationError, match=r"bad.yaml: field 'camera_matrix' needs 9 numbers"):
        load_calibration(str(bad))
    with pytest.raises(CalibrationError, match="absent.yaml"):
        load_calibration(str(tmp_path / "absent.yaml"))


def test_unknown_source_suggests():
    with pytest.raises(SourceError, match="did you mean 'rosbag'"):
        make_source("rosbg")


def test_sources_and_recording_import_without_ros_or_torch():
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('rclpy', 'sensor_msgs', 'std_msgs', 'torch'):\n"
            "    sys.modules[m] = None  # importing it now raises ImportError\n"
            "import defect_perception.sources, defect_perception.recording\n"
            "import defect_perception.sources.calibration, defect_perception.commands.make_sample\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
