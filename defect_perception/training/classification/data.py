"""Classification datasets: DeepPCB tiles, a folder-per-class layout, augmentation.

Everything becomes a `TileSet` (uint8 images already at model-input size, integer labels,
class names, optional category tree, a source string per item) so training, distillation
and evaluation share one code path and a built set can be cached as `.npz`.

Why tiles: the line classifies 640x640 frames by cutting `tile`-px tiles (see
core/tiling.py) and resizing each to the model input exactly like the runtime
(`cv2.resize`, INTER_LINEAR, stretch). A defect tile puts the annotated defect anywhere
inside the tile; "normal" tiles come from the aligned template at the same place (hard
negatives) and from defect-free areas of tested images.

Bad inputs are never silent: an unreadable image or bad label line raises `DatasetError`
naming the path (and line); with on_error="skip" it is logged, counted and skipped.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from defect_perception.training import deeppcb
from defect_perception.training.deeppcb import DatasetError

log = logging.getLogger(__name__)

DEEPPCB_CLASSES = ["normal", *deeppcb.DEFECT_TYPES]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
ON_ERROR = ("fail", "skip")


@dataclass
class TileSet:
    images: np.ndarray                 # uint8 [N, H, W] (gray) or [N, H, W, 3] (bgr)
    labels: np.ndarray                 # int64 [N]; -1 = unlabelled
    classes: list[str]
    tree: dict[str, str] = field(default_factory=dict)   # child -> parent
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # error messages of skipped inputs

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        c = Counter(int(v) for v in self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def subset(self, idx) -> TileSet:
        idx = np.asarray(idx, dtype=np.int64)
        return TileSet(self.images[idx], self.labels[idx], self.classes, self.tree,
                       [self.sources[i] for i in idx] if self.sources else [], self.skipped)

    def save(self, path: Path) -> None:
        import json

        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"classes": self.classes, "tree": self.tree, "sources": self.sources,
                           "skipped": self.skipped})
        np.savez(path, images=self.images, labels=self.labels, meta=np.array(meta))

    @classmethod
    def load(cls, path: Path) -> TileSet:
        import json

        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(z["images"], z["labels"], meta["classes"], meta["tree"], meta["sources"],
                       meta["skipped"])


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Same call as the runtime's Preprocessor (stretch, INTER_LINEAR)."""
    if img.shape[:2] == (size, size):
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def read_image(path: Path, color: str = "gray") -> np.ndarray:
    flag = cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise DatasetError(f"{path}: unreadable or corrupt image")
    return img


