"""Model-input preparation from the card's `input` block (ROS-free, torch-free).

A frame (HxW mono or HxWx3 bgr8, any size) becomes one float32 CHW tensor:
resize (stretch | letterbox) to `size`, colour order (bgr | rgb | gray), then
`(pixel / scale - mean) / std`. The `Transform` kept with each tensor maps model-input
pixels back to published-image pixels, so boxes and heatmaps come back where the
operator sees them (ROI and tile offsets included).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST,
           "cubic": cv2.INTER_CUBIC}


class InputError(ValueError):
    """A frame the runtime cannot turn into a model input (wrong shape, dtype, ROI...)."""


@dataclass(frozen=True)
class Transform:
    """source = (model - pad) / scale + offset, per axis. `src_size` is (h, w) of the crop
    that was resized (tile or ROI), `image_size` (h, w) of the published image."""

    scale_x: float = 1.0
    scale_y: float = 1.0
    pad_x: float = 0.0
    pad_y: float = 0.0
    offset_x: float = 0.0
    offset_y: float = 0.0
    src_size: tuple[int, int] = (0, 0)
    image_size: tuple[int, int] = (0, 0)

    def boxes_to_source(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """[K, 4] x1,y1,x2,y2 in model pixels -> published-image pixels."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        b[:, 0::2] = (b[:, 0::2] - self.pad_x) / self.scale_x
        b[:, 1::2] = (b[:, 1::2] - self.pad_y) / self.scale_y
        if clip:
            h, w = self.src_size
            b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
            b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
        b[:, 0::2] += self.offset_x
        b[:, 1::2] += self.offset_y
        return b

    def map_to_source(self, arr: np.ndarray) -> np.ndarray:
        """An HxW map at model resolution -> the crop's resolution (padding removed).
        The caller places it at (offset_x, offset_y) in the published image."""
        h, w = self.src_size
        mh, mw = arr.shape[:2]
        y0, x0 = int(round(self.pad_y)), int(round(self.pad_x))
        y1 = min(mh, int(round(self.pad_y + h * self.scale_y)))
        x1 = min(mw, int(round(self.pad_x + w * self.scale_x)))
        inner = np.ascontiguousarray(arr[y0:y1, x0:x1])
        if inner.shape[:2] == (h, w):
            return inner
        return cv2.resize(inner, (w, h), interpolation=cv2.INTER_LINEAR)


