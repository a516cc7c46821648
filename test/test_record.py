"""Recording: `defect-perception record` round trip through real processes, `make-sample` on
DeepPCB, and the committed sample recording."""
from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from test_camera_node import camera

from defect_perception.core.paths import share_dir
from defect_perception.recording import TS
from defect_perception.sources import EndOfStream, make_source

SAMPLE = share_dir() / "data" / "sample" / "deeppcb_sample"


def record(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "defect_perception.cli", "record", "-o", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_line(proc: subprocess.Popen, text: str, timeout: float) -> str:
    """Read the process output until a line containing `text` (fails after `timeout` s)."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            seen += line
            if text in line:
                return seen
            if not line and proc.poll() is not None:
                break
    pytest.fail(f"no {text!r} from the recorder within {timeout} s; output so far:\n{seen}")


def header_stamps(bag: Path, topic: str) -> list[int]:
    with Reader(bag) as r:
        conns = [c for c in r.connections if c.topic == topic]
        out = []
        for c, _t, raw in r.messages(connections=conns):
            st = TS.deserialize_cdr(raw, c.msgtype).header.stamp
            out.append(st.sec * 1_000_000_000 + st.nanosec)
        return out


def test_record_max_frames_then_replay(tmp_path):
    out = tmp_path / "rec"
    topics = ["/r1/camera/image_raw", "/r1/camera/camera_info", "/r1/camera/label"]
    with camera("/r1", "source:=synthetic", "width:=80", "height:=64", "defect_every:=2", "fps:=20.0",
                "wait_subscribers:=1"):
        rec = record(out, "--topics", *topics, "--max-frames", "5", "--tail", "0.5")
        try:
            log, _ = rec.communicate(timeout=30)
        finally:
            if rec.poll() is None:
                rec.kill()
                rec.wait()
    assert rec.returncode == 0, log
    assert "/r1/camera/image_raw: 5" in log
    src = make_source("rosbag", uri=str(out))
    frames = []
    with pytest.raises(EndOfStream):
        while True:
            frames.append(src.read())
    assert len(frames) == 5
    stamps = [f.stamp_ns for f in frames]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    assert all(f.array.shape == (64, 80) and f.encoding == "mono8" for f in frames)
    # labels were recorded and are joined to frames by stamp; the synthetic pattern alternates
    # (the label subscription may match a moment after the image one, so frame 0 may lack it)
    labs = [f.label.label if f.label else None for f in frames]
    assert None not in labs[1:] and all(a != b for a, b in zip(labs[1:], labs[2:], strict=False))
    # camera_info of every recorded frame is there, and nothing after the last frame
    info = header_stamps(out, "/r1/camera/camera_info")
    assert set(stamps[1:]) <= set(info) and max(info) == max(stamps)
    meta = (out / "metadata.yaml").read_text()
    assert "storage_identifier: mcap" in meta


def test_record_stops_cleanly_on_sigterm_sqlite3(tmp_path):
    out = tmp_path / "rec"
    with camera("/r2", "source:=synthetic", "width:=64", "height:=64", "fps:=20.0", "wait_subscribers:=1"):
        rec = record(out, "--topics", "/r2/camera/image_raw", "--storage", "sqlite3")
        try:
            head = wait_line(rec, "recording /r2/camera/image_raw", 20)
            time.sleep(1.0)  # let some frames arrive (20 fps)
            rec.send_signal(signal.SIGTERM)
            log, _ = rec.communicate(timeout=15)
            log = head + log
        finally:
            if rec.poll() is None:
                rec.kill()
                rec.wait()
    assert rec.returncode == 0, log
    assert "stopped (SIGTERM)" in log
    with Reader(out) as r:  # metadata written: the bag is complete and readable
        assert r.message_count >= 3
        assert r.message_count == len(list(r.messages()))


def test_record_refuses_existing_output(tmp_path, capsys):
    from defect_perception.cli import main

    assert main(["record", "-o", str(tmp_path), "--duration", "1"]) == 2
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "already exists" in out


def test_make_sample_from_deeppcb(deeppcb, tmp_path):
    from defect_perception.cli import main

    out = tmp_path / "sample"
    assert main(["make-sample", "--deeppcb", str(deeppcb), "--out", str(out), "--n", "3"]) == 0
    side = json.loads((out / "labels.json").read_text())["frames"]
    assert sorted(f["label"] for f in side) == ["pass"] * 3 + ["reject"] * 3
    assert all(f["defect_types"] for f in side if f["label"] == "reject")
    assert all(f["source_file"].endswith("_temp.jpg") == (f["label"] == "pass") for f in side)
    src = make_source("rosbag", uri=str(out))
    frames = [src.read() for _ in range(6)]
    assert np.all(np.diff([f.stamp_ns for f in frames]) == 200_000_000)
    assert [f.label.label for f in frames] == [f["label"] for f in side]
    assert all(f.array.shape == (640, 640) and f.encoding == "mono8" for f in frames)
    assert header_stamps(out, "/line/camera/camera_info") == [f.stamp_ns for f in frames]
    # deterministic: the same command gives the same frames and labels
    again = tmp_path / "again"
    assert main(["make-sample", "--deeppcb", str(deeppcb), "--out", str(again), "--n", "3"]) == 0
    assert (again / "labels.json").read_text() == (out / "labels.json").read_text()
    assert main(["make-sample", "--deeppcb", str(deeppcb), "--out", str(out), "--n", "3"]) == 1  # exists


def test_committed_sample_recording():
    assert (SAMPLE / "metadata.yaml").is_file(), f"sample recording missing at {SAMPLE}"
    size = sum(p.stat().st_size for p in SAMPLE.iterdir())
    assert size < 5e6, f"sample recording is {size / 1e6:.1f} MB"
    side = json.loads((SAMPLE / "labels.json").read_text())["frames"]
    src = make_source("rosbag", uri=str(SAMPLE))
    assert src.count == len(side) >= 20
    labels = [src.read().label for _ in range(len(side))]
    assert [lab.label for lab in labels] == [f["label"] for f in side]
    assert {lab.label for lab in labels} == {"pass", "reject"}
