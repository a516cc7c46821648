"""A deterministic test pattern: the line runs (and tests run) without a camera or data.

Frame i depends only on i and the options, so two runs produce identical frames. The
pattern is a fixed grid of "copper tracks" and pads, with the frame counter written as a
binary bar code along the top edge. With `defect_every=N`, every Nth frame (i % N == N-1)
gets a painted defect (a broken track and a stray blob) and the label `reject`; the other
frames are labelled `pass`, so a replay can be scored.
"""
from __future__ import annotations

import numpy as np

from defect_perception.sources.base import Frame, FrameSource, Label, SourceError, register
from defect_perception.sources.convert import OUTPUT_ENCODINGS, convert


@register("synthetic")
class SyntheticSource(FrameSource):
    finite = False

    def __init__(self, width: int = 640, height: int = 640, encoding: str = "mono8",
                 defect_every: int = 0, **_ignored):
        if encoding == "passthrough":
            encoding = "mono8"
        if encoding not in OUTPUT_ENCODINGS:
            raise SourceError(f"synthetic: encoding {encoding!r} not one of {OUTPUT_ENCODINGS}")
        if width < 64 or height < 64:
            raise SourceError(f"synthetic: size {width}x{height} too small (min 64x64)")
        self.width, self.height, self.encoding = int(width), int(height), encoding
        self.defect_every = int(defect_every)
        self._base = self._board()
        self._bases: dict[str, np.ndarray] = {}
        self.index = 0

    def _board(self) -> np.ndarray:
        h, w = self.height, self.width
        img = np.full((h, w), 30, np.uint8)
        for y in range(40, h - 20, 48):          # horizontal tracks
            img[y:y + 8, 20:w - 20] = 220
        for x in range(60, w - 40, 96):          # pads
            for y in range(64, h - 40, 96):
                img[y:y + 16, x:x + 16] = 240
        return img

    def frame_array(self, i: int, encoding: str = "mono8") -> tuple[np.ndarray, bool]:
        """The pattern for frame i in `encoding` and whether it carries a defect. Painted on
        a cached copy of the board in the target encoding (cheap at 1920x1200 bgr8)."""
        base = self._bases.get(encoding)
        if base is None:
            base = self._bases[encoding] = convert(self._base, "mono8", encoding)
        img = base.copy()
        scale = 257 if encoding == "mono16" else 1  # paint grey levels in the target depth
        for bit in range(32):                    # frame counter as a bar code, 8 px per bit
            if (i >> bit) & 1:
                img[4:16, 20 + 8 * bit:26 + 8 * bit] = 255 * scale
        defect = self.defect_every > 0 and i % self.defect_every == self.defect_every - 1
        if defect:
            rng = np.random.default_rng(i)       # position varies per frame, deterministically
            row = 40 + 48 * int(rng.integers(0, max(1, (self.height - 60) // 48)))
            x = int(rng.integers(20, self.width - 36))
            img[row - 2:row + 10, x:x + 14] = 30 * scale                 # open (broken track)
            cy, cx = int(rng.integers(12, self.height - 12)), int(rng.integers(12, self.width - 12))
            yy, xx = np.ogrid[-6:7, -6:7]
            blob = img[cy - 6:cy + 7, cx - 6:cx + 7]
            blob[(yy ** 2 + xx ** 2) <= 36] = 200 * scale                # spurious copper
        return img, defect

    def read(self) -> Frame:
        i = self.index
        self.index += 1
        img, defect = self.frame_array(i, self.encoding)
        label = None
        if self.defect_every > 0:
            label = Label("reject", ["open", "spurious_copper"]) if defect else Label("pass")
        return Frame(img, self.encoding, label=label, index=i, name=f"synthetic#{i}")

    def rewind(self) -> None:
        self.index = 0

    def describe(self) -> str:
        every = f", defect every {self.defect_every}" if self.defect_every else ""
        return f"synthetic {self.width}x{self.height} {self.encoding}{every}"