class Preprocessor:
    """Built once per model card; `__call__` and `batch` are the per-frame hot path."""

    def __init__(self, card_input: dict):
        self.height, self.width = (int(v) for v in card_input["size"])
        self.color = card_input.get("color", "bgr")
        # input.template (gray models only): channel 2 is the aligned defect-free template; the
        # runtime then feeds HxWx2 (frame, template) arrays, both preprocessed the same way
        self.template = bool(card_input.get("template")) and self.color == "gray"
        self.channels = 2 if self.template else 1 if self.color == "gray" else 3
        self.resize_mode = card_input.get("resize", "stretch")
        self.interp = _INTERP.get(card_input.get("interpolation", "linear"), cv2.INTER_LINEAR)
        self.pad_value = float(card_input.get("pad_value", 114))
        scale = float(card_input.get("scale", 255.0))
        mean = np.asarray(card_input.get("mean", [0.0]), np.float32)
        std = np.asarray(card_input.get("std", [1.0]), np.float32)
        mean = np.broadcast_to(mean, (self.channels,)).astype(np.float32)
        std = np.broadcast_to(std, (self.channels,)).astype(np.float32)
        # x = pixel * alpha + beta, one multiply-add per element
        self.alpha = (1.0 / (scale * std)).reshape(-1, 1, 1).astype(np.float32)
        self.beta = (-mean / std).reshape(-1, 1, 1).astype(np.float32)
        self._local = threading.local()

    def buffer(self, name: str, shape: tuple, dtype=np.float32) -> np.ndarray:
        """A per-thread array reused across frames: fresh multi-MB allocations are mmapped and
        page-faulted on every call, which cost more than the normalisation itself. The caller
        must consume it (run the model) before its next call in the same thread."""
        bufs = self._local.__dict__.setdefault("bufs", {})
        arr = bufs.get(name)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            arr = bufs[name] = np.empty(shape, dtype)
        return arr

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def __call__(self, image: np.ndarray, offset: tuple[int, int] = (0, 0),
                 image_size: tuple[int, int] | None = None,
                 reuse: bool = False) -> tuple[np.ndarray, Transform]:
        """[1, C, H, W] tensor + Transform. `reuse=True` (the runtime's hot path) writes into a
        per-thread buffer that the next call overwrites; otherwise a new array."""
        shape = (1, *self.shape)
        out = self.buffer("single", shape) if reuse else np.empty(shape, np.float32)
        tf = self.into(image, out[0], offset, image_size)
        return out, tf

    def batch(self, crops: list[np.ndarray], offsets: list[tuple[int, int]],
              image_size: tuple[int, int]) -> tuple[np.ndarray, list[Transform]]:
        out = np.empty((len(crops), *self.shape), np.float32)
        tfs = [self.into(c, out[i], o, image_size)
               for i, (c, o) in enumerate(zip(crops, offsets, strict=True))]
        return out, tfs

    def tiles(self, image: np.ndarray, grid: list[tuple[int, int, int, int]],
              offset: tuple[int, int] = (0, 0), image_size: tuple[int, int] | None = None,
              reuse: bool = False) -> tuple[np.ndarray, list[Transform]]:
        """All tiles (x, y, w, h) of one frame as one batch: each tile is resized on its own
        (exactly like training crops), then the whole stack is normalised in one pass.
        `reuse` as in `__call__`."""
        img = check_image(image, pair=self.template)
        if self.color == "gray" and img.ndim == 3 and not self.template:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        H, W = self.height, self.width
        stack = self.buffer("stack", (len(grid), H, W) + img.shape[2:], np.uint8)
        tfs = []
        size = tuple(image_size) if image_size else img.shape[:2]
        for i, (x, y, w, h) in enumerate(grid):
            tile = img[y:y + h, x:x + w]
            if self.resize_mode == "stretch" or (h, w) == (H, W):
                if (h, w) == (H, W):
                    stack[i] = tile
                else:
                    cv2.resize(tile, (W, H), dst=stack[i], interpolation=self.interp)
                tf = (W / w, H / h, 0.0, 0.0)
            else:
                resized, tf = self._resize(tile)
                stack[i] = resized
            tfs.append(Transform(tf[0], tf[1], tf[2], tf[3], float(offset[0] + x), float(offset[1] + y),
                                 (h, w), size))
        shape = (len(grid), *self.shape)
        out = self.buffer("tiles", shape) if reuse else np.empty(shape, np.float32)
        a, b = self.alpha.ravel(), self.beta.ravel()
        if stack.ndim == 3:
            out[:, 0] = stack
            out[:, 0] *= a[0]
            out[:, 0] += b[0]
            for c in range(1, self.channels):
                out[:, c] = out[:, 0] if (a[c], b[c]) == (a[0], b[0]) else stack * a[c] + b[c]
        else:
            for c, src in enumerate((2, 1, 0) if self.color == "rgb" else range(self.channels)):
                out[:, c] = stack[..., src]
                out[:, c] *= a[c]
                out[:, c] += b[c]
        return out, tfs

    def into(self, image: np.ndarray, out: np.ndarray, offset: tuple[int, int] = (0, 0),
             image_size: tuple[int, int] | None = None) -> Transform:
        """Write one CHW tensor into `out` (a slice of a batch) and return its Transform."""
        img = check_image(image, pair=self.template)
        h, w = img.shape[:2]
        resized, tf = self._resize(img)
        self._normalise(resized, out)
        return Transform(tf[0], tf[1], tf[2], tf[3], float(offset[0]), float(offset[1]), (h, w),
                         tuple(image_size) if image_size else (h, w))

    def _resize(self, img: np.ndarray):
        h, w = img.shape[:2]
        H, W = self.height, self.width
        if (h, w) == (H, W):
            return img, (1.0, 1.0, 0.0, 0.0)
        if self.resize_mode == "stretch":
            return cv2.resize(img, (W, H), interpolation=self.interp), (W / w, H / h, 0.0, 0.0)
        r = min(H / h, W / w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        top, left = (H - nh) // 2, (W - nw) // 2
        canvas = np.full((H, W) + img.shape[2:], self.pad_value, dtype=img.dtype)
        canvas[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh), interpolation=self.interp)
        return canvas, (nw / w, nh / h, float(left), float(top))

    def _normalise(self, img: np.ndarray, out: np.ndarray) -> None:
        """out[c] = img_c * alpha[c] + beta[c], channel by channel in place (a cast copy plus
        two in-place ops is ~5x faster than one broadcast multiply from uint8)."""
        if self.color == "gray" and img.ndim == 3 and not self.template:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        a, b = self.alpha.ravel(), self.beta.ravel()
        if img.ndim == 2:
            out[0] = img
            out[0] *= a[0]
            out[0] += b[0]
            for c in range(1, self.channels):  # mono frame, colour model: same plane, maybe other stats
                if a[c] == a[0] and b[c] == b[0]:
                    out[c] = out[0]
                else:
                    out[c] = img
                    out[c] *= a[c]
                    out[c] += b[c]
            return
        order = (2, 1, 0) if self.color == "rgb" else range(self.channels)
        for c, src in enumerate(order):
            out[c] = img[..., src]
            out[c] *= a[c]
            out[c] += b[c]


def check_image(image: np.ndarray, pair: bool = False) -> np.ndarray:
    """Accept HxW or HxWx1/3 uint8 (or uint16/float32 mono); say exactly what is wrong otherwise.
    `pair`: an HxWx2 (frame, template) stack built by the runtime for template models."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if pair and image.ndim == 3 and image.shape[2] == 2 and image.dtype == np.uint8:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise InputError(f"image shape {image.shape} is not HxW (mono) or HxWx3 (bgr8)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image is empty ({image.shape})")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise InputError(f"image dtype {image.dtype} is not supported (uint8, uint16, float)")
        if not np.isfinite(image).all():
            raise InputError("image contains NaN or infinite pixel values")
        image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return image


def crop_roi(image: np.ndarray, roi) -> tuple[np.ndarray, tuple[int, int]]:
    """roi [x, y, w, h] (None, [] or w/h 0 = full frame) -> (crop view, (x, y) offset)."""
    if roi is None or len(roi) == 0 or (len(roi) == 4 and (roi[2] <= 0 or roi[3] <= 0)):
        return image, (0, 0)
    if len(roi) != 4:
        raise InputError(f"roi must be [x, y, w, h], got {list(roi)}")
    x, y, w, h = (int(v) for v in roi)
    H, W = image.shape[:2]
    if x < 0 or y < 0 or x + w > W or y + h > H:
        raise InputError(f"roi {[x, y, w, h]} lies outside the {W}x{H} frame")
    return image[y:y + h, x:x + w], (x, y)
