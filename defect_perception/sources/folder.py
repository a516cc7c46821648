"""Images from a folder, one per part, in natural sort order (img2 before img10).

Corrupt or unreadable images do not stop the line: the source returns a Frame with
`array=None` and `error` naming the file; the camera node logs it, counts it
(`bad_frames`) and, by default, forwards an empty Image with a fresh stamp so the part
still gets a fail-safe decision downstream (policy `bad_frame`, see docs/camera.md).
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from defect_perception.sources.base import EndOfStream, Frame, FrameSource, SourceError, register
from defect_perception.sources.convert import from_opencv
from defect_perception.sources.labels import read_labels_csv

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm", ".webp"}


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@register("folder")
class FolderSource(FrameSource):
    finite = True

    def __init__(self, uri: str, loop: bool = False, labels: str = "", **_ignored):
        self.root = Path(uri).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"folder source: {self.root} is not a directory"
                              f"{' (does not exist)' if not self.root.exists() else ''}")
        self.files = sorted((p for p in self.root.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            exts = ", ".join(sorted(IMAGE_SUFFIXES))
            raise SourceError(f"folder source: no images ({exts}) in {self.root}")
        sidecar = Path(labels).expanduser() if labels else self.root / "labels.csv"
        if labels and not sidecar.is_file():
            raise SourceError(f"folder source: labels file {sidecar} does not exist")
        self.labels = read_labels_csv(sidecar) if sidecar.is_file() else {}
        names = {p.name for p in self.files}
        self.unmatched_labels = sorted(set(self.labels) - names)
        self.loop = bool(loop)
        self.pos = 0
        self.bad = 0
        self._last_encoding = "mono8"

    def read(self) -> Frame:
        if self.pos >= len(self.files):
            if not self.loop:
                raise EndOfStream(str(self.root))
            self.pos = 0
        i = self.pos
        self.pos += 1
        path = self.files[i]
        label = self.labels.get(path.name)
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.size == 0:
            self.bad += 1
            return Frame(None, self._last_encoding, label=label, index=i, name=str(path),
                         error=f"cannot decode image {path}")
        try:
            arr, enc = from_opencv(arr)
        except ValueError as e:
            self.bad += 1
            return Frame(None, self._last_encoding, label=label, index=i, name=str(path),
                         error=f"{path}: {e}")
        self._last_encoding = enc
        return Frame(np.ascontiguousarray(arr), enc, label=label, index=i, name=str(path))

    def rewind(self) -> None:
        self.pos = 0

    def describe(self) -> str:
        lab = f", {len(self.labels)} labels" if self.labels else ""
        return f"folder {self.root} ({len(self.files)} images{lab})"

    def counters(self) -> dict[str, int]:
        return {"bad_frames": self.bad}
