"""Detection data: DeepPCB pairs resized to the model input, mosaic augmentation,
and a generated toy set for tests.

Images are kept in memory as uint8 at the model input size (999 boards at 320 px is
about 100 MB), so an epoch costs only the augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..deeppcb import DEFECT_TYPES, DatasetError, Sample, load_gray, skip_or_raise


@dataclass
class DetSet:
    images: list[np.ndarray]  # uint8 [H, W] or [H, W, C] at model size
    boxes: list[np.ndarray]  # float32 [M, 4] x1y1x2y2 in model-input pixels
    classes: list[np.ndarray]  # int64 [M]
    names: list[str]
    scale: list[tuple[float, float]]  # (sx, sy) original -> model input

    def __len__(self) -> int:
        return len(self.images)


def load_samples(
    samples: list[Sample], size: int, template: bool = False, which: str = "test", progress: bool = False,
    on_error: str = "fail", skipped: list[str] | None = None,
) -> DetSet:
    """Read and resize samples; which='temp' loads the defect-free templates (no boxes).
    An unreadable image raises DatasetError naming it; with on_error='skip' the sample is
    logged, its message appended to `skipped`, and left out."""
    from tqdm import tqdm

    out = DetSet([], [], [], [], [])
    it = tqdm(samples, desc=f"load {which} images", disable=not progress)
    for s in it:
        try:
            img = load_gray(s.temp_path if which == "temp" else s.test_path)
            tmp = load_gray(s.temp_path) if template else None
            if tmp is not None and tmp.shape != img.shape:
                raise DatasetError(f"{s.temp_path}: template is {tmp.shape[1]}x{tmp.shape[0]}, its tested "
                                   f"image {img.shape[1]}x{img.shape[0]}: they must be aligned")
        except DatasetError as e:
            skip_or_raise(e, on_error, skipped, f"sample {s.name}")
            continue
        h, w = img.shape
        sx, sy = size / w, size / h
        img_r = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        if tmp is not None:
            tmp = cv2.resize(tmp, (size, size), interpolation=cv2.INTER_AREA)
            img_r = np.dstack([img_r, tmp])
        out.images.append(img_r)
        if which == "temp":
            out.boxes.append(np.zeros((0, 4), np.float32))
            out.classes.append(np.zeros(0, np.int64))
        else:
            out.boxes.append((s.boxes * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32))
            out.classes.append(np.array([DEFECT_TYPES.index(t) for t in s.types], np.int64))
        out.names.append(s.name)
        out.scale.append((sx, sy))
    return out


def _flip_rot(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and 90-degree rotation: PCB defect classes do not depend on orientation."""
    h, w = img.shape[:2]
    b = boxes.copy()
    if rng.random() < 0.5:
        img = img[:, ::-1]
        b[:, [0, 2]] = w - b[:, [2, 0]]
    if rng.random() < 0.5:
        img = img[::-1]
        b[:, [1, 3]] = h - b[:, [3, 1]]
    if rng.random() < 0.5 and h == w:
        img = np.ascontiguousarray(np.swapaxes(img, 0, 1))
        b = b[:, [1, 0, 3, 2]]
    return np.ascontiguousarray(img), b


def mosaic(
    ds: DetSet, idxs: list[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images tiled 2x2 at native scale, then a random window of one image size that
    always contains the junction, so each sample mixes parts of up to four boards."""
    s = ds.images[idxs[0]].shape[0]
    c = ds.images[idxs[0]].shape[2:]
    canvas = np.zeros((2 * s, 2 * s) + c, np.uint8)
    all_b, all_c = [], []
    for q, i in enumerate(idxs[:4]):
        img, b = _flip_rot(ds.images[i], ds.boxes[i], rng)
        oy, ox = (q // 2) * s, (q % 2) * s
        canvas[oy : oy + s, ox : ox + s] = img
        all_b.append(b + np.array([ox, oy, ox, oy], np.float32))
        all_c.append(ds.classes[i])
    x0, y0 = (int(v) for v in rng.integers(0, s + 1, 2))
    img = canvas[y0 : y0 + s, x0 : x0 + s]
    b = np.concatenate(all_b) - np.array([x0, y0, x0, y0], np.float32)
    cls = np.concatenate(all_c)
    return np.ascontiguousarray(img), *_clip_boxes(b, cls, s, s)


def _clip_boxes(
    b: np.ndarray, cls: np.ndarray, w: int, h: int, min_keep: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the window; drop boxes that keep < min_keep of their area or < 2 px."""
    area0 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    c = b.copy()
    c[:, [0, 2]] = c[:, [0, 2]].clip(0, w)
    c[:, [1, 3]] = c[:, [1, 3]].clip(0, h)
    bw, bh = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    keep = (bw >= 2) & (bh >= 2) & (bw * bh >= min_keep * np.maximum(area0, 1e-6))
    return c[keep].astype(np.float32), cls[keep]


def batches(ds: DetSet, batch_size: int, rng: np.random.Generator, mosaic_p: float = 1.0):
    """One epoch of (images float [B, C, H, W] in 0..1, targets [M, 6] = img, cls, cx, cy, w, h)."""
    order = rng.permutation(len(ds))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        imgs, targets = [], []
        for j, i in enumerate(order[start : start + batch_size]):
            if rng.random() < mosaic_p:
                idxs = [int(i)] + [int(v) for v in rng.integers(0, len(ds), 3)]
                img, b, c = mosaic(ds, idxs, rng)
            else:
                img, b = _flip_rot(ds.images[i], ds.boxes[i], rng)
                c = ds.classes[i]
            imgs.append(img if img.ndim == 3 else img[..., None])
            if len(b):
                cxcywh = np.stack(
                    [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]],
                    1,
                )
                targets.append(np.concatenate([np.full((len(b), 1), j), c[:, None], cxcywh], 1))
        x = np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        t = np.concatenate(targets).astype(np.float32) if targets else np.zeros((0, 6), np.float32)
        yield x, t


def to_input(img: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] at model size -> float32 [1, C, H, W] (scale 255, mean 0, std 1)."""
    a = img if img.ndim == 3 else img[..., None]
    return a.transpose(2, 0, 1)[None].astype(np.float32) / 255.0


def synthetic(n: int, size: int = 64, seed: int = 0, num_classes: int = 2) -> DetSet:
    """Toy boards for tests: class 0 = filled square, class 1 = hollow square, on noise."""
    rng = np.random.default_rng(seed)
    ds = DetSet([], [], [], [], [])
    for k in range(n):
        img = (rng.random((size, size)) * 40).astype(np.uint8)
        boxes, cls = [], []
        for _ in range(int(rng.integers(1, 4))):
            w = int(rng.integers(8, 16))
            x, y = (int(v) for v in rng.integers(0, size - w, 2))
            c = int(rng.integers(0, num_classes))
            if c == 0:
                img[y : y + w, x : x + w] = 255
            else:
                cv2.rectangle(img, (x, y), (x + w - 1, y + w - 1), 255, 2)
            boxes.append([x, y, x + w, y + w])
            cls.append(c)
        ds.images.append(img)
        ds.boxes.append(np.asarray(boxes, np.float32))
        ds.classes.append(np.asarray(cls, np.int64))
        ds.names.append(f"synthetic{k:04d}")
        ds.scale.append((1.0, 1.0))
    return ds
