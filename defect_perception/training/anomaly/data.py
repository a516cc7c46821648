"""Good-image sets for anomaly training and the DeepPCB evaluation set.

Preprocessing mirrors the model card's input block (gray, stretch resize with area
interpolation, pixel/255, (x - 0.5) / 0.5), so training, evaluation and the line see the same
tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from defect_perception.training.deeppcb import (
    DatasetError,
    deterministic_split,
    load_gray,
    read_split,
    skip_or_raise,
)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MEAN, STD = 0.5, 0.5


def preprocess(gray: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxW (or HxWx3 BGR) -> float32 [1, size, size] normalised like the card says."""
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    img = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    return ((img.astype(np.float32) / 255.0 - MEAN) / STD)[None]


def good_images(folder: str | Path) -> list[Path]:
    """Every image file under `folder` (recursive, sorted); a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: good-image folder not found")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) found")
    return paths


def deeppcb_templates(root: str | Path, split: str = "trainval", on_error: str = "fail",
                      skipped: list[str] | None = None) -> list[Path]:
    """The defect-free templates of a DeepPCB split (good parts). `on_error` as in read_split."""
    return [s.temp_path for s in read_split(root, split, on_error=on_error, skipped=skipped)]


def split_train_calib(paths: list[Path], calib_fraction: float, seed: int = 0
                      ) -> tuple[list[Path], list[Path]]:
    """Hash split by file name: the calibration images never change when files are added."""
    train, calib = deterministic_split(paths, (1.0 - calib_fraction, calib_fraction), key=lambda p: p.name,
                                       seed=seed)
    if not train or not calib:
        raise DatasetError(f"need good images for both training and calibration; got {len(train)} / "
                           f"{len(calib)} from {len(paths)} images (calib_fraction={calib_fraction})")
    return train, calib


def load_stack(paths: list[Path], size: int, progress: bool = True) -> np.ndarray:
    """Load and preprocess images into one float32 [N, 1, size, size] array; an unreadable
    image raises DatasetError naming it."""
    return load_images(paths, size, progress)[0]


def load_images(paths: list[Path], size: int, progress: bool = True, on_error: str = "fail",
                skipped: list[str] | None = None) -> tuple[np.ndarray, list[Path]]:
    """(float32 [N, 1, size, size], the N paths loaded). An unreadable image raises
    DatasetError naming it; with on_error='skip' it is logged, its message appended to
    `skipped`, and left out."""
    from tqdm import tqdm

    out = np.empty((len(paths), 1, size, size), np.float32)
    kept: list[Path] = []
    for p in tqdm(paths, desc="load images", disable=not progress, leave=False):
        try:
            img = load_gray(p)
        except DatasetError as e:
            skip_or_raise(e, on_error, skipped, "image")
            continue
        out[len(kept)] = preprocess(img, size)
        kept.append(p)
    return out[:len(kept)], kept


@dataclass
class EvalItem:
    path: Path
    label: int              # 0 good, 1 defective
    boxes: np.ndarray       # Nx4 x1y1x2y2 in original pixels (empty for good images)
    shape: tuple[int, int]  # original H, W


def deeppcb_eval_items(root: str | Path, split: str = "test") -> list[EvalItem]:
    """Templates as good parts, tested images as defective parts with their boxes."""
    items = []
    for s in read_split(root, split):
        h, w = load_gray(s.temp_path).shape
        items.append(EvalItem(s.temp_path, 0, np.zeros((0, 4), np.float32), (h, w)))
        items.append(EvalItem(s.test_path, 1, s.boxes, (h, w)))
    return items


def box_mask(boxes: np.ndarray, shape: tuple[int, int], out_size: int) -> np.ndarray:
    """Pixel ground truth at model resolution: union of the boxes, scaled to out_size."""
    h, w = shape
    mask = np.zeros((out_size, out_size), np.uint8)
    sx, sy = out_size / w, out_size / h
    for x1, y1, x2, y2 in np.asarray(boxes, np.float32).reshape(-1, 4):
        mask[int(np.floor(y1 * sy)):int(np.ceil(y2 * sy)), int(np.floor(x1 * sx)):int(np.ceil(x2 * sx))] = 1
    return mask