# ---------------------------------------------------------------- DeepPCB tiles
def _tile_origin(box, tile: int, frame: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Top-left of a tile that contains the box (anywhere inside), clipped to the frame."""
    h, w = frame
    x1, y1, x2, y2 = (float(v) for v in box)
    out = []
    for lo, hi, length in ((x1, x2, w), (y1, y2, h)):
        a_min, a_max = hi - tile, lo             # tile start range keeping [lo, hi] inside
        if a_min > a_max:                        # box larger than the tile: centre it
            a = (lo + hi) / 2 - tile / 2
        else:
            a = rng.uniform(a_min, a_max)
        out.append(int(np.clip(round(a), 0, max(0, length - tile))))
    return out[0], out[1]


def _overlaps(x: int, y: int, tile: int, boxes: np.ndarray, margin: int = 4) -> bool:
    if len(boxes) == 0:
        return False
    b = boxes
    return bool(np.any((b[:, 0] - margin < x + tile) & (b[:, 2] + margin > x)
                       & (b[:, 1] - margin < y + tile) & (b[:, 3] + margin > y)))


def deeppcb_tiles(samples: list[deeppcb.Sample], tile: int = 128, size: int = 64, seed: int = 0,
                  normal_per_defect: float = 1.5, on_error: str = "fail",
                  progress: bool = False) -> TileSet:
    """One tile per annotated defect (labelled with its type); normal tiles: one from the
    template at each defect's place, plus `normal_per_defect - 1` per defect from defect-free
    areas of the tested image. Deterministic for a given seed (per-sample RNG)."""
    _check_on_error(on_error)
    images, labels, sources, skipped = [], [], [], []
    extra = max(0.0, normal_per_defect - 1.0)
    it = samples
    if progress:
        from tqdm import tqdm
        it = tqdm(samples, desc="DeepPCB tiles", unit="img")
    for s in it:
        try:
            test = deeppcb.load_gray(s.test_path)
            temp = deeppcb.load_gray(s.temp_path)
        except DatasetError as e:
            if on_error == "fail":
                raise
            log.warning("skipping sample: %s", e)
            skipped.append(str(e))
            continue
        rng = np.random.default_rng([seed, int(deeppcb.split_fraction(s.name) * 2**31)])
        h, w = test.shape
        for box, typ in zip(s.boxes, s.types, strict=False):
            x, y = _tile_origin(box, tile, (h, w), rng)
            images.append(resize(test[y:y + tile, x:x + tile], size))
            labels.append(DEEPPCB_CLASSES.index(typ))
            sources.append(f"{s.name}_test@{x},{y}:{typ}")
            images.append(resize(temp[y:y + tile, x:x + tile], size))
            labels.append(0)
            sources.append(f"{s.name}_temp@{x},{y}")
        n_free = int(np.floor(extra * len(s.boxes) + rng.uniform()))
        for _ in range(n_free):
            for _try in range(30):
                x = int(rng.integers(0, max(1, w - tile + 1)))
                y = int(rng.integers(0, max(1, h - tile + 1)))
                if not _overlaps(x, y, tile, s.boxes):
                    images.append(resize(test[y:y + tile, x:x + tile], size))
                    labels.append(0)
                    sources.append(f"{s.name}_test@{x},{y}:free")
                    break
    if not images:
        raise DatasetError("no DeepPCB tiles could be built (every sample failed?)")
    return TileSet(np.stack(images), np.asarray(labels, np.int64), list(DEEPPCB_CLASSES),
                   dict(deeppcb.CATEGORY_TREE), sources, skipped)


def deeppcb_parts(root: Path, tile: int, size: int, seed: int = 0, fractions=(0.7, 0.15, 0.15),
                  normal_per_defect: float = 1.5, on_error: str = "fail", cache_dir: Path | None = None,
                  progress: bool = False) -> dict[str, TileSet]:
    """{'train', 'val', 'calib', 'test'}: trainval split 70/15/15 by sample-name hash
    (train / model selection / threshold calibration); the official test split is `test`."""
    fr = "-".join(f"{f:g}" for f in fractions)
    key = f"deeppcb_t{tile}_s{size}_seed{seed}_n{normal_per_defect:g}_f{fr}"
    if cache_dir is not None:
        paths = {p: Path(cache_dir) / f"{key}_{p}.npz" for p in ("train", "val", "calib", "test")}
        if all(p.is_file() for p in paths.values()):
            return {k: TileSet.load(p) for k, p in paths.items()}
    trainval = deeppcb.read_split(root, "trainval", on_error)
    test = deeppcb.read_split(root, "test", on_error)
    tr, va, ca = deeppcb.deterministic_split(trainval, fractions, seed=seed)
    parts = {name: deeppcb_tiles(smp, tile, size, seed, normal_per_defect, on_error, progress)
             for name, smp in (("train", tr), ("val", va), ("calib", ca), ("test", test))}
    if cache_dir is not None:
        for k, ts in parts.items():
            ts.save(paths[k])
    return parts


def deeppcb_frames(root: Path, split: str = "test", on_error: str = "fail") -> list[tuple[Path, int]]:
    """Whole-frame pass/reject items: (path, 1) for tested images, (path, 0) for templates."""
    out = []
    for s in deeppcb.read_split(root, split, on_error):
        out += [(s.test_path, 1), (s.temp_path, 0)]
    return out


# ---------------------------------------------------------------- folder-per-class layout
def read_tree(path: Path, classes: list[str] | None = None) -> dict[str, str]:
    """Tree file: one `child parent` pair per line (# comments allowed)."""
    tree: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read tree file ({e.strerror})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] == parts[1]:
            raise DatasetError(f"{path}:{lineno}: bad tree line {line!r} (expected 'child parent')")
        if parts[0] in tree:
            raise DatasetError(f"{path}:{lineno}: {parts[0]!r} already has parent {tree[parts[0]]!r}")
        tree[parts[0]] = parts[1]
    for child in tree:                           # cycle check
        seen, node = {child}, child
        while node in tree:
            node = tree[node]
            if node in seen:
                raise DatasetError(f"{path}: category tree has a cycle through {node!r}")
            seen.add(node)
    if classes is not None:
        leaves_with_children = [c for c in classes if c in set(tree.values())]
        if leaves_with_children:
            raise DatasetError(f"{path}: classes {leaves_with_children} are used as parents; "
                               f"classes must be the leaves of the tree")
    return tree


def _read_label_file(path: Path, root: Path) -> list[tuple[Path, str]]:
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise DatasetError(f"{path}:{lineno}: bad label line {line!r} (expected 'image_path,class')")
        items.append((root / parts[0], parts[1]))
    return items


def folder_items(root: Path) -> list[tuple[Path, str]]:
    """(image, class) pairs from `root/<class>/*.png` or, when present, `root/labels.csv`
    (`relative/path.png,class` per line)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if (root / "labels.csv").is_file():
        return _read_label_file(root / "labels.csv", root)
    items = [(p, d.name) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
             for p in sorted(d.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DatasetError(f"{root}: no images found (expected one folder per class, or labels.csv)")
    return items


def folder_dataset(root: Path, size: int, color: str = "gray", classes: list[str] | None = None,
                   tree_file: Path | None = None, on_error: str = "fail",
                   progress: bool = False) -> TileSet:
    """Images of a folder-per-class dataset (or labels.csv) resized to size x size.
    `tree.txt` in the root (or `tree_file`) gives the category tree."""
    _check_on_error(on_error)
    root = Path(root)
    items = folder_items(root)
    classes = list(classes) if classes else sorted({c for _, c in items})
    tree_path = tree_file or (root / "tree.txt")
    tree = read_tree(tree_path, classes) if Path(tree_path).is_file() else {}
    images, labels, sources, skipped = [], [], [], []
    it = items
    if progress:
        from tqdm import tqdm
        it = tqdm(items, desc=f"images {root.name}", unit="img")
    for path, cls in it:
        try:
            if cls not in classes:
                raise DatasetError(f"{path}: class {cls!r} is not one of {classes}")
            img = read_image(path, color)
        except DatasetError as e:
            if on_error == "fail":
                raise
            log.warning("skipping image: %s", e)
            skipped.append(str(e))
            continue
        images.append(resize(img, size))
        labels.append(classes.index(cls))
        sources.append(str(path))
    if not images:
        raise DatasetError(f"{root}: no usable images ({len(skipped)} skipped)")
    return TileSet(np.stack(images), np.asarray(labels, np.int64), classes, tree, sources, skipped)


def folder_parts(root: Path, size: int, color: str = "gray", fractions=(0.7, 0.15, 0.15), seed: int = 0,
                 on_error: str = "fail", progress: bool = False) -> dict[str, TileSet]:
    """Use `root/{train,val,test}` when they exist; otherwise one folder split 70/15/15 by a
    hash of the file name (train / val / test); `calib` is the val part then."""
    root = Path(root)
    if (root / "train").is_dir():
        train = folder_dataset(root / "train", size, color, None, root / "tree.txt"
                               if (root / "tree.txt").is_file() else None, on_error, progress)
        parts = {"train": train}
        for name in ("val", "test"):
            if (root / name).is_dir():
                parts[name] = folder_dataset(root / name, size, color, train.classes,
                                             root / "tree.txt" if (root / "tree.txt").is_file() else None,
                                             on_error, progress)
        parts.setdefault("val", train)
        parts.setdefault("test", parts["val"])
        parts["calib"] = parts["val"]
        return parts
    full = folder_dataset(root, size, color, None, None, on_error, progress)
    idx = list(range(len(full)))
    tr, va, te = deeppcb.deterministic_split(idx, fractions, key=lambda i: Path(full.sources[i]).name,
                                             seed=seed)
    return {"train": full.subset(tr), "val": full.subset(va), "calib": full.subset(va),
            "test": full.subset(te)}


# ---------------------------------------------------------------- augmentation
@dataclass
class Augment:
    """Online augmentation on uint8 model-size images (numpy/OpenCV, per item)."""

    rot90: bool = True
    flip: bool = True
    rotate_deg: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.1

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.rot90:
            img = np.rot90(img, int(rng.integers(0, 4)))
        if self.flip and rng.uniform() < 0.5:
            img = img[:, ::-1]
        if self.rotate_deg > 0:
            h, w = img.shape[:2]
            m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-self.rotate_deg, self.rotate_deg)),
                                        1.0)
            img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
        if self.brightness > 0 or self.contrast > 0:
            c = 1.0 + rng.uniform(-self.contrast, self.contrast)
            b = 255.0 * rng.uniform(-self.brightness, self.brightness)
            img = np.clip((img.astype(np.float32) - 127.5) * c + 127.5 + b, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(img)


def to_input(images: np.ndarray, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> np.ndarray:
    """uint8 [N,H,W] gray (replicated to 3 channels, as the runtime does for color 'bgr') or
    [N,H,W,3] bgr -> float32 NCHW normalised like the card's input block."""
    x = images.astype(np.float32) / 255.0
    x = np.repeat(x[:, None], 3, axis=1) if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - m) / s)
