"""What every frame source yields, and the registry the camera node picks sources from.

Sources are ROS-free (no rclpy, no *_msgs, no torch) so they are tested on their own and
reused by tools. A source is opened at construction: a missing file, device, bag or topic
raises `SourceError` naming it, which the camera node turns into a failed start.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names the file/device/topic."""


class EndOfStream(Exception):
    """A finite source (video file, folder without loop, bag) has no more frames."""


@dataclass
class Label:
    """Ground truth for one frame: `pass` or `reject`, with the defect types when known."""

    label: str
    defect_types: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "defect_types": list(self.defect_types)}


@dataclass
class Frame:
    """One captured part. `array` is None for a frame that could not be decoded (then
    `error` says why and `name` which file); the camera still forwards it per its policy
    so the part gets a (fail-safe) decision downstream.

    stamp_ns: the part's stamp to publish (None = stamp with the node clock at publish).
    time_ns: the source's own clock for recorded-rate pacing (bag receive time), or None.
    """

    array: np.ndarray | None
    encoding: str
    stamp_ns: int | None = None
    label: Label | None = None
    index: int = 0
    name: str = ""
    time_ns: int | None = None
    error: str | None = None


class FrameSource:
    """Base class. `read()` returns a Frame, None when no frame is available right now
    (e.g. a camera being reopened; call again later), or raises EndOfStream."""

    kind = "base"
    finite = False  # True when the source can end (file, folder, bag)

    def read(self) -> Frame | None:
        raise NotImplementedError

    def rewind(self) -> None:
        """Start a finite source again from its first frame (on_end: loop)."""
        raise SourceError(f"{self.kind} source cannot be rewound")

    def describe(self) -> str:
        return self.kind

    def counters(self) -> dict[str, int]:
        """Source-specific counters for diagnostics (reopens, bad frames, ...)."""
        return {}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SOURCES: dict[str, Callable[..., FrameSource]] = {}


def register(name: str):
    """Class decorator adding a source to SOURCES; a duplicate name is a bug."""

    def deco(cls):
        if name in SOURCES:
            raise ValueError(f"frame source {name!r} registered twice")
        cls.kind = name
        SOURCES[name] = cls
        return cls

    return deco


def make_source(kind: str, **options: Any) -> FrameSource:
    """Open a source by name with its keyword options."""
    from defect_perception import sources as _  # noqa: F401  (fills SOURCES)

    if kind not in SOURCES:
        close = difflib.get_close_matches(kind, SOURCES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SourceError(f"unknown source {kind!r} (available: {', '.join(sorted(SOURCES))}{hint})")
    return SOURCES[kind](**options)
