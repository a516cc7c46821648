"""DeepPCB reader shared by every training tool (classifier, anomaly, detector).

Layout (see the dataset's README): list files `trainval.txt` / `test.txt` with lines
`groupA/NNNNN/NNNNNxxx.jpg groupA/NNNNN_not/NNNNNxxx.txt`; the `.jpg` name stands for the
pair `_test.jpg` (defective) / `_temp.jpg` (aligned defect-free template); annotations are
`x1 y1 x2 y2 type` per line (type 1..6). Errors name the file and line; `on_error`
chooses whether a broken sample is skipped (and reported) or fails the run.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TYPE_NAMES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "spurious_copper", 6: "pin_hole"}
DEFECT_TYPES = [TYPE_NAMES[i] for i in sorted(TYPE_NAMES)]
# child -> parent (the card's `category_tree` format); roots: normal, defect
CATEGORY_TREE = {
    "open": "missing_copper", "mousebite": "missing_copper", "pin_hole": "missing_copper",
    "short": "extra_copper", "spur": "extra_copper", "spurious_copper": "extra_copper",
    "missing_copper": "defect", "extra_copper": "defect",
}
DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "deeppcb"


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file (and line)."""


@dataclass
class Sample:
    name: str                     # e.g. 00041000
    test_path: Path               # defective image
    temp_path: Path               # aligned defect-free template
    ann_path: Path
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x1,y1,x2,y2
    types: list[str] = field(default_factory=list)
    board: str = ""               # group id: the board design


def read_annotations(path: Path) -> tuple[np.ndarray, list[str]]:
    boxes, types = [], []
    try:
        text = path.read_text()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read annotation file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        bad_line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{bad_line}: not a text annotation file "
                           f"(byte {e.start} is not UTF-8)") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        try:
            x1, y1, x2, y2, t = (int(float(p)) for p in parts[:5])
            if len(parts) != 5 or t not in TYPE_NAMES or x2 <= x1 or y2 <= y1:
                raise ValueError
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: bad annotation line {line!r}"
                               f" (expected 'x1 y1 x2 y2 type', type 1-6, x2>x1, y2>y1)") from None
        boxes.append((x1, y1, x2, y2))
        types.append(TYPE_NAMES[t])
    return np.asarray(boxes, np.float32).reshape(-1, 4), types


def read_split(root: str | Path = DEFAULT_ROOT, split: str = "trainval",
               on_error: str = "fail", skipped: list[str] | None = None) -> list[Sample]:
    """Samples of `trainval` or `test`. on_error='skip' logs each broken sample (and appends
    its message to `skipped`) and goes on."""
    root = Path(root)
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"{listing}: split list not found (is {root} a DeepPCB folder?)")
    try:
        text = listing.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{listing}: cannot read split list ({e})") from None
    samples = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            samples.append(_sample(root, listing, lineno, line))
        except DatasetError as e:
            skip_or_raise(e, on_error, skipped, "sample")
    return samples


def skip_or_raise(error: DatasetError, on_error: str, skipped: list[str] | None, what: str) -> None:
    """`on_error: fail` re-raises (the message names the file and line); `skip` logs the
    error, records it in `skipped` for the run's summary, and the caller goes on."""
    if on_error != "skip":
        raise error
    log.warning("skipping %s: %s", what, error)
    if skipped is not None:
        skipped.append(str(error))


def _sample(root: Path, listing: Path, lineno: int, line: str) -> Sample:
    parts = line.split()
    if len(parts) != 2:
        raise DatasetError(f"{listing}:{lineno}: expected 'image.jpg annotation.txt', got {line!r}")
    img, ann = root / parts[0], root / parts[1]
    test_path = img.with_name(img.stem + "_test" + img.suffix)
    temp_path = img.with_name(img.stem + "_temp" + img.suffix)
    for p in (test_path, temp_path):
        if not p.is_file():
            raise DatasetError(f"{listing}:{lineno}: image {p} is missing")
    boxes, types = read_annotations(ann)
    return Sample(img.stem, test_path, temp_path, ann, boxes, types, board=parts[0].split("/")[0])


def split_fraction(key: str, seed: int = 0) -> float:
    """A stable pseudo-random number in [0, 1) for a key: splits that survive reordering."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def deterministic_split(items: Sequence, fractions: Iterable[float] = (0.7, 0.15, 0.15),
                        key=lambda s: s.name, seed: int = 0) -> list[list]:
    """Split items into len(fractions) parts by a hash of their key (no RNG state)."""
    fractions = list(fractions)
    total = sum(fractions)
    edges = np.cumsum(fractions) / total
    parts: list[list] = [[] for _ in fractions]
    for item in items:
        u = split_fraction(key(item), seed)
        parts[int(np.searchsorted(edges, u, side="right").clip(0, len(parts) - 1))].append(item)
    return parts


def load_gray(path: Path) -> np.ndarray:
    """Read an image as uint8 HxW; a file OpenCV cannot decode raises DatasetError naming it."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DatasetError(f"{path}: unreadable or corrupt image")
    return img
