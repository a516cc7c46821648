"""OpenCV capture: a device index (`0`), a device path (`/dev/video0`), a video file, a
network stream URL (rtsp://, http://, udp://) or a GStreamer pipeline (any string with `!`).

Live inputs (device, stream, pipeline) that stop delivering are released and reopened with
exponential backoff (0.5 s doubling to 10 s); `read()` returns None meanwhile so the camera
node keeps running and reports the outage in diagnostics (`reopens`, `read_failures`).
A video file is finite: it ends with EndOfStream. A source that cannot be opened at start
raises SourceError naming it.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import cv2

from defect_perception.sources.base import EndOfStream, Frame, FrameSource, SourceError, register
from defect_perception.sources.convert import from_opencv


class Backoff:
    """Exponential retry schedule: first delay `first`, doubling up to `cap`; reset on success."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, clock=time.monotonic):
        self.first, self.cap, self.clock = first, cap, clock
        self.delay = 0.0
        self.next_try = 0.0

    def failed(self) -> float:
        self.delay = self.first if self.delay == 0 else min(self.cap, self.delay * 2)
        self.next_try = self.clock() + self.delay
        return self.delay

    def due(self) -> bool:
        return self.clock() >= self.next_try

    def reset(self) -> None:
        self.delay, self.next_try = 0.0, 0.0


def classify(uri: str) -> tuple[str, object]:
    """('device', index) | ('device', path) | ('pipeline', str) | ('stream', url) | ('file', path)."""
    s = str(uri).strip()
    if re.fullmatch(r"\d+", s):
        return "device", int(s)
    if "!" in s:
        return "pipeline", s
    if re.match(r"^[a-z][a-z0-9+.-]*://", s) and not s.startswith("file://"):
        return "stream", s
    s = s.removeprefix("file://")
    if s.startswith("/dev/"):
        return "device", s
    return "file", s


@register("opencv")
class OpenCVSource(FrameSource):
    def __init__(self, uri: str = "0", width: int = 0, height: int = 0, fps: float = 0.0,
                 backoff_first: float = 0.5, backoff_cap: float = 10.0, live: bool | None = None,
                 **_ignored):
        self.uri = str(uri)
        self.mode, self.target = classify(self.uri)
        # `live` overrides the guess from the URI (e.g. a file that a recorder keeps rewriting)
        self.finite = self.mode == "file" if live is None else not live
        self.size = (int(width), int(height))
        self.fps = float(fps)
        self.backoff = Backoff(backoff_first, backoff_cap)
        self.reopens = 0
        self.failures = 0
        self.index = 0
        if self.mode == "file" and not Path(self.target).is_file():
            raise SourceError(f"opencv source: video file {self.target} does not exist")
        self.cap = self._open()
        if self.cap is None:
            raise SourceError(f"opencv source: cannot open {self.mode} {self.uri!r}"
                              + (" (is OpenCV built with GStreamer?)" if self.mode == "pipeline" else ""))

    def _open(self) -> cv2.VideoCapture | None:
        if self.mode == "pipeline":
            cap = cv2.VideoCapture(self.target, cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            return None
        if self.mode == "device":
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # triggered grabs should not return stale frames
            if self.size[0] > 0 and self.size[1] > 0:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            if self.fps > 0:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
        return cap

    def read(self) -> Frame | None:
        if self.cap is None:  # live input lost: reopen when the backoff allows
            if not self.backoff.due():
                return None
            self.cap = self._open()
            if self.cap is None:
                self.backoff.failed()
                return None
            self.reopens += 1
        ok, arr = self.cap.read()
        if not ok or arr is None:
            if self.finite:
                raise EndOfStream(self.uri)
            self.failures += 1
            self.cap.release()
            self.cap = None
            self.backoff.failed()
            return None
        self.backoff.reset()
        arr, enc = from_opencv(arr)
        i = self.index
        self.index += 1
        return Frame(arr, enc, index=i, name=f"{self.uri}#{i}")

    def rewind(self) -> None:
        if not self.finite:
            return
        if self.cap is not None:
            self.cap.release()
        self.cap = self._open()
        self.index = 0

    def describe(self) -> str:
        return f"opencv {self.mode} {self.uri}"

    def counters(self) -> dict[str, int]:
        return {"reopens": self.reopens, "read_failures": self.failures}

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None
